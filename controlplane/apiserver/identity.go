package apiserver

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/api/pb"
	"github.com/berth-dev/berth/controlplane/store"
	"github.com/berth-dev/berth/manifests"
	"github.com/berth-dev/berth/pki"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// DefaultJoinTokenTTL is how long a join token lives unless told.
const DefaultJoinTokenTTL = time.Hour

func tokenToPB(t store.Token) *pb.Token {
	out := &pb.Token{Id: t.ID, Role: t.Role, Namespaces: t.Namespaces, Description: t.Description, CreatedAt: timestamppb.New(t.CreatedAt), UsesLeft: int32(t.UsesLeft)}
	if !t.ExpiresAt.IsZero() {
		out.ExpiresAt = timestamppb.New(t.ExpiresAt)
	}
	return out
}

// CreateToken makes an API or join token; its secret is returned once and
// only its hash is stored.
func (s *Server) CreateToken(ctx context.Context, req *pb.CreateTokenRequest) (*pb.CreateTokenResponse, error) {
	all := append(append([]pki.Role{}, pki.UserRoles...), pki.RoleNode, pki.RoleGateway)
	role, err := pki.ParseRole(req.Role, all)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "create token: role: %v", err)
	}
	join := role == pki.RoleNode || role == pki.RoleGateway
	for i, ns := range req.Namespaces {
		if err := manifests.ValidNamespace(ns); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "create token: namespaces[%d]: %v", i, err)
		}
	}
	if len(req.Namespaces) > 0 && (join || role == pki.RoleAdmin) {
		return nil, status.Errorf(codes.InvalidArgument, "create token: namespaces: a %s token cannot be limited to namespaces (only deployer and viewer)", role)
	}
	if req.TtlSeconds < 0 {
		return nil, status.Errorf(codes.InvalidArgument, "create token: ttl: %ds is negative", req.TtlSeconds)
	}
	now := time.Now().UTC()
	t := store.Token{Role: string(role), Namespaces: req.Namespaces, Description: req.Description, CreatedAt: now}
	ttl := time.Duration(req.TtlSeconds) * time.Second
	if ttl == 0 && join {
		ttl = DefaultJoinTokenTTL
	}
	if ttl > 0 {
		t.ExpiresAt = now.Add(ttl)
	}
	switch {
	case !join && req.Uses != 0:
		return nil, status.Error(codes.InvalidArgument, "create token: uses: only join tokens (roles node, gateway) have a number of uses")
	case req.Uses == 0 && join:
		t.UsesLeft = 1
	case req.Uses > 0:
		t.UsesLeft = int(req.Uses)
	case req.Uses < -1:
		return nil, status.Errorf(codes.InvalidArgument, "create token: uses: %d (a positive count, or -1 for unlimited)", req.Uses)
	}
	var secret string
	t.ID, secret, t.SecretHash, err = store.NewTokenSecret()
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	if err := s.store.CreateToken(ctx, t); err != nil {
		return nil, storeErr(err)
	}
	p := principalOf(ctx)
	_ = s.store.RecordEvent(ctx, store.Event{Object: "token/" + t.ID, Reason: "TokenCreated", Message: fmt.Sprintf("%s token %s created by %s: %s", t.Role, t.ID, p, t.Description)})
	s.logger.Info("token created", "id", t.ID, "role", t.Role, "by", p.String())
	resp := &pb.CreateTokenResponse{Token: secret, Info: tokenToPB(t)}
	if s.cfg.CA != nil {
		resp.CaHash = s.cfg.CA.Pin()
	}
	return resp, nil
}

// ListTokens lists tokens without their secrets.
func (s *Server) ListTokens(ctx context.Context, req *pb.ListTokensRequest) (*pb.ListTokensResponse, error) {
	ts, err := s.store.ListTokens(ctx)
	if err != nil {
		return nil, storeErr(err)
	}
	out := &pb.ListTokensResponse{}
	now := time.Now()
	for _, t := range ts {
		if !t.Expired(now) {
			out.Tokens = append(out.Tokens, tokenToPB(t))
		}
	}
	return out, nil
}

// RevokeToken deletes a token: calls with it are refused at once.
func (s *Server) RevokeToken(ctx context.Context, req *pb.RevokeTokenRequest) (*pb.RevokeTokenResponse, error) {
	if req.Id == "" {
		return nil, status.Error(codes.InvalidArgument, "revoke token: id is required (see `berth token ls`)")
	}
	if err := s.store.DeleteToken(ctx, req.Id); err != nil {
		return nil, storeErr(err)
	}
	if s.cfg.Auth != nil {
		s.cfg.Auth.RefreshToken(ctx, req.Id)
	}
	_ = s.store.RecordEvent(ctx, store.Event{Object: "token/" + req.Id, Reason: "TokenRevoked", Message: fmt.Sprintf("token %s revoked by %s", req.Id, principalOf(ctx))})
	return &pb.RevokeTokenResponse{}, nil
}

