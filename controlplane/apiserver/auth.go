package apiserver

import (
	"context"
	"strings"
	"time"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/api/pb"
	"github.com/berth-dev/berth/controlplane/authz"
	"github.com/berth-dev/berth/controlplane/store"
	"github.com/berth-dev/berth/internal/apierr"
	"github.com/berth-dev/berth/pki"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// An RPC's permissions: what a call needs, from its request message.
// Streams whose request arrives after the stream opens (server streams)
// are checked on their first message. Every RPC of both services must be
// listed here (TestEveryMethodHasPermissions); one that is not is refused.
type permissions func(msg any) []authz.Request

func one(v authz.Verb) permissions {
	return func(any) []authz.Request { return []authz.Request{{Verb: v}} }
}

// inNamespace is a call on one object of a namespace ("" is default).
func inNamespace(v authz.Verb, ns func(any) string) permissions {
	return func(m any) []authz.Request {
		return []authz.Request{{Verb: v, Namespace: nsOrDefault(ns(m))}}
	}
}

// listIn is a list over one namespace, or every one when it is "".
func listIn(ns func(any) string) permissions {
	return func(m any) []authz.Request {
		n := ns(m)
		return []authz.Request{{Verb: authz.Read, Namespace: n, AllNamespaces: n == ""}}
	}
}

func forNode(node func(any) string) permissions {
	return func(m any) []authz.Request {
		return []authz.Request{{Verb: authz.NodeSelf, Node: node(m)}}
	}
}

type namespaced interface{ GetNamespace() string }

func nsOf(m any) string {
	if n, ok := m.(namespaced); ok {
		return n.GetNamespace()
	}
	return ""
}

const (
	berthSvc = "/berth.v1.Berth/"
	agentSvc = "/berth.v1.NodeAgent/"
)

var methodPermissions = map[string]permissions{
	berthSvc + "Apply":        applyPermissions,
	berthSvc + "ListServices": listIn(nsOf),
	berthSvc + "GetService":   inNamespace(authz.Read, nsOf),
	berthSvc + "Logs":         inNamespace(authz.Logs, nsOf),
	berthSvc + "Scale":        inNamespace(authz.Write, nsOf),
	berthSvc + "Restart":      inNamespace(authz.Rollout, nsOf),
	berthSvc + "Version":      one(authz.Read),
	// Exec and port-forward reach into a container: the exec verb, in the
	// namespace the first message names.
	berthSvc + "Exec":              inNamespace(authz.Exec, func(m any) string { return m.(*pb.ExecInput).GetStart().GetNamespace() }),
	berthSvc + "PortForward":       inNamespace(authz.Exec, func(m any) string { return m.(*pb.PortForwardData).GetStart().GetNamespace() }),
	berthSvc + "DeleteService":     inNamespace(authz.Write, nsOf),
	berthSvc + "ListInstances":     listIn(nsOf),
	berthSvc + "ListNodes":         one(authz.Read),
	berthSvc + "LoadImage":         one(authz.ImageLoad),
	berthSvc + "ListImages":        one(authz.Read),
	berthSvc + "RemoveImage":       one(authz.ImageAdmin),
	berthSvc + "ListEvents":        listIn(nsOf),
	berthSvc + "CreateToken":       one(authz.TokenAdmin),
	berthSvc + "ListTokens":        one(authz.TokenAdmin),
	berthSvc + "RevokeToken":       one(authz.TokenAdmin),
	berthSvc + "Join":              one(authz.Join),
	berthSvc + "RenewCertificate":  one(authz.Renew),
	berthSvc + "RemoveNode":        one(authz.NodeAdmin),
	berthSvc + "RevokeGateway":     one(authz.GatewayAdmin),
	berthSvc + "CordonNode":        one(authz.NodeAdmin),
	berthSvc + "DrainNode":         one(authz.NodeAdmin),
	berthSvc + "ListGateways":      one(authz.Read),
	berthSvc + "ListRevisions":     inNamespace(authz.Read, nsOf),
	berthSvc + "Undo":              inNamespace(authz.Rollout, nsOf),
	berthSvc + "RolloutStatus":     inNamespace(authz.Read, nsOf),
	berthSvc + "RolloutAction":     inNamespace(authz.Rollout, nsOf),
	berthSvc + "ListVolumes":       listIn(nsOf),
	berthSvc + "GetVolume":         inNamespace(authz.Read, nsOf),
	berthSvc + "DeleteVolume":      inNamespace(authz.Write, nsOf),
	berthSvc + "ReleaseVolume":     inNamespace(authz.Write, nsOf),
	berthSvc + "ListSecrets":       listIn(nsOf),
	berthSvc + "DeleteSecret":      inNamespace(authz.Write, nsOf),
	berthSvc + "ListServers":       one(authz.Read),
	berthSvc + "RemoveServer":      one(authz.ControlPlaneAdmin),
	berthSvc + "JoinEtcd":          one(authz.MemberJoin),
	berthSvc + "PromoteEtcdMember": one(authz.MemberJoin),
	berthSvc + "Snapshot":          one(authz.ControlPlaneAdmin),

	agentSvc + "Register":  forNode(func(m any) string { return m.(*pb.RegisterRequest).GetName() }),
	agentSvc + "Heartbeat": forNode(func(m any) string { return m.(*pb.HeartbeatRequest).GetName() }),
	// The handler refuses a later message naming another node.
	agentSvc + "Heartbeats":           forNode(func(m any) string { return m.(*pb.HeartbeatRequest).GetName() }),
	agentSvc + "WatchAssignments":     forNode(func(m any) string { return m.(*pb.WatchAssignmentsRequest).GetNode() }),
	agentSvc + "ReportStatus":         forNode(func(m any) string { return m.(*pb.ReportStatusRequest).GetNode() }),
	agentSvc + "WatchDiscovery":       forNode(func(m any) string { return m.(*pb.WatchDiscoveryRequest).GetNode() }),
	agentSvc + "WatchDiscoveryDeltas": forNode(func(m any) string { return m.(*pb.WatchDiscoveryRequest).GetNode() }),
	agentSvc + "VolumeDeleted":        forNode(func(m any) string { return m.(*pb.VolumeDeletedRequest).GetNode() }),
	// The handler also checks that the instance is assigned to the node.
	agentSvc + "InstanceSecrets": forNode(func(m any) string { return m.(*pb.InstanceSecretsRequest).GetNode() }),
	agentSvc + "WatchNodes":      one(authz.NodeWatch),
	// Which images a node may fetch depends on its assignments: the
	// handler narrows it.
	agentSvc + "FetchImage": one(authz.ImageFetch),
}

// streamsCheckedAtOpen are client streams: their permissions do not
// depend on a message.
var streamsCheckedAtOpen = map[string]bool{berthSvc + "LoadImage": true}

// streamsCheckedAtFirstMessage are client streams whose first message
// says what they act on (the handler refuses one without it): they are
// authorised on it, before the handler reads it.
var streamsCheckedAtFirstMessage = map[string]bool{berthSvc + "Exec": true, berthSvc + "PortForward": true, agentSvc + "Heartbeats": true}

func applyPermissions(m any) []authz.Request {
	req := m.(*pb.ApplyRequest)
	seen := map[string]bool{}
	var out []authz.Request
	add := func(ns string) {
		ns = nsOrDefault(ns)
		if !seen[ns] {
			seen[ns] = true
			out = append(out, authz.Request{Verb: authz.Write, Namespace: ns})
		}
	}
	for _, s := range req.GetServices() {
		add(s.GetMetadata().GetNamespace())
		if len(s.GetSpec().GetSecurityContext().GetCapabilitiesAdd()) > 0 {
			// Added capabilities widen the sandbox: admins only.
			out = append(out, authz.Request{Verb: authz.Privileged, Namespace: nsOrDefault(s.GetMetadata().GetNamespace())})
		}
	}
	for _, v := range req.GetVolumes() {
		add(v.GetMetadata().GetNamespace())
	}
	for _, v := range req.GetSecrets() {
		add(v.GetMetadata().GetNamespace())
	}
	if len(out) == 0 {
		out = append(out, authz.Request{Verb: authz.Write, Namespace: api.DefaultNamespace})
	}
	return out
}

// benchIdentity is nil in every build but the berthbench one
// (bench_identity.go), where bench-cp-scale measures the control plane
// without mTLS.
var benchIdentity func(context.Context) (authz.Principal, bool)

type principalKey struct{}

// principalOf is the caller a handler serves (set by the interceptors).
func principalOf(ctx context.Context) authz.Principal {
	p, _ := ctx.Value(principalKey{}).(authz.Principal)
	return p
}

// authenticate finds who calls: a part's certificate (verified by TLS
// against the cluster CA, then checked against the identity's record: a
// revoked identity or an older generation is refused), or a user's
// bearer token, or nobody.
func (s *Server) authenticate(ctx context.Context) (authz.Principal, error) {
	if id, _, ok := pki.PeerIdentity(ctx); ok {
		if err := s.checkIdentity(id); err != nil {
			return authz.Anonymous, err
		}
		return authz.Principal{Role: id.Role, Name: id.Name}, nil
	}
	if benchIdentity != nil {
		if p, ok := benchIdentity(ctx); ok {
			return p, nil
		}
	}
	md, _ := metadata.FromIncomingContext(ctx)
	if vs := md.Get("authorization"); len(vs) > 0 { // the first one speaks
		tok, ok := strings.CutPrefix(vs[0], "Bearer ")
		if !ok {
			return authz.Anonymous, status.Error(codes.Unauthenticated, "authorization metadata is not \"Bearer <token>\"")
		}
		return s.tokenPrincipal(tok)
	}
	return authz.Anonymous, nil
}

func (s *Server) checkIdentity(id pki.Identity) error {
	if s.cfg.Auth == nil {
		return status.Error(codes.Unavailable, "authentication state not loaded")
	}
	if err := s.cfg.Auth.CheckCertificate(id); err != nil {
		return status.Error(codes.Unauthenticated, err.Error())
	}
	return nil
}

func (s *Server) tokenPrincipal(tok string) (authz.Principal, error) {
	bad := status.Error(codes.Unauthenticated, "API token rejected: unknown, revoked or malformed")
	id, secret, ok := store.SplitToken(tok)
	if !ok || s.cfg.Auth == nil {
		return authz.Anonymous, bad
	}
	t, ok := s.cfg.Auth.Token(id)
	if !ok || !store.MatchToken(t, secret) {
		return authz.Anonymous, bad
	}
	if t.Expired(time.Now()) {
		return authz.Anonymous, status.Errorf(codes.Unauthenticated, "API token %s expired at %s", id, t.ExpiresAt.Format(time.RFC3339))
	}
	role := pki.Role(t.Role)
	p := authz.Principal{Role: role, Name: "token " + t.ID, Namespaces: t.Namespaces}
	if !p.IsUser() {
		return authz.Anonymous, status.Errorf(codes.Unauthenticated, "token %s is a %s join token, not an API token: use it with `berth %s --join-token`", id, t.Role, map[pki.Role]string{pki.RoleNode: "agent", pki.RoleGateway: "gateway"}[role])
	}
	if t.Description != "" {
		p.Name += " (" + t.Description + ")"
	}
	return p, nil
}

// authorize checks reqs for p and logs a refusal with the caller.
func (s *Server) authorize(ctx context.Context, p authz.Principal, method string, reqs []authz.Request) error {
	for _, r := range reqs {
		if err := authz.Allowed(p, r); err != nil {
			from := ""
			if pr, ok := peer.FromContext(ctx); ok && pr.Addr != nil {
				from = pr.Addr.String()
			}
			s.logger.Warn("call refused", "caller", p.String(), "from", from, "method", method, "missing", r.String())
			code := codes.PermissionDenied
			if p.Role == "" {
				code = codes.Unauthenticated
			}
			return status.Error(code, err.Error())
		}
	}
	return nil
}

// UnaryInterceptor authenticates and authorises every unary call.
func (s *Server) UnaryInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	perms, ok := methodPermissions[info.FullMethod]
	if !ok {
		return nil, status.Errorf(codes.PermissionDenied, "%s: no permission is defined for this method", info.FullMethod)
	}
	p, err := s.authenticate(ctx)
	if err != nil {
		s.logger.Warn("call refused", "method", info.FullMethod, "err", err)
		return nil, err
	}
	if err := s.authorize(ctx, p, info.FullMethod, perms(req)); err != nil {
		return nil, err
	}
	if guardedMethod(info.FullMethod) {
		if err := s.disk.check(); err != nil {
			return nil, err
		}
	}
	// Calls fail at once, naming quorum, when this replica's etcd member
	// has no leader, instead of waiting out the caller's deadline.
	ctx = context.WithValue(ctx, principalKey{}, p)
	if !worksWithoutQuorum[info.FullMethod] {
		ctx = clientv3.WithRequireLeader(ctx)
	}
	resp, err := handler(ctx, req)
	return resp, noQuorum(err)
}

