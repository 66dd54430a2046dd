package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/api/pb"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"
)

// getKinds are the kinds `berth get` lists, with their aliases.
var getKinds = [][]string{
	{"services", "service", "svc"},
	{"instances", "instance", "inst"},
	{"nodes", "node"},
	{"images", "image"},
	{"volumes", "volume", "vol"},
	{"gateways", "gateway", "gw"},
	{"servers", "server", "controlplane"},
	{"all"},
}

func kindOf(arg string) (string, bool) {
	for _, k := range getKinds {
		if slices.Contains(k, strings.ToLower(arg)) {
			return k[0], true
		}
	}
	return "", false
}

func kindList() string {
	var names []string
	for _, k := range getKinds {
		names = append(names, k[0])
	}
	return strings.Join(names, ", ")
}

// getOptions are the flags of `berth get`.
type getOptions struct {
	output, namespace, selector string
	watch, allNamespaces        bool
	paint                       painter
}

func newGetCmd(g *globalOptions) *cobra.Command {
	var o getOptions
	cmd := &cobra.Command{
		Use:   "get KIND [NAME...]",
		Short: "List objects: " + kindList(),
		Long: `List objects of a kind, or the named ones.

Kinds: ` + kindList() + ` ("all": services and instances).

Output (-o): table (default), wide (more columns), name (kind/name, one a
line), yaml (services and volumes as manifests: apiVersion, kind, metadata
and spec, no status, so "berth get services NAME -o yaml | berth apply -f -"
changes nothing), json (the API's view, status included).`,
		ValidArgsFunction: func(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
			if len(args) == 0 {
				var out []string
				for _, k := range getKinds {
					out = append(out, k[0])
				}
				return out, cobra.ShellCompDirectiveNoFileComp
			}
			return completeNames(cmd, g, args[0]), cobra.ShellCompDirectiveNoFileComp
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return fmt.Errorf("get: which kind? One of: %s (e.g. berth get services)", kindList())
			}
			kind, ok := kindOf(args[0])
			if !ok {
				return fmt.Errorf("get: unknown kind %q: use one of %s", args[0], kindList())
			}
			if o.allNamespaces {
				o.namespace = ""
			}
			o.paint = painterFor(cmd.OutOrStdout())
			sel, err := parseSelector(o.selector)
			if err != nil {
				return err
			}
			cli, done, err := g.client()
			if err != nil {
				return err
			}
			defer done()
			// A listing only reads: one whose answer was lost to a
			// broken connection is asked for again (retryIdempotent).
			render := func() (string, error) {
				var buf bytes.Buffer
				_, err := retryIdempotent(cmd.Context(), cmd.ErrOrStderr(), "get", defaultRetry, func(ctx context.Context) error {
					buf.Reset()
					return renderGet(ctx, g, cli, &buf, kind, args[1:], sel, o)
				})
				return buf.String(), err
			}
			out, err := render()
			if err != nil {
				return err
			}
			fmt.Fprint(cmd.OutOrStdout(), out)
			if !o.watch {
				return nil
			}
			// --watch: print the listing again whenever it changes (in place
			// on a terminal).
			tty := isTerminal(cmd.OutOrStdout())
			for {
				select {
				case <-cmd.Context().Done():
					return nil
				case <-time.After(time.Second):
				}
				next, err := render()
				if err != nil {
					return err
				}
				if next == out {
					continue
				}
				out = next
				if tty {
					fmt.Fprint(cmd.OutOrStdout(), "\033[H\033[2J")
				} else {
					fmt.Fprintf(cmd.OutOrStdout(), "--- %s\n", time.Now().Format(time.TimeOnly))
				}
				fmt.Fprint(cmd.OutOrStdout(), out)
			}
		},
	}
	cmd.Flags().StringVarP(&o.output, "output", "o", "table", "output format: table, wide, name, yaml (manifests), json")
	cmd.Flags().StringVarP(&o.namespace, "namespace", "n", "", "namespace (default: the context's, else all)")
	cmd.Flags().BoolVarP(&o.allNamespaces, "all-namespaces", "A", false, "every namespace, whatever the context says")
	cmd.Flags().StringVarP(&o.selector, "selector", "l", "", "label selector: key=value, key!=value, key or !key, comma-separated (services and their instances)")
	cmd.Flags().BoolVarP(&o.watch, "watch", "w", false, "keep listing, showing changes as they happen")
	return cmd
}

