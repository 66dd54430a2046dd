package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/api/pb"
	"github.com/berth-dev/berth/internal/apierr"
	"github.com/berth-dev/berth/manifests"
	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
	"sigs.k8s.io/yaml"
)

func (g *globalOptions) client() (pb.BerthClient, func(), error) {
	conn, err := g.dial()
	if err != nil {
		return nil, nil, err
	}
	return pb.NewBerthClient(conn), func() { conn.Close() }, nil
}

// call runs f with an API client and a context bounded by callCtx: the
// frame of every one-shot CLI command.
func (g *globalOptions) call(cmd *cobra.Command, f func(ctx context.Context, cli pb.BerthClient) error) error {
	cli, done, err := g.client()
	if err != nil {
		return err
	}
	defer done()
	ctx, cancel := callCtx(cmd)
	defer cancel()
	return f(ctx, cli)
}

// rpcErr makes gRPC errors readable: the message, and a hint when the
// server is not there. The gRPC error stays underneath (status.Code sees
// its code), so a retry can tell a lost answer from a refusal.
func (g *globalOptions) rpcErr(err error) error {
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	if apierr.IsNoQuorum(err) {
		// The server answered: its etcd cannot write.
		return &rpcError{msg: "the control plane cannot write now: " + st.Message(), err: err}
	}
	if st.Code() == codes.Unavailable {
		return &rpcError{msg: fmt.Sprintf("cannot reach the Berth API at %s (is `berth dev` or `berth server` running? set --server or BERTH_ADDR): %s", g.server, st.Message()), err: err}
	}
	return &rpcError{msg: st.Message(), err: err}
}

// rpcError is a gRPC error as the CLI prints it.
type rpcError struct {
	msg string
	err error
}

func (e *rpcError) Error() string { return e.msg }
func (e *rpcError) Unwrap() error { return e.err }

func callCtx(cmd *cobra.Command) (context.Context, context.CancelFunc) {
	return context.WithTimeout(cmd.Context(), 30*time.Second)
}

func newApplyCmd(g *globalOptions) *cobra.Command {
	var files []string
	var dryRun, wait bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "apply -f FILE|DIR",
		Short: "Create or update services from manifests (all or nothing)",
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(files) == 0 {
				return errors.New("apply: -f FILE|DIR is required")
			}
			var all manifests.Objects
			for _, f := range files {
				objs, err := manifests.LoadObjects(f)
				if err != nil {
					return err
				}
				all.Services = append(all.Services, objs.Services...)
				all.Volumes = append(all.Volumes, objs.Volumes...)
				all.Secrets = append(all.Secrets, objs.Secrets...)
			}
			if len(all.Services)+len(all.Volumes)+len(all.Secrets) == 0 {
				return fmt.Errorf("apply: no manifests found in %s", strings.Join(files, ", "))
			}
			req := &pb.ApplyRequest{DryRun: dryRun}
			for i := range all.Services {
				req.Services = append(req.Services, pb.FromService(&all.Services[i]))
			}
			for i := range all.Volumes {
				req.Volumes = append(req.Volumes, pb.FromVolume(&all.Volumes[i]))
			}
			for i := range all.Secrets {
				sec, err := secretToPB(&all.Secrets[i])
				if err != nil {
					return err
				}
				req.Secrets = append(req.Secrets, sec)
			}
			cli, done, err := g.client()
			if err != nil {
				return err
			}
			defer done()
			// Apply is idempotent (the same manifests again change
			// nothing), so an answer lost to a broken connection or a
			// restarting replica is asked for again.
			var resp *pb.ApplyResponse
			lost, err := retryIdempotent(cmd.Context(), cmd.ErrOrStderr(), "apply", defaultRetry, func(ctx context.Context) error {
				var err error
				resp, err = cli.Apply(ctx, req)
				return err
			})
			if err != nil {
				return g.rpcErr(err)
			}
			printApplied(cmd.OutOrStdout(), cmd.ErrOrStderr(), resp.Results, lost)
			if wait && !dryRun {
				return waitApplied(cmd, g, cli, resp.Results, timeout)
			}
			return nil
		},
	}
	cmd.Flags().StringArrayVarP(&files, "file", "f", nil, "manifest file or directory (repeatable; - for stdin)")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "validate on the server, store nothing")
	cmd.Flags().BoolVar(&wait, "wait", false, "wait until every applied service has all its replicas of the applied revision ready; with a rollout, until it succeeds (exit 0), pauses for promote (exit 0) or is rolled back (exit 3)")
	cmd.Flags().DurationVar(&timeout, "timeout", 2*time.Minute, "how long --wait waits")
	return cmd
}

