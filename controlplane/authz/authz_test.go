package authz

import (
	"errors"
	"strings"
	"testing"

	"github.com/berth-dev/berth/pki"
)

func TestAllowed(t *testing.T) {
	admin := Principal{Role: pki.RoleAdmin, Name: "token a"}
	deployer := Principal{Role: pki.RoleDeployer, Name: "token d"}
	shop := Principal{Role: pki.RoleDeployer, Name: "token s", Namespaces: []string{"shop"}}
	viewer := Principal{Role: pki.RoleViewer, Name: "token v"}
	shopViewer := Principal{Role: pki.RoleViewer, Name: "token sv", Namespaces: []string{"shop"}}
	n1 := Principal{Role: pki.RoleNode, Name: "n1"}
	gw := Principal{Role: pki.RoleGateway, Name: "gw"}
	replica := Principal{Role: pki.RoleReplica, Name: "r1"}

	for _, tc := range []struct {
		p    Principal
		r    Request
		deny string // "" = allowed; else a substring of the refusal
	}{
		// Nobody: only a join.
		{Anonymous, Request{Verb: Read}, "no credential"},
		{Anonymous, Request{Verb: NodeSelf, Node: "n1"}, "no credential"},
		{Anonymous, Request{Verb: Join}, ""},

		// Admin: every user verb, no part's verb.
		{admin, Request{Verb: Write, Namespace: "x"}, ""},
		{admin, Request{Verb: Read, AllNamespaces: true}, ""},
		{admin, Request{Verb: TokenAdmin}, ""},
		{admin, Request{Verb: Privileged, Namespace: "x"}, ""},
		{admin, Request{Verb: ImageAdmin}, ""},
		{admin, Request{Verb: ImageFetch}, ""},
		{admin, Request{Verb: NodeSelf, Node: "n1"}, "part's certificate"},
		{admin, Request{Verb: NodeWatch}, "part's certificate"},
		{admin, Request{Verb: Renew}, "part's certificate"},

		// Deployer: deploys, cannot administer.
		{deployer, Request{Verb: Write, Namespace: "default"}, ""},
		{deployer, Request{Verb: Rollout, Namespace: "default"}, ""},
		{deployer, Request{Verb: Exec, Namespace: "default"}, ""},
		{deployer, Request{Verb: ImageLoad}, ""},
		{deployer, Request{Verb: Read, AllNamespaces: true}, ""},
		{deployer, Request{Verb: TokenAdmin}, `does not include "token.admin"`},
		{deployer, Request{Verb: NodeAdmin}, `does not include "node.admin"`},
		{deployer, Request{Verb: ImageAdmin}, `does not include "image.admin"`},
		{deployer, Request{Verb: Privileged, Namespace: "default"}, `does not include "privileged"`},
		{deployer, Request{Verb: GatewayAdmin}, "does not include"},
		{deployer, Request{Verb: NodeSelf, Node: "n1"}, "does not include"},

		// A deployer limited to shop.
		{shop, Request{Verb: Write, Namespace: "shop"}, ""},
		{shop, Request{Verb: Read, Namespace: "shop"}, ""},
		{shop, Request{Verb: Write, Namespace: "default"}, "limited to namespaces shop"},
		{shop, Request{Verb: Read, Namespace: "other"}, "limited to namespaces shop"},
		{shop, Request{Verb: Read, AllNamespaces: true}, "name one"},
		// Cluster-wide reads (nodes, images) stay open to a limited token.
		{shop, Request{Verb: Read}, ""},

		// Viewer: reads and logs only.
		{viewer, Request{Verb: Read, Namespace: "default"}, ""},
		{viewer, Request{Verb: Logs, Namespace: "default"}, ""},
		{viewer, Request{Verb: Write, Namespace: "default"}, `does not include "write"`},
		{viewer, Request{Verb: Rollout, Namespace: "default"}, "does not include"},
		{viewer, Request{Verb: Exec, Namespace: "default"}, "does not include"},
		{viewer, Request{Verb: ImageLoad}, "does not include"},
		{shopViewer, Request{Verb: Logs, Namespace: "default"}, "limited to namespaces shop"},

		// A node speaks for itself only, and never as a user.
		{n1, Request{Verb: NodeSelf, Node: "n1"}, ""},
		{n1, Request{Verb: NodeSelf, Node: "n2"}, "only for itself"},
		{n1, Request{Verb: NodeSelf, Node: ""}, "only for itself"},
		{n1, Request{Verb: NodeWatch}, ""},
		{n1, Request{Verb: ImageFetch}, ""},
		{n1, Request{Verb: Renew}, ""},
		{n1, Request{Verb: Read}, "only the node's own calls"},
		{n1, Request{Verb: Write, Namespace: "default"}, "only the node's own calls"},
		{n1, Request{Verb: TokenAdmin}, "only the node's own calls"},

		// A gateway: xDS only (checked by the xDS server) and renewal.
		{gw, Request{Verb: Renew}, ""},
		{gw, Request{Verb: Read}, "only xDS"},
		{gw, Request{Verb: NodeSelf, Node: "gw"}, "only xDS"},
		{gw, Request{Verb: ImageFetch}, "only xDS"},

		// A replica: image fetches between replicas.
		{replica, Request{Verb: ImageFetch}, ""},
		{replica, Request{Verb: Write, Namespace: "default"}, "only image fetches"},
		{replica, Request{Verb: NodeSelf, Node: "n1"}, "only image fetches"},
		// ... and joining etcd, which only a replica may: an etcd member
		// receives everything, secrets (sealed) included.
		{replica, Request{Verb: MemberJoin}, ""},
		{replica, Request{Verb: ControlPlaneAdmin}, "only image fetches"},
		{admin, Request{Verb: MemberJoin}, "replica's certificate"},
		{admin, Request{Verb: ControlPlaneAdmin}, ""},
		{deployer, Request{Verb: ControlPlaneAdmin}, `does not include "controlplane.admin"`},
		{viewer, Request{Verb: MemberJoin}, "does not include"},
		{n1, Request{Verb: MemberJoin}, "only the node's own calls"},
		{gw, Request{Verb: MemberJoin}, "only xDS"},

		{Principal{Role: "root", Name: "x"}, Request{Verb: Read}, "unknown role"},
	} {
		err := Allowed(tc.p, tc.r)
		switch {
		case tc.deny == "" && err != nil:
			t.Errorf("%s, %s: refused: %v", tc.p, tc.r, err)
		case tc.deny != "" && err == nil:
			t.Errorf("%s, %s: allowed, want refused (%s)", tc.p, tc.r, tc.deny)
		case tc.deny != "" && !strings.Contains(err.Error(), tc.deny):
			t.Errorf("%s, %s: refused with %q, want it to say %q", tc.p, tc.r, err, tc.deny)
		}
		var d *Denied
		if err != nil && !errors.As(err, &d) {
			t.Errorf("%s, %s: error %T is not a *Denied", tc.p, tc.r, err)
		}
	}
}

// A refusal names the caller and the permission.
func TestDeniedNamesCallerAndPermission(t *testing.T) {
	err := Allowed(Principal{Role: pki.RoleViewer, Name: "token 1a2b (ci)"}, Request{Verb: Write, Namespace: "shop"})
	want := `permission denied: viewer token 1a2b (ci) may not write in namespace shop: the viewer role does not include "write"`
	if err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Fatalf("got %v\nwant prefix %s", err, want)
	}
}
