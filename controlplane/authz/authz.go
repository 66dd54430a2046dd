// Package authz decides who may do what, in one pure function: Allowed.
//
// A Principal is who calls: a user with an API token (role admin,
// deployer or viewer, maybe limited to namespaces), a part with a
// certificate from the cluster CA (replica, node or gateway, named), or
// nobody. A Request is what the call does: a verb, the namespace it acts
// in and, for a node's own calls, the node it speaks for. The API server
// maps each RPC to its Requests (apiserver/authz.go, with a test that no
// RPC is left out) and asks Allowed; state-dependent facts (which
// instances a node runs, which images they need) are looked up by the
// caller and passed in as the Request's Node.
//
// The package decides; it authenticates nothing (pki and the API server
// do) and reads no state.
package authz

import (
	"fmt"
	"slices"
	"strings"

	"github.com/berth-dev/berth/pki"
)

// Principal is an authenticated caller.
type Principal struct {
	// Role is "" for an unauthenticated caller.
	Role pki.Role
	// Name: the node's or gateway's name, the replica's, or the token's
	// id and description for a user.
	Name string
	// Namespaces limits a deployer or viewer (empty: every namespace).
	Namespaces []string
}

// Anonymous is a caller that presented no credential.
var Anonymous = Principal{}

func (p Principal) String() string {
	if p.Role == "" {
		return "anonymous caller"
	}
	s := string(p.Role) + " " + p.Name
	if len(p.Namespaces) > 0 {
		s += " (namespaces " + strings.Join(p.Namespaces, ",") + ")"
	}
	return s
}

// IsUser reports whether p is a user (holds an API token).
func (p Principal) IsUser() bool {
	return p.Role == pki.RoleAdmin || p.Role == pki.RoleDeployer || p.Role == pki.RoleViewer
}

// Verb is what a call does.
type Verb string

// Verbs, from the least to the most powerful for users, then the parts'.
const (
	// Read: get, list, describe, events, status, rollout status.
	Read Verb = "read"
	// Logs: container logs.
	Logs Verb = "logs"
	// Write: apply, delete, volume delete and release.
	Write Verb = "write"
	// Rollout: promote, pause, resume, abort, undo.
	Rollout Verb = "rollout"
	// Exec: commands in a container.
	Exec Verb = "exec"
	// ImageLoad: upload an image (cluster-wide: images are shared).
	ImageLoad Verb = "image.load"
	// ImageAdmin: re-point an existing tag, remove an image.
	ImageAdmin Verb = "image.admin"
	// Privileged: apply a spec with fields only admins may set (added
	// capabilities).
	Privileged Verb = "privileged"
	// NodeAdmin: cordon, drain, remove nodes.
	NodeAdmin Verb = "node.admin"
	// TokenAdmin: create, list and revoke tokens (join tokens included).
	TokenAdmin Verb = "token.admin"
	// GatewayAdmin: revoke gateways.
	GatewayAdmin Verb = "gateway.admin"
	// ControlPlaneAdmin: remove a control plane replica (its etcd member),
	// save a snapshot of etcd (it holds every secret, sealed, and the
	// sealed CA key).
	ControlPlaneAdmin Verb = "controlplane.admin"

	// NodeSelf: a node's own calls (register, heartbeat, status reports,
	// assignments, discovery, node list, volume reports, image fetches for
	// its assignments). Request.Node is the node the call speaks for.
	NodeSelf Verb = "node.self"
	// NodeWatch: following the node list (every node routes to every
	// other node's pod subnet).
	NodeWatch Verb = "node.watch"
	// ImageFetch: a node fetching an uploaded image its assignments need
	// (the API server checks which), one control plane replica fetching
	// an upload from another, or an admin reading an upload back.
	ImageFetch Verb = "image.fetch"
	// Renew: a part renewing its own certificate.
	Renew Verb = "renew"
	// Join: exchanging a join token for a certificate (the token is the
	// credential; anyone may try).
	Join Verb = "join"
	// MemberJoin: a replica adding its own etcd member to the cluster and
	// having it promoted. Only a replica certificate, which only a holder
	// of the cluster CA's key can make, may: a member receives everything.
	MemberJoin Verb = "controlplane.join"
)