// printApplied prints what an apply did, one line per object. lost: an
// earlier attempt's answer was lost (retryIdempotent), so the server may
// have stored these manifests then, and "unchanged" now means only that
// what is stored is what the manifests say, not that nothing was written:
// such objects are printed "stored", with a note. "created" and
// "configured" stay: the lost attempt did not commit (an apply is all or
// nothing), this one did.
func printApplied(stdout, stderr io.Writer, results []*pb.ApplyResult, lost bool) {
	stored := false
	for _, r := range results {
		action := r.Action
		if lost && action == "unchanged" {
			action, stored = "stored", true
		}
		if r.Kind == api.KindVolume || r.Kind == api.KindSecret {
			fmt.Fprintf(stdout, "%s/%s %s (namespace %s)\n", strings.ToLower(r.Kind), r.Name, action, r.Namespace)
			continue
		}
		if r.Revision > 0 {
			fmt.Fprintf(stdout, "service/%s %s (namespace %s, revision %d)\n", r.Name, action, r.Namespace, r.Revision)
		} else {
			fmt.Fprintf(stdout, "service/%s %s (namespace %s)\n", r.Name, action, r.Namespace)
		}
	}
	if stored {
		fmt.Fprintln(stderr, "the connection broke before the server answered; \"stored\" means the server holds these manifests as given: the lost attempt created or configured them, or they were so already (see berth get events)")
	}
}

// printer writes objects as a table, JSON or YAML.
type printer struct {
	format string
	w      io.Writer
}

func (p printer) structured(msgs []proto.Message) (bool, error) {
	if p.format == "table" || p.format == "" || p.format == "wide" {
		return false, nil
	}
	var items []json.RawMessage
	for _, m := range msgs {
		b, err := protojson.MarshalOptions{UseProtoNames: false, EmitUnpopulated: false}.Marshal(m)
		if err != nil {
			return true, err
		}
		items = append(items, b)
	}
	b, err := json.MarshalIndent(items, "", "  ")
	if err != nil {
		return true, err
	}
	switch p.format {
	case "json":
		_, err = fmt.Fprintln(p.w, string(b))
	case "yaml":
		y, yerr := yaml.JSONToYAML(b)
		if yerr != nil {
			return true, yerr
		}
		_, err = p.w.Write(y)
	default:
		return true, fmt.Errorf("unknown output format %q: use table, json or yaml", p.format)
	}
	return true, err
}

func age(t *timestamppb.Timestamp) string {
	if t == nil {
		return "-"
	}
	d := time.Since(t.AsTime())
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	default:
		return fmt.Sprintf("%dd", int(d.Hours()/24))
	}
}