// worksWithoutQuorum are the calls that answer from what this replica's
// etcd member holds when there is no quorum: `get servers` is for that
// moment.
var worksWithoutQuorum = map[string]bool{berthSvc + "ListServers": true}

// noQuorum rewrites etcd's "no leader" (however the handler wrapped it)
// as what it means to a user, and etcd's timeouts of a proposal as what
// they mean: the write may or may not have been stored (Unavailable, so
// the CLI retries an idempotent call and reports what is stored).
func noQuorum(err error) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	if strings.Contains(msg, rpctypes.ErrNoLeader.Error()) {
		return apierr.NoQuorum("etcd has no quorum (no leader: fewer than half of its members reachable); nothing was written, the data plane keeps serving; `berth get servers` shows the members (%v)", status.Convert(err).Message())
	}
	for _, timeout := range etcdTimeouts {
		if strings.Contains(msg, timeout) {
			return status.Errorf(codes.Unavailable, "etcd did not confirm the write in time (its leader changed or lost its quorum meanwhile): it may or may not have been stored; `berth get servers` shows the members (%v)", status.Convert(err).Message())
		}
	}
	return err
}

// etcdTimeouts are etcd's errors for a proposal whose fate it does not
// know.
var etcdTimeouts = []string{
	rpctypes.ErrTimeout.Error(), rpctypes.ErrTimeoutDueToLeaderFail.Error(),
	rpctypes.ErrTimeoutDueToConnectionLost.Error(), rpctypes.ErrTimeoutWaitAppliedIndex.Error(),
}