// Request is one permission a call needs.
type Request struct {
	Verb Verb
	// Namespace the call acts in; "" for cluster-wide objects (nodes,
	// images, gateways) and for a list over every namespace.
	Namespace string
	// AllNamespaces marks a read over every namespace.
	AllNamespaces bool
	// Node is the node a NodeSelf call speaks for.
	Node string
}

func (r Request) String() string {
	s := string(r.Verb)
	switch {
	case r.Node != "":
		s += " for node " + r.Node
	case r.AllNamespaces:
		s += " in every namespace"
	case r.Namespace != "":
		s += " in namespace " + r.Namespace
	}
	return s
}

// Denied is the error of a refused request: it names the caller and the
// permission that was missing.
type Denied struct {
	Principal Principal
	Request   Request
	Reason    string
}

func (d *Denied) Error() string {
	return fmt.Sprintf("permission denied: %s may not %s: %s", d.Principal, d.Request, d.Reason)
}

// userVerbs lists what each user role may do.
var userVerbs = map[pki.Role][]Verb{
	pki.RoleViewer:   {Read, Logs},
	pki.RoleDeployer: {Read, Logs, Write, Rollout, Exec, ImageLoad},
}

// Allowed decides one request. nil means allowed; otherwise a *Denied.
func Allowed(p Principal, r Request) error {
	deny := func(reason string) error { return &Denied{Principal: p, Request: r, Reason: reason} }
	if r.Verb == Join {
		return nil
	}
	switch p.Role {
	case "":
		return deny("no credential: present an API token (berth --config, or BERTH_TOKEN) or a cluster certificate")
	case pki.RoleAdmin:
		switch r.Verb {
		case NodeSelf, NodeWatch, Renew:
			return deny("needs a part's certificate, not a user token")
		case MemberJoin:
			return deny("needs a control plane replica's certificate: start `berth server --join` with the cluster CA")
		}
		return nil
	case pki.RoleDeployer, pki.RoleViewer:
		if !slices.Contains(userVerbs[p.Role], r.Verb) {
			return deny(fmt.Sprintf("the %s role does not include %q (%s)", p.Role, r.Verb, rolesWith(r.Verb)))
		}
		if len(p.Namespaces) > 0 {
			if r.AllNamespaces {
				return deny("the token is limited to namespaces " + strings.Join(p.Namespaces, ",") + ": name one")
			}
			if r.Namespace != "" && !slices.Contains(p.Namespaces, r.Namespace) {
				return deny("the token is limited to namespaces " + strings.Join(p.Namespaces, ","))
			}
		}
		return nil
	case pki.RoleNode:
		switch r.Verb {
		case Renew, NodeWatch, ImageFetch:
			return nil
		case NodeSelf:
			if r.Node == p.Name {
				return nil
			}
			return deny("a node speaks only for itself")
		}
		return deny("a node certificate allows only the node's own calls")
	case pki.RoleReplica:
		switch r.Verb {
		case ImageFetch, Renew, MemberJoin:
			return nil
		}
		return deny("a replica certificate allows only image fetches between replicas and joining etcd")
	case pki.RoleGateway:
		if r.Verb == Renew {
			return nil
		}
		return deny("a gateway certificate allows only xDS and load reports")
	}
	return deny("unknown role " + string(p.Role))
}

func rolesWith(v Verb) string {
	var roles []string
	for _, r := range []pki.Role{pki.RoleViewer, pki.RoleDeployer} {
		if slices.Contains(userVerbs[r], v) {
			roles = append(roles, string(r))
		}
	}
	roles = append(roles, string(pki.RoleAdmin))
	return "needs role " + strings.Join(roles, " or ")
}