func short(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

func mib(b int64) string {
	if b >= 1<<30 {
		return fmt.Sprintf("%.1fGi", float64(b)/(1<<30))
	}
	return fmt.Sprintf("%dMi", b>>20)
}

func printInstances(tw *tabwriter.Writer, ivs []*pb.InstanceView, p painter) {
	printInstancesWide(tw, ivs, false, p)
}

// panicReady is READY for an instance whose endpoint panic routing keeps.
const panicReady = "unknown (node NotReady; kept: panic)"

// printInstancesWide prints instances; wide adds the image and the last
// error in full.
func printInstancesWide(tw *tabwriter.Writer, ivs []*pb.InstanceView, wide bool, p painter) {
	sort.Slice(ivs, func(i, j int) bool {
		a, b := ivs[i].Instance, ivs[j].Instance
		if a.Namespace+a.Service != b.Namespace+b.Service {
			return a.Namespace+a.Service < b.Namespace+b.Service
		}
		return a.Id < b.Id
	})
	if wide {
		fmt.Fprintln(tw, "NAMESPACE\tINSTANCE\tSERVICE\tREV\tNODE\tSTATE\tREADY\tIP\tRESTARTS\tAGE\tIMAGE\tLAST-ERROR")
	} else {
		fmt.Fprintln(tw, "NAMESPACE\tINSTANCE\tSERVICE\tREV\tNODE\tSTATE\tREADY\tIP\tRESTARTS\tAGE\tLAST-ERROR")
	}

	for _, iv := range ivs {
		in, st := iv.Instance, iv.Status
		var state string
		phase, ip, lastErr, ready, restarts := "Pending", "-", "", "false", int32(0)
		if st != nil {
			phase, lastErr, restarts = st.Phase, st.LastError, st.Restarts
			if st.Ip != "" {
				ip = st.Ip
			}
			if st.Ready {
				ready = "true"
			}
		}
		if iv.PanicRouting {
			// Its node stopped reporting: ready as last reported, and
			// still served because the service has no other endpoint.
			ready = panicReady
		}
		switch {
		case in.Node == "" && in.Desired == api.DesiredRunning:
			state = "Unscheduled"
		case in.Draining && in.Desired == api.DesiredRunning:
			state = "Draining"
		case in.Desired == api.DesiredStopped:
			state = "Stopping"
		default:
			state = phase
		}
		node := in.Node
		if node == "" {
			node = "-"
		}
		state, ready = p.state(state), p.state(ready)
		if wide {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", in.Namespace, in.Id, in.Service, in.Revision, node, state, ready, ip, restarts, age(in.CreatedAt), in.GetTemplate().GetImage(), dash(lastErr))
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", in.Namespace, in.Id, in.Service, in.Revision, node, state, ready, ip, restarts, age(in.CreatedAt), short(lastErr, 120))
	}
}

func newDescribeCmd(g *globalOptions) *cobra.Command {
	var namespace string
	cmd := &cobra.Command{
		Use: "describe service NAME",
		ValidArgsFunction: func(cmd *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
			if len(args) == 0 {
				return []string{"service"}, cobra.ShellCompDirectiveNoFileComp
			}
			return completeNames(cmd, g, "services"), cobra.ShellCompDirectiveNoFileComp
		},
		Short: "Show a service: spec, instances, what DNS answers, recent events",
		Args:  nArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if args[0] != "service" && args[0] != "services" && args[0] != "svc" {
				return fmt.Errorf("describe: unknown kind %q: use service", args[0])
			}
			return g.call(cmd, func(ctx context.Context, cli pb.BerthClient) error {
				var d *pb.ServiceDetail
				_, err := retryIdempotent(ctx, cmd.ErrOrStderr(), "describe", defaultRetry, func(ctx context.Context) error {
					var err error
					d, err = cli.GetService(ctx, &pb.GetServiceRequest{Namespace: namespace, Name: args[1]})
					return err
				})
				if err != nil {
					return g.rpcErr(err)
				}
				w := cmd.OutOrStdout()
				s := d.Service
				fmt.Fprintf(w, "Name:        %s\nNamespace:   %s\nRevision:    %d\nImage:       %s\nReplicas:    %d\n", s.Metadata.Name, s.Metadata.Namespace, s.Status.GetRevision(), s.Spec.Image, s.Spec.GetReplicas())
				if len(s.Spec.Command)+len(s.Spec.Args) > 0 {
					fmt.Fprintf(w, "Command:     %s\n", strings.Join(append(append([]string{}, s.Spec.Command...), s.Spec.Args...), " "))
				}
				for _, p := range s.Spec.Ports {
					fmt.Fprintf(w, "Port:        %s %d/%s\n", p.Name, p.Port, p.Protocol)
				}
				if r := s.Spec.Resources; r != nil && (r.Cpu != "" || r.Memory != "") {
					fmt.Fprintf(w, "Resources:   cpu %s, memory %s\n", r.Cpu, r.Memory)
				}
				for _, pr := range []struct {
					name string
					h    *pb.Health
				}{{"Health:     ", s.Spec.Health}, {"Liveness:   ", s.Spec.Liveness}} {
					h := pr.h
					if h == nil {
						continue
					}
					extra := ""
					if h.InitialDelay != "" {
						extra += ", first after " + h.InitialDelay
					}
					if h.FailureThreshold > 1 {
						extra += fmt.Sprintf(", %d failures in a row count", h.FailureThreshold)
					}
					switch {
					case h.Http != nil:
						fmt.Fprintf(w, "%s http GET :%d%s every %s (timeout %s%s)\n", pr.name, h.Http.Port, h.Http.Path, h.Interval, h.Timeout, extra)
					case h.Tcp != nil:
						fmt.Fprintf(w, "%s tcp :%d every %s (timeout %s%s)\n", pr.name, h.Tcp.Port, h.Interval, h.Timeout, extra)
					}
				}
				if r := s.Spec.Route; r != nil {
					fmt.Fprintf(w, "Route:       hosts %s, paths %s\n", strings.Join(r.Hosts, ","), strings.Join(r.Paths, ","))
					for _, o := range d.RouteOwners {
						fmt.Fprintf(w, "  owner:     %s\n", o)
					}
				}
				keys := make([]string, 0, len(s.Spec.Env))
				for k := range s.Spec.Env {
					keys = append(keys, k)
				}
				sort.Strings(keys)
				for _, k := range keys {
					fmt.Fprintf(w, "Env:         %s=%s\n", k, s.Spec.Env[k])
				}
				fmt.Fprintf(w, "DNS names:   %s\n", strings.Join(d.DnsNames, ", "))
				if len(d.DnsAnswers) == 0 {
					fmt.Fprintln(w, "DNS answers: (none ready: NODATA)")
				} else {
					fmt.Fprintln(w, "DNS answers:")
					for _, a := range d.DnsAnswers {
						fmt.Fprintf(w, "  %s\n", a)
					}
				}
				fmt.Fprintln(w, "\nInstances:")
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				printInstances(tw, d.Instances, painterFor(w))
				tw.Flush()
				fmt.Fprintln(w, "\nEvents:")
				printEvents(w, d.Events)
				return nil
			})
		},
	}
	cmd.Flags().StringVarP(&namespace, "namespace", "n", api.DefaultNamespace, "namespace")
	return cmd
}

func printEvents(w io.Writer, events []*pb.Event) {
	if len(events) == 0 {
		fmt.Fprintln(w, "  (none)")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  AGE\tTYPE\tREASON\tOBJECT\tMESSAGE")
	for _, ev := range events {
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\n", age(ev.At), ev.Type, ev.Reason, ev.Object, ev.Message)
	}
	tw.Flush()
}

func newEventsCmd(g *globalOptions) *cobra.Command {
	var namespace, object string
	var limit int32
	var watch bool
	cmd := &cobra.Command{
		Use:   "events",
		Short: "Show recent events (kept for an hour); --watch follows new ones",
		Args:  exactArgs(0, "events [-n NS] [--object service/NAME] [--watch]"),
		RunE: func(cmd *cobra.Command, args []string) error {
			cli, done, err := g.client()
			if err != nil {
				return err
			}
			defer done()
			seen := map[string]bool{}
			key := func(ev *pb.Event) string {
				return ev.At.AsTime().Format(time.RFC3339Nano) + ev.Object + ev.Reason + ev.Message
			}
			first := true
			for {
				ctx, cancel := callCtx(cmd)
				resp, err := cli.ListEvents(ctx, &pb.ListEventsRequest{Namespace: namespace, Object: object, Limit: limit})
				cancel()
				if err != nil {
					return g.rpcErr(err)
				}
				var fresh []*pb.Event
				for _, ev := range resp.Events {
					if k := key(ev); !seen[k] {
						seen[k] = true
						fresh = append(fresh, ev)
					}
				}
				if first || len(fresh) > 0 {
					if !first {
						// Only the new lines, no header again.
						tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
						for _, ev := range fresh {
							fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\n", age(ev.At), ev.Type, ev.Reason, ev.Object, ev.Message)
						}
						tw.Flush()
					} else {
						printEvents(cmd.OutOrStdout(), fresh)
					}
				}
				first = false
				if !watch {
					return nil
				}
				select {
				case <-cmd.Context().Done():
					return nil
				case <-time.After(time.Second):
				}
			}
		},
	}
	cmd.Flags().StringVarP(&namespace, "namespace", "n", "", "namespace (default: all)")
	cmd.Flags().StringVar(&object, "object", "", "object prefix, e.g. service/hello")
	cmd.Flags().Int32Var(&limit, "limit", 100, "most recent events to show")
	cmd.Flags().BoolVarP(&watch, "watch", "w", false, "go on printing events as they happen")
	return cmd
}

func newDeleteCmd(g *globalOptions) *cobra.Command {
	var namespace string
	var files []string
	var wait, keepHistory bool
	cmd := &cobra.Command{
		Use: "delete service NAME... | delete -f FILE|DIR",
		ValidArgsFunction: func(cmd *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
			if len(args) == 0 {
				return []string{"service"}, cobra.ShellCompDirectiveNoFileComp
			}
			return completeNames(cmd, g, "services"), cobra.ShellCompDirectiveNoFileComp
		},
		Short: "Delete services (their DNS name and route go first, then their containers stop), or every object in manifests",
		Long: `Delete services by name, or every service, volume and secret the manifests
name (-f, as for apply; services first, so volumes they mount are free).

A deleted service's revisions and rollout record go with it, unless
--keep-history keeps them (rollout history still lists them, and a service
re-created under the name goes on from its last revision number either way).`,
		RunE: func(cmd *cobra.Command, args []string) error {
			type target struct{ kind, namespace, name string }
			var targets []target
			switch {
			case len(files) > 0 && len(args) > 0:
				return errors.New("delete: give either -f FILE or a kind and names, not both")
			case len(files) > 0:
				for _, f := range files {
					objs, err := manifests.LoadObjects(f)
					if err != nil {
						return err
					}
					for _, s := range objs.Services {
						targets = append(targets, target{api.KindService, s.Metadata.Namespace, s.Metadata.Name})
					}
					for _, v := range objs.Volumes {
						targets = append(targets, target{api.KindVolume, v.Metadata.Namespace, v.Metadata.Name})
					}
					for _, sec := range objs.Secrets {
						targets = append(targets, target{api.KindSecret, sec.Metadata.Namespace, sec.Metadata.Name})
					}
				}
				// Services first: a volume is free only once nothing mounts it.
				sort.SliceStable(targets, func(i, j int) bool { return targets[i].kind == api.KindService && targets[j].kind != api.KindService })
			case len(args) < 2:
				return errors.New("delete: takes a kind and one or more names (delete service NAME...), or -f FILE")
			case args[0] != "service" && args[0] != "services" && args[0] != "svc":
				return fmt.Errorf("delete: unknown kind %q: use service (volumes: berth volume rm; secrets: berth secret rm), or -f FILE", args[0])
			default:
				for _, name := range args[1:] {
					targets = append(targets, target{api.KindService, namespace, name})
				}
			}
			return g.call(cmd, func(ctx context.Context, cli pb.BerthClient) error {
				out := cmd.OutOrStdout()
				var services []target
				for _, t := range targets {
					var err error
					switch t.kind {
					case api.KindService:
						var resp *pb.DeleteServiceResponse
						resp, err = cli.DeleteService(ctx, &pb.DeleteServiceRequest{Namespace: t.namespace, Name: t.name, KeepHistory: keepHistory})
						if err == nil {
							fmt.Fprintf(out, "service/%s deleted; %d instances draining\n", t.name, resp.InstancesDraining)
							services = append(services, t)
						}
					case api.KindVolume:
						if _, err = cli.DeleteVolume(ctx, &pb.DeleteVolumeRequest{Namespace: t.namespace, Name: t.name}); err == nil {
							fmt.Fprintf(out, "volume/%s deleted\n", t.name)
						}
					case api.KindSecret:
						if _, err = cli.DeleteSecret(ctx, &pb.DeleteSecretRequest{Namespace: t.namespace, Name: t.name}); err == nil {
							fmt.Fprintf(out, "secret/%s deleted\n", t.name)
						}
					}
					if err != nil {
						return g.rpcErr(err)
					}
				}
				if !wait {
					return nil
				}
				for _, t := range services {
					for {
						l, err := cli.ListInstances(ctx, &pb.ListInstancesRequest{Namespace: t.namespace, Service: t.name})
						if err != nil {
							return g.rpcErr(err)
						}
						if len(l.Instances) == 0 {
							fmt.Fprintf(out, "service/%s: all containers stopped\n", t.name)
							break
						}
						select {
						case <-ctx.Done():
							return fmt.Errorf("delete: %s: %d instances still stopping", t.name, len(l.Instances))
						case <-time.After(200 * time.Millisecond):
						}
					}
				}
				return nil
			})
		},
	}
	cmd.Flags().StringVarP(&namespace, "namespace", "n", api.DefaultNamespace, "namespace")
	cmd.Flags().StringArrayVarP(&files, "file", "f", nil, "delete every object in these manifests (repeatable; - for stdin)")
	cmd.Flags().BoolVar(&wait, "wait", false, "wait until every container of the deleted services has stopped")
	cmd.Flags().BoolVar(&keepHistory, "keep-history", false, "keep the service's revisions and rollout record (rollout history still lists them)")
	return cmd
}

func newImageCmd(g *globalOptions) *cobra.Command {
	cmd := &cobra.Command{Use: "image", Short: "Manage images uploaded to the cluster"}
	var force bool
	load := &cobra.Command{
		Use:   "load FILE.tar...",
		Short: "Upload image tarballs (docker-archive or OCI) that nodes import instead of pulling",
		Long: `Upload image tarballs (docker-archive or OCI) that nodes import instead of pulling.

A tag names one upload: loading different bytes under a tag that exists is
refused, and --force (admin only) re-points it. A revision keeps the upload
its tag named when it was applied, so re-pointing a tag changes nothing
that runs until the service is applied again.`,
		Args: minArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.eachArg(args, func(cli pb.BerthClient, file string) error { return loadImage(cmd, g, cli, file, force) })
		},
	}
	load.Flags().BoolVar(&force, "force", false, "re-point tags that name another upload (admin)")
	var rmForce bool
	rm := &cobra.Command{
		Use:   "rm REFERENCE|sha256:DIGEST...",
		Short: "Remove a tag (and its upload once nothing else names or pins it), or an upload by digest (admin)",
		Args:  minArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.eachArg(args, func(cli pb.BerthClient, ref string) error {
				resp, err := cli.RemoveImage(cmd.Context(), &pb.RemoveImageRequest{Image: ref, Force: rmForce})
				if err != nil {
					return g.rpcErr(err)
				}
				msg := "removed " + ref
				if resp.RemovedDigest != "" {
					msg += fmt.Sprintf(" (upload %s and tags %s)", short(resp.RemovedDigest, 19), strings.Join(resp.RemovedReferences, ", "))
				}
				fmt.Fprintln(cmd.OutOrStdout(), msg)
				return nil
			})
		},
	}
	rm.Flags().BoolVar(&rmForce, "force", false, "remove even if services, revisions or instances use it")
	cmd.AddCommand(load, rm)
	return cmd
}