// isTerminal reports whether w is a character device (a terminal).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// selector is a parsed label selector: every requirement must hold.
type selector []requirement

type requirement struct {
	key, value string
	op         string // "=", "!=", "exists", "!exists"
}

// parseSelector reads "a=b,c!=d,e,!f" (== is =).
func parseSelector(s string) (selector, error) {
	var out selector
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimSpace(part)
		var r requirement
		switch {
		case strings.Contains(part, "!="):
			k, v, _ := strings.Cut(part, "!=")
			r = requirement{strings.TrimSpace(k), strings.TrimSpace(v), "!="}
		case strings.Contains(part, "=="):
			k, v, _ := strings.Cut(part, "==")
			r = requirement{strings.TrimSpace(k), strings.TrimSpace(v), "="}
		case strings.Contains(part, "="):
			k, v, _ := strings.Cut(part, "=")
			r = requirement{strings.TrimSpace(k), strings.TrimSpace(v), "="}
		case strings.HasPrefix(part, "!"):
			r = requirement{strings.TrimSpace(part[1:]), "", "!exists"}
		default:
			r = requirement{part, "", "exists"}
		}
		if r.key == "" || strings.ContainsAny(r.key, "=! ") || strings.ContainsAny(r.value, "=! ") {
			return nil, fmt.Errorf("-l %q: %q is not a requirement (key=value, key!=value, key or !key)", s, part)
		}
		out = append(out, r)
	}
	return out, nil
}

func (s selector) matches(labels map[string]string) bool {
	for _, r := range s {
		v, ok := labels[r.key]
		switch r.op {
		case "=":
			if !ok || v != r.value {
				return false
			}
		case "!=":
			if ok && v == r.value {
				return false
			}
		case "exists":
			if !ok {
				return false
			}
		case "!exists":
			if ok {
				return false
			}
		}
	}
	return true
}