// StreamInterceptor authenticates every stream and authorises it on its
// first message (at open for client streams). The stream ends when its
// caller's certificate or token is revoked.
func (s *Server) StreamInterceptor(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	perms, ok := methodPermissions[info.FullMethod]
	if !ok {
		return status.Errorf(codes.PermissionDenied, "%s: no permission is defined for this method", info.FullMethod)
	}
	p, err := s.authenticate(ss.Context())
	if err != nil {
		s.logger.Warn("stream refused", "method", info.FullMethod, "err", err)
		return err
	}
	ctx, cancel := context.WithCancel(context.WithValue(ss.Context(), principalKey{}, p))
	defer cancel()
	if streamsCheckedAtOpen[info.FullMethod] {
		if err := s.authorize(ctx, p, info.FullMethod, perms(nil)); err != nil {
			return err
		}
	} else if p.Role == "" {
		return s.authorize(ctx, p, info.FullMethod, []authz.Request{{Verb: authz.Read}})
	}
	if guardedMethod(info.FullMethod) { // LoadImage: the largest write of all
		if err := s.disk.check(); err != nil {
			return err
		}
	}
	if s.cfg.Auth != nil {
		defer s.watch(&openStream{ctx: ss.Context(), cancel: cancel, p: p, method: info.FullMethod})()
	}
	w := &authStream{ServerStream: ss, ctx: ctx, s: s, p: p, method: info.FullMethod, perms: perms, checked: streamsCheckedAtOpen[info.FullMethod]}
	err = handler(srv, w)
	if err == nil && ctx.Err() != nil && ss.Context().Err() == nil {
		return status.Error(codes.Unauthenticated, "credential revoked")
	}
	return err
}

type authStream struct {
	grpc.ServerStream
	ctx     context.Context
	s       *Server
	p       authz.Principal
	method  string
	perms   permissions
	checked bool
}

func (a *authStream) Context() context.Context { return a.ctx }

func (a *authStream) RecvMsg(m any) error {
	if err := a.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	if !a.checked {
		a.checked = true
		if err := a.s.authorize(a.ctx, a.p, a.method, a.perms(m)); err != nil {
			return err
		}
	}
	return nil
}

// errNotYours refuses a node's call about something not assigned to it.
func errNotYours(format string, args ...any) error {
	return status.Errorf(codes.PermissionDenied, "permission denied: "+format, args...)
}

// nodeCaller returns the node a part's call comes from, or "" for
// another caller (a replica, an admin).
func nodeCaller(ctx context.Context) string {
	if p := principalOf(ctx); p.Role == pki.RoleNode {
		return p.Name
	}
	return ""
}