// eachArg runs f with one API client for each argument in turn, stopping
// at the first error.
func (g *globalOptions) eachArg(args []string, f func(cli pb.BerthClient, arg string) error) error {
	cli, done, err := g.client()
	if err != nil {
		return err
	}
	defer done()
	for _, a := range args {
		if err := f(cli, a); err != nil {
			return err
		}
	}
	return nil
}

func loadImage(cmd *cobra.Command, g *globalOptions, cli pb.BerthClient, file string, force bool) error {
	f, err := os.Open(file)
	if err != nil {
		return fmt.Errorf("image load: %w", err)
	}
	defer f.Close()
	// The server checks the bytes it receives against this digest.
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return fmt.Errorf("image load %s: %w", file, err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("image load %s: %w", file, err)
	}
	digest := "sha256:" + hex.EncodeToString(h.Sum(nil))
	ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Minute)
	defer cancel()
	stream, err := cli.LoadImage(ctx)
	if err != nil {
		return g.rpcErr(err)
	}
	buf := make([]byte, 1<<20)
	first := true
	var size int64
	if st, err := f.Stat(); err == nil {
		size = st.Size()
	}
	bar := newProgress(cmd.ErrOrStderr(), filepath.Base(file), size)
	defer bar.finish()
	for {
		n, rerr := f.Read(buf)
		bar.add(n)
		if n > 0 {
			chunk := &pb.ImageChunk{Data: buf[:n]}
			if first {
				chunk.FileName, chunk.Digest, chunk.Force, first = filepath.Base(file), digest, force, false
			}
			if err := stream.Send(chunk); err != nil {
				_, rerr2 := stream.CloseAndRecv()
				if rerr2 != nil {
					return g.rpcErr(rerr2)
				}
				return g.rpcErr(err)
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return fmt.Errorf("image load %s: %w", file, rerr)
		}
	}
	resp, err := stream.CloseAndRecv()
	if err != nil {
		return g.rpcErr(err)
	}
	fmt.Fprintf(cmd.OutOrStdout(), "loaded %s (%s, %s)\n", strings.Join(resp.References, ", "), short(resp.Digest, 19), mib(resp.Size))
	return nil
}