// Join exchanges a join token for a certificate naming the part.
func (s *Server) Join(ctx context.Context, req *pb.JoinRequest) (*pb.CertificateResponse, error) {
	if s.cfg.CA == nil {
		return nil, status.Error(codes.FailedPrecondition, "join: this control plane has no CA")
	}
	role, err := pki.ParseRole(req.Role, []pki.Role{pki.RoleNode, pki.RoleGateway})
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "join: role: %v", err)
	}
	if err := validPartName(string(role), req.Name); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "join: name: %v", err)
	}
	if role == pki.RoleNode && s.cfg.MaxNodes > 0 {
		if v := s.cache.View(); len(v.Nodes) >= s.cfg.MaxNodes && v.Node(req.Name) == nil {
			return nil, status.Errorf(codes.ResourceExhausted, "join: the cluster has %d nodes, the most --max-nodes allows; remove one with `berth node remove`", len(v.Nodes))
		}
	}
	gen, err := s.store.Join(ctx, req.Token, string(role), req.Name)
	switch {
	case errors.Is(err, store.ErrTokenInvalid):
		s.logger.Warn("join refused", "role", role, "name", req.Name, "err", err)
		return nil, status.Errorf(codes.Unauthenticated, "join: join token rejected: %v", err)
	case errors.Is(err, store.ErrIdentityTaken):
		return nil, status.Errorf(codes.AlreadyExists, "join: %s %q is already a member of the cluster; remove it first (`berth node remove` / `berth gateway revoke`) or choose another name", role, req.Name)
	case err != nil:
		return nil, storeErr(err)
	}
	id := pki.Identity{Role: role, Name: req.Name, Generation: gen}
	cert, _, err := s.cfg.CA.Sign(req.Csr, id, s.cfg.CertTTL, time.Now())
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "join: csr: %v", err)
	}
	_ = s.store.RecordEvent(ctx, store.Event{Object: string(role) + "/" + req.Name, Reason: "Joined", Message: fmt.Sprintf("%s %s joined the cluster (certificate valid %s)", role, req.Name, s.cfg.CertTTL)})
	s.logger.Info("part joined", "role", role, "name", req.Name, "generation", gen)
	return &pb.CertificateResponse{Certificate: cert, Ca: s.cfg.CA.CertPEM}, nil
}

// validPartName: node names and gateway ids become etcd keys and file
// names, so they are DNS-label-like.
func validPartName(role, name string) error {
	if !api.IsPartName(name) {
		return fmt.Errorf("%s name %q may hold only a-z, 0-9, '-', '_' and '.' (1-63 of them, not . or ..)", role, name)
	}
	return nil
}

// RenewCertificate issues the caller a new certificate for its own
// identity and generation over the key in its request.
func (s *Server) RenewCertificate(ctx context.Context, req *pb.RenewCertificateRequest) (*pb.CertificateResponse, error) {
	id, _, ok := pki.PeerIdentity(ctx)
	if !ok || s.cfg.CA == nil {
		return nil, status.Error(codes.Unauthenticated, "renew: only a part with a cluster certificate can renew it")
	}
	cert, _, err := s.cfg.CA.Sign(req.Csr, id, s.cfg.CertTTL, time.Now())
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "renew: csr: %v", err)
	}
	return &pb.CertificateResponse{Certificate: cert, Ca: s.cfg.CA.CertPEM}, nil
}

// RemoveNode revokes a node's certificates and records the intent; the
// node controller replaces its instances and deletes it.
func (s *Server) RemoveNode(ctx context.Context, req *pb.RemoveNodeRequest) (*pb.RemoveNodeResponse, error) {
	if req.Name == "" {
		return nil, status.Error(codes.InvalidArgument, "remove node: name is required")
	}
	// Counted before the controller, woken by the update, moves them.
	n := len(s.cache.View().NodeInstances(req.Name))
	_, nodeErr := s.store.UpdateNode(ctx, req.Name, func(n *api.Node) bool {
		if n.Removed {
			return false
		}
		n.Removed, n.Cordoned = true, true
		return true
	})
	idErr := s.store.RevokeIdentity(ctx, string(pki.RoleNode), req.Name)
	if idErr == nil && s.cfg.Auth != nil {
		s.cfg.Auth.RefreshIdentity(ctx, string(pki.RoleNode), req.Name)
	}
	if errors.Is(nodeErr, store.ErrNotFound) && errors.Is(idErr, store.ErrNotFound) {
		return nil, status.Errorf(codes.NotFound, "remove node: no node %q", req.Name)
	}
	for _, err := range []error{nodeErr, idErr} {
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return nil, storeErr(err)
		}
	}
	_ = s.store.RecordEvent(ctx, store.Event{Object: "node/" + req.Name, Reason: "NodeRemoved", Type: "Warning", Message: fmt.Sprintf("node %s removed by %s: its certificates are revoked and its %d instances are replaced elsewhere", req.Name, principalOf(ctx), n)})
	s.logger.Warn("node removed", "node", req.Name, "by", principalOf(ctx).String())
	return &pb.RemoveNodeResponse{InstancesReplaced: int32(n)}, nil
}

// RevokeGateway refuses a gateway's certificates from now on.
func (s *Server) RevokeGateway(ctx context.Context, req *pb.RevokeGatewayRequest) (*pb.RevokeGatewayResponse, error) {
	if req.Name == "" {
		return nil, status.Error(codes.InvalidArgument, "revoke gateway: name is required")
	}
	if err := s.store.RevokeIdentity(ctx, string(pki.RoleGateway), req.Name); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return nil, status.Errorf(codes.NotFound, "revoke gateway: no gateway %q ever joined", req.Name)
		}
		return nil, storeErr(err)
	}
	if s.cfg.Auth != nil {
		s.cfg.Auth.RefreshIdentity(ctx, string(pki.RoleGateway), req.Name)
	}
	_ = s.store.RecordEvent(ctx, store.Event{Object: "gateway/" + req.Name, Reason: "GatewayRevoked", Type: "Warning", Message: fmt.Sprintf("gateway %s revoked by %s", req.Name, principalOf(ctx))})
	return &pb.RevokeGatewayResponse{}, nil
}
