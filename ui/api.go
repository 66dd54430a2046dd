package ui

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/api/pb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// apiTimeout bounds one API call made for a page.
const apiTimeout = 10 * time.Second

var protoJSON = protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func writeProto(w http.ResponseWriter, m proto.Message) {
	b, err := protoJSON.Marshal(m)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "Internal", "encode answer: "+err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(b)
}

// apiError is the body of every error answer.
type apiError struct {
	Error string `json:"error"`
	Code  string `json:"code"`
}

func writeError(w http.ResponseWriter, httpCode int, code, msg string) {
	writeJSON(w, httpCode, apiError{Error: msg, Code: code})
}

// httpStatus maps a gRPC code to the HTTP status the pages see.
func httpStatus(c codes.Code) int {
	switch c {
	case codes.OK:
		return http.StatusOK
	case codes.InvalidArgument, codes.OutOfRange:
		return http.StatusBadRequest
	case codes.Unauthenticated:
		return http.StatusUnauthorized
	case codes.PermissionDenied:
		return http.StatusForbidden
	case codes.NotFound:
		return http.StatusNotFound
	case codes.AlreadyExists, codes.Aborted, codes.FailedPrecondition:
		return http.StatusConflict
	case codes.ResourceExhausted:
		return http.StatusTooManyRequests
	case codes.Unavailable:
		return http.StatusServiceUnavailable
	case codes.DeadlineExceeded:
		return http.StatusGatewayTimeout
	case codes.Unimplemented:
		return http.StatusNotImplemented
	case codes.Canceled:
		return 499
	}
	return http.StatusInternalServerError
}

// writeRPCError answers an API error as JSON. A token the API no longer
// takes (revoked, expired) ends the session.
func (s *Server) writeRPCError(w http.ResponseWriter, sess *session, err error) {
	st := status.Convert(err)
	if st.Code() == codes.Unauthenticated && sess != nil {
		s.sessions.drop(sess.id)
	}
	writeError(w, httpStatus(st.Code()), st.Code().String(), st.Message())
}

// call runs one API call with the session's token.
func call[Req, Resp any](s *Server, w http.ResponseWriter, r *http.Request, sess *session, f func(context.Context, Req, ...grpc.CallOption) (Resp, error), req Req) (Resp, bool) {
	ctx, cancel := context.WithTimeout(r.Context(), apiTimeout)
	defer cancel()
	resp, err := f(ctx, req, pb.TokenCall(sess.token))
	if err != nil {
		s.writeRPCError(w, sess, err)
		return resp, false
	}
	return resp, true
}

// serve answers a proto message from one API call.
func serve[Req any, Resp proto.Message](s *Server, w http.ResponseWriter, r *http.Request, sess *session, f func(context.Context, Req, ...grpc.CallOption) (Resp, error), req Req) {
	if resp, ok := call(s, w, r, sess, f, req); ok {
		writeProto(w, resp)
	}
}

// whoamiResponse is GET /api/whoami.
type whoamiResponse struct {
	Principal string `json:"principal"`
	CSRF      string `json:"csrf"`
	Replica   string `json:"replica"`
	Version   string `json:"version"`
}

func (s *Server) whoami(w http.ResponseWriter, r *http.Request, sess *session) {
	writeJSON(w, http.StatusOK, whoamiResponse{Principal: sess.principal, CSRF: sess.csrf, Replica: s.cfg.Replica, Version: s.cfg.Version})
}

func (s *Server) listServices(w http.ResponseWriter, r *http.Request, sess *session) {
	serve(s, w, r, sess, s.cfg.API.ListServices, &pb.ListServicesRequest{Namespace: r.URL.Query().Get("namespace")})
}

func (s *Server) getService(w http.ResponseWriter, r *http.Request, sess *session) {
	serve(s, w, r, sess, s.cfg.API.GetService, &pb.GetServiceRequest{Namespace: r.PathValue("ns"), Name: r.PathValue("name")})
}

func (s *Server) listInstances(w http.ResponseWriter, r *http.Request, sess *session) {
	serve(s, w, r, sess, s.cfg.API.ListInstances, &pb.ListInstancesRequest{Namespace: r.PathValue("ns"), Service: r.PathValue("name")})
}

func (s *Server) listEvents(w http.ResponseWriter, r *http.Request, sess *session) {
	serve(s, w, r, sess, s.cfg.API.ListEvents, &pb.ListEventsRequest{Namespace: r.URL.Query().Get("namespace")})
}