// named filters to the names asked for (all when none), and says which
// asked-for names were not found.
func named[T any](items []T, names []string, name func(T) string) ([]T, error) {
	if len(names) == 0 {
		return items, nil
	}
	var out []T
	found := map[string]bool{}
	for _, it := range items {
		if slices.Contains(names, name(it)) {
			out = append(out, it)
			found[name(it)] = true
		}
	}
	var missing []string
	for _, n := range names {
		if !found[n] {
			missing = append(missing, n)
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("not found: %s", strings.Join(missing, ", "))
	}
	return out, nil
}

func renderGet(ctx context.Context, g *globalOptions, cli pb.BerthClient, w io.Writer, kind string, names []string, sel selector, o getOptions) error {
	p := printer{format: o.output, w: w}
	if kind == "all" {
		if len(names) > 0 {
			return errors.New("get all: takes no names")
		}
		for i, k := range []string{"services", "instances"} {
			if i > 0 && (o.output == "table" || o.output == "wide") {
				fmt.Fprintln(w)
			}
			if err := renderGet(ctx, g, cli, w, k, nil, sel, o); err != nil {
				return err
			}
		}
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	defer tw.Flush()
	wide := o.output == "wide"
	switch kind {
	case "services":
		resp, err := cli.ListServices(ctx, &pb.ListServicesRequest{Namespace: o.namespace})
		if err != nil {
			return g.rpcErr(err)
		}
		svcs := slices.DeleteFunc(resp.Services, func(s *pb.ServiceSummary) bool { return !sel.matches(s.Service.Metadata.Labels) })
		if svcs, err = named(svcs, names, func(s *pb.ServiceSummary) string { return s.Service.Metadata.Name }); err != nil {
			return fmt.Errorf("get services: %w", err)
		}
		switch o.output {
		case "yaml":
			var docs []any
			for _, s := range svcs {
				docs = append(docs, manifestOf(pb.ToService(s.Service)))
			}
			return writeManifests(w, docs)
		case "name":
			for _, s := range svcs {
				fmt.Fprintf(w, "service/%s\n", s.Service.Metadata.Name)
			}
			return nil
		}
		if ok, err := p.structured(protos(svcs)); ok {
			return err
		}
		head := "NAMESPACE\tNAME\tREVISION\tREADY\tIMAGE\tROUTE\tAGE"
		if wide {
			head += "\tPORTS\tSTRATEGY\tLABELS"
		}
		fmt.Fprintln(tw, head)
		for _, s := range svcs {
			route := "-"
			if r := s.Service.Spec.Route; r != nil {
				route = strings.Join(r.Hosts, ",")
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%d/%d\t%s\t%s\t%s", s.Service.Metadata.Namespace, s.Service.Metadata.Name,
				s.Service.Status.GetRevision(), s.Ready, s.Desired, s.Service.Spec.Image, route, age(s.Service.Status.GetCreatedAt()))
			if wide {
				var ports []string
				for _, p := range s.Service.Spec.Ports {
					ports = append(ports, fmt.Sprintf("%s:%d/%s", p.Name, p.Port, p.Protocol))
				}
				strategy := "-"
				if r := s.Service.Spec.Rollout; r != nil {
					strategy = r.Strategy
				}
				fmt.Fprintf(tw, "\t%s\t%s\t%s", dash(strings.Join(ports, ",")), dash(strategy), labelsOf(s.Service.Metadata.Labels))
			}
			fmt.Fprintln(tw)
		}
	case "instances":
		resp, err := cli.ListInstances(ctx, &pb.ListInstancesRequest{Namespace: o.namespace})
		if err != nil {
			return g.rpcErr(err)
		}
		ivs := resp.Instances
		if len(sel) > 0 {
			svcs, err := cli.ListServices(ctx, &pb.ListServicesRequest{Namespace: o.namespace})
			if err != nil {
				return g.rpcErr(err)
			}
			match := map[string]bool{}
			for _, s := range svcs.Services {
				match[s.Service.Metadata.Namespace+"/"+s.Service.Metadata.Name] = sel.matches(s.Service.Metadata.Labels)
			}
			ivs = slices.DeleteFunc(ivs, func(iv *pb.InstanceView) bool { return !match[iv.Instance.Namespace+"/"+iv.Instance.Service] })
		}
		if ivs, err = named(ivs, names, func(iv *pb.InstanceView) string { return iv.Instance.Id }); err != nil {
			return fmt.Errorf("get instances: %w", err)
		}
		if o.output == "name" {
			for _, iv := range ivs {
				fmt.Fprintf(w, "instance/%s\n", iv.Instance.Id)
			}
			return nil
		}
		if ok, err := p.structured(protos(ivs)); ok {
			return err
		}
		printInstancesWide(tw, ivs, wide, o.paint)
	case "nodes":
		resp, err := cli.ListNodes(ctx, &pb.ListNodesRequest{})
		if err != nil {
			return g.rpcErr(err)
		}
		nodes := resp.Nodes
		if len(sel) > 0 {
			nodes = slices.DeleteFunc(nodes, func(n *pb.Node) bool { return !sel.matches(n.Labels) })
		}
		if nodes, err = named(nodes, names, func(n *pb.Node) string { return n.Name }); err != nil {
			return fmt.Errorf("get nodes: %w", err)
		}
		if o.output == "name" {
			for _, n := range nodes {
				fmt.Fprintf(w, "node/%s\n", n.Name)
			}
			return nil
		}
		if ok, err := p.structured(protos(nodes)); ok {
			return err
		}
		head := "NAME\tSTATUS\tADDRESS\tPOD-CIDR\tCPU(alloc/cap)\tMEMORY(alloc/cap)\tINSTANCES\tDNS-VERSION\tLAST-HEARTBEAT\tAGE"
		if wide {
			head += "\tLABELS"
		}
		fmt.Fprintln(tw, head)
		for _, n := range nodes {
			st := n.State
			if st == "" {
				st = "NotReady"
				if n.Ready {
					st = "Ready"
				}
			}
			if n.Cordoned {
				st += ",Cordoned"
			}
			st = o.paint.state(st)
			dnsVersion := "-"
			if n.DnsVersion != 0 {
				dnsVersion = strconv.FormatUint(n.DnsVersion, 10)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%dm/%dm\t%s/%s\t%d\t%s\t%s ago\t%s", n.Name, st, n.Address, n.PodCidr,
				n.Allocated.GetMilliCpu(), n.Capacity.GetMilliCpu(), mib(n.Allocated.GetMemoryBytes()), mib(n.Capacity.GetMemoryBytes()),
				n.Instances, dnsVersion, age(n.Heartbeat), age(n.JoinedAt))
			if wide {
				fmt.Fprintf(tw, "\t%s", labelsOf(n.Labels))
			}
			fmt.Fprintln(tw)
		}
	case "images":
		resp, err := cli.ListImages(ctx, &pb.ListImagesRequest{})
		if err != nil {
			return g.rpcErr(err)
		}
		images := resp.Images
		if images, err = named(images, names, func(im *pb.Image) string { return im.Reference }); err != nil {
			return fmt.Errorf("get images: %w", err)
		}
		if o.output == "name" {
			for _, im := range images {
				fmt.Fprintf(w, "image/%s\n", im.Reference)
			}
			return nil
		}
		if ok, err := p.structured(protos(images)); ok {
			return err
		}
		fmt.Fprintln(tw, "REFERENCE\tDIGEST\tSIZE\tLOADED")
		for _, im := range images {
			ref := im.Reference
			if ref == "" {
				ref = "<none>" // no tag; kept for the revisions that pin it
			}
			digest := short(im.Digest, 19)
			if wide {
				digest = im.Digest
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s ago\n", ref, digest, mib(im.Size), age(im.LoadedAt))
		}
	case "gateways":
		resp, err := cli.ListGateways(ctx, &pb.ListGatewaysRequest{})
		if err != nil {
			return g.rpcErr(err)
		}
		gws := resp.Gateways
		if gws, err = named(gws, names, func(gw *pb.Gateway) string { return gw.NodeId }); err != nil {
			return fmt.Errorf("get gateways: %w", err)
		}
		if o.output == "name" {
			for _, gw := range gws {
				fmt.Fprintf(w, "gateway/%s\n", gw.NodeId)
			}
			return nil
		}
		if ok, err := p.structured(protos(gws)); ok {
			return err
		}
		fmt.Fprintln(tw, "NAME\tREPLICA\tADDRESS\tVERSION\tSTATE\tLAG\tPROTOCOL\tCONNECTED\tLAST-NACK")
		for _, gw := range gws {
			proto := "sotw"
			if gw.Delta {
				proto = "delta"
			}
			if gw.Proxyless {
				proto += ",proxyless-grpc"
			}
			nack := short(gw.LastNack, 80)
			if wide {
				nack = gw.LastNack
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d/%d\t%s\t%dms\t%s\t%s ago\t%s\n", gw.NodeId, dash(gw.Replica), gw.Address, gw.Version, resp.PublishedVersion,
				o.paint.state(gw.State), gw.LagMs, proto, age(gw.ConnectedAt), nack)
		}
	case "servers":
		resp, err := cli.ListServers(ctx, &pb.ListServersRequest{})
		if err != nil {
			return g.rpcErr(err)
		}
		srvs := resp.Servers
		if srvs, err = named(srvs, names, func(s *pb.Server) string { return s.Name }); err != nil {
			return fmt.Errorf("get servers: %w", err)
		}
		if o.output == "name" {
			for _, s := range srvs {
				fmt.Fprintf(w, "server/%s\n", s.Name)
			}
			return nil
		}
		if ok, err := p.structured([]proto.Message{resp}); ok {
			return err
		}
		printServers(tw, resp, srvs, o.paint)
	case "volumes":
		resp, err := cli.ListVolumes(ctx, &pb.ListVolumesRequest{Namespace: o.namespace})
		if err != nil {
			return g.rpcErr(err)
		}
		vols := resp.Volumes
		if len(sel) > 0 {
			vols = slices.DeleteFunc(vols, func(v *pb.VolumeView) bool { return !sel.matches(v.Volume.Metadata.Labels) })
		}
		if vols, err = named(vols, names, func(v *pb.VolumeView) string { return v.Volume.Metadata.Name }); err != nil {
			return fmt.Errorf("get volumes: %w", err)
		}
		switch o.output {
		case "yaml":
			var docs []any
			for _, v := range vols {
				vol := pb.ToVolume(v.Volume)
				vol.Status = api.VolumeStatus{}
				docs = append(docs, vol)
			}
			return writeManifests(w, docs)
		case "name":
			for _, v := range vols {
				fmt.Fprintf(w, "volume/%s\n", v.Volume.Metadata.Name)
			}
			return nil
		}
		if ok, err := p.structured(protos(vols)); ok {
			return err
		}
		printVolumes(tw, vols)
	}
	return nil
}

func protos[T proto.Message](items []T) []proto.Message {
	out := make([]proto.Message, len(items))
	for i, it := range items {
		out[i] = it
	}
	return out
}

// manifestOf is a service as a manifest: what apply takes, without what
// the server sets (status, the pinned image digest).
func manifestOf(svc *api.Service) *api.Service {
	svc.APIVersion, svc.Kind = api.APIVersion, api.KindService
	svc.Status = api.ServiceStatus{}
	svc.Spec.ImageDigest = ""
	svc.Spec.RestartedAt = time.Time{} // the server's, kept by apply
	return svc
}

// writeManifests writes objects as a YAML stream, "---" between them.
func writeManifests(w io.Writer, docs []any) error {
	for i, d := range docs {
		b, err := yaml.Marshal(d)
		if err != nil {
			return err
		}
		if i > 0 {
			fmt.Fprintln(w, "---")
		}
		if _, err := w.Write(b); err != nil {
			return err
		}
	}
	return nil
}

func labelsOf(m map[string]string) string {
	if len(m) == 0 {
		return "-"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + m[k]
	}
	return strings.Join(parts, ",")
}

// printServers is `get servers`: the replicas, then the etcd members.
func printServers(tw io.Writer, resp *pb.ListServersResponse, srvs []*pb.Server, paint painter) {
	fmt.Fprintln(tw, "SERVER\tAPI\tROLE\tVERSION\tUP\tREPORTED")
	for _, s := range srvs {
		role := "follower"
		if s.Leader {
			role = "leader"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s ago\n", s.Name, s.ApiAddress, role, dash(s.Version), age(s.StartedAt), age(s.ReportedAt))
	}
	if len(resp.Members) == 0 {
		return
	}
	healthy := 0
	for _, m := range resp.Members {
		if m.Healthy && !m.Learner {
			healthy++
		}
	}
	kind := "external"
	if resp.Embedded {
		kind = "embedded"
	}
	quorum := "ok"
	if int32(healthy) < resp.Quorum {
		quorum = "LOST"
	}
	fmt.Fprintf(tw, "\netcd (%s): %d of %d voting members healthy, quorum %d: %s\n", kind, healthy, resp.Voters, resp.Quorum, paint.state(strings.ToUpper(quorum)))
	fmt.Fprintln(tw, "MEMBER\tID\tSERVER\tPEER-URL\tSTATE\tRAFT-TERM\tRAFT-INDEX\tDB\tERROR")
	for _, m := range resp.Members {
		state := "healthy"
		switch {
		case !m.Healthy:
			state = "unhealthy"
		case m.Learner:
			state = "learner"
		case m.Leader:
			state = "leader"
		}
		fmt.Fprintf(tw, "%s\t%x\t%s\t%s\t%s\t%d\t%d\t%s\t%s\n", dash(m.Name), m.Id, dash(m.Server), strings.Join(m.PeerUrls, ","), paint.state(state), m.RaftTerm, m.RaftIndex, mib(m.DbSize), dash(m.Error))
	}
}