// serviceEvents: the API matches the object by prefix ("service/web"
// would also give "service/web2"'s): only the service's own are kept.
func (s *Server) serviceEvents(w http.ResponseWriter, r *http.Request, sess *session) {
	object := "service/" + r.PathValue("name")
	resp, ok := call(s, w, r, sess, s.cfg.API.ListEvents, &pb.ListEventsRequest{Namespace: r.PathValue("ns"), Object: object})
	if !ok {
		return
	}
	resp.Events = slices.DeleteFunc(resp.Events, func(e *pb.Event) bool {
		return e.GetObject() != object && !strings.HasPrefix(e.GetObject(), object+"/")
	})
	writeProto(w, resp)
}

func (s *Server) listNodes(w http.ResponseWriter, r *http.Request, sess *session) {
	serve(s, w, r, sess, s.cfg.API.ListNodes, &pb.ListNodesRequest{})
}

func (s *Server) listGateways(w http.ResponseWriter, r *http.Request, sess *session) {
	serve(s, w, r, sess, s.cfg.API.ListGateways, &pb.ListGatewaysRequest{})
}

func (s *Server) rolloutStatus(w http.ResponseWriter, r *http.Request, sess *session) {
	serve(s, w, r, sess, s.cfg.API.RolloutStatus, &pb.RolloutRequest{Namespace: r.PathValue("ns"), Name: r.PathValue("name")})
}

var rolloutActions = map[string]bool{"promote": true, "pause": true, "resume": true, "abort": true}

func (s *Server) rolloutAction(w http.ResponseWriter, r *http.Request, sess *session) {
	action := r.PathValue("action")
	if !rolloutActions[action] {
		writeError(w, http.StatusNotFound, "NotFound", fmt.Sprintf("no rollout action %q: promote, pause, resume or abort", action))
		return
	}
	req := &pb.RolloutActionRequest{Namespace: r.PathValue("ns"), Name: r.PathValue("name"), Action: action}
	if resp, ok := call(s, w, r, sess, s.cfg.API.RolloutAction, req); ok {
		s.logger.Info("rollout action", "action", action, "service", req.Namespace+"/"+req.Name, "principal", sess.principal)
		writeProto(w, resp)
	}
}

// dnsResponse is GET /api/services/{ns}/{name}/dns.
type dnsResponse struct {
	Name    string   `json:"name"`
	Answers []string `json:"answers"`
}

// serviceDNS answers what the cluster DNS answers for the service now,
// from this replica's discovery snapshot through discovery's one rule
// (Service.Serving, which the DNS server answers from). The user must be
// allowed to read the service: the API's GetService decides.
func (s *Server) serviceDNS(w http.ResponseWriter, r *http.Request, sess *session) {
	ns, name := r.PathValue("ns"), r.PathValue("name")
	if _, ok := call(s, w, r, sess, s.cfg.API.GetService, &pb.GetServiceRequest{Namespace: ns, Name: name}); !ok {
		return
	}
	out := dnsResponse{Name: fmt.Sprintf("%s.%s.svc.%s", name, ns, api.ClusterDomain), Answers: []string{}}
	if s.cfg.Discovery != nil {
		if svc := s.cfg.Discovery().Lookup(ns, name); svc != nil {
			for _, rev := range svc.Serving() {
				for _, e := range rev.Endpoints {
					out.Answers = append(out.Answers, e.IP)
				}
			}
		}
	}
	writeJSON(w, http.StatusOK, out)
}

// rolloutHistory answers the recorded history of the service's latest
// rollout; RolloutStatus first, so the API decides who may read it.
func (s *Server) rolloutHistory(w http.ResponseWriter, r *http.Request, sess *session) {
	ns, name := r.PathValue("ns"), r.PathValue("name")
	if _, ok := call(s, w, r, sess, s.cfg.API.RolloutStatus, &pb.RolloutRequest{Namespace: ns, Name: name}); !ok {
		return
	}
	if s.cfg.History == nil {
		writeError(w, http.StatusNotFound, "NotFound", "this replica records no rollout history")
		return
	}
	h, ok := s.cfg.History.History(ns, name)
	if !ok {
		writeError(w, http.StatusNotFound, "NotFound", fmt.Sprintf("no history recorded for the rollout of %s/%s (it ended before this replica started, or over an hour ago)", ns, name))
		return
	}
	writeJSON(w, http.StatusOK, h)
}
