package controlplane

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"

	"github.com/berth-dev/berth/api/pb"
	"github.com/berth-dev/berth/pki"
)

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Secrets: sealed in etcd, given only to the node that runs a consumer,
// never returned by the user API, never logged; refusals name the field.
func TestSecrets(t *testing.T) {
	logs := &lockedBuffer{}
	h := start(t, func(c *Config) {
		c.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	ctx := context.Background()
	const value = "correct-horse-battery-staple"
	secret := &pb.Secret{Metadata: &pb.ObjectMeta{Name: "db", Namespace: "default"}, Data: map[string][]byte{"password": []byte(value), "user": []byte("app")}}
	n1, n2 := twoNodes(t, h)
	web := helloSpec(2)
	web.Metadata.Name, web.Spec.Route = "web", &pb.Route{Hosts: []string{"web.example.test"}}
	web.Spec.Secrets = []*pb.SecretMount{{Name: "db", MountPath: "/run/secrets/db", Env: map[string]string{"DB_PASSWORD": "password"}}}

	// A service naming a secret that does not exist, or a key it lacks.
	_, err := h.berth.Apply(ctx, &pb.ApplyRequest{Services: []*pb.Service{web}})
	refused(t, "a service using a missing secret", err, codes.InvalidArgument, `spec.secrets[0].name: secret "db" does not exist in namespace default`)
	bad := helloSpec(1)
	bad.Spec.Secrets = []*pb.SecretMount{{Name: "db", Env: map[string]string{"X": "nope"}}}
	_, err = h.berth.Apply(ctx, &pb.ApplyRequest{Services: []*pb.Service{bad}, Secrets: []*pb.Secret{secret}})
	refused(t, "a key the secret lacks", err, codes.InvalidArgument, `spec.secrets[0].env.X: secret "db" has no key "nope"`)
	_, err = h.berth.Apply(ctx, &pb.ApplyRequest{Secrets: []*pb.Secret{{Metadata: &pb.ObjectMeta{Name: "evil"}, Data: map[string][]byte{"../../etc/passwd": []byte("x")}}}})
	refused(t, "a key that escapes its directory", err, codes.InvalidArgument, `data["../../etc/passwd"]: key must be letters`)

	// Secret and consumer in one apply; applying the same values again
	// changes nothing.
	resp, err := h.berth.Apply(ctx, &pb.ApplyRequest{Services: []*pb.Service{web}, Secrets: []*pb.Secret{secret}})
	if err != nil {
		t.Fatal(err)
	}
	if resp.Results[0].Kind != "Secret" || resp.Results[0].Action != "created" {
		t.Fatalf("apply results: %v", resp.Results)
	}
	resp, err = h.berth.Apply(ctx, &pb.ApplyRequest{Secrets: []*pb.Secret{secret}})
	if err != nil || resp.Results[0].Action != "unchanged" {
		t.Fatalf("re-apply: %v %v", resp, err)
	}

	// Sealed at rest: etcd holds names and keys, not the value.
	raw, err := h.srv.Store().Client().Get(ctx, "/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range raw.Kvs {
		if bytes.Contains(kv.Value, []byte(value)) {
			t.Fatalf("etcd key %s holds the secret in the clear", kv.Key)
		}
	}
	// The user API lists keys and users, never values.
	l, err := h.berth.ListSecrets(ctx, &pb.ListSecretsRequest{})
	if err != nil || len(l.Secrets) != 1 || strings.Join(l.Secrets[0].Keys, ",") != "password,user" || len(l.Secrets[0].Data) != 0 || strings.Join(l.Secrets[0].UsedBy, ",") != "web" {
		t.Fatalf("list secrets: %v %v", l, err)
	}
	_, err = h.berth.DeleteSecret(ctx, &pb.DeleteSecretRequest{Name: "db"})
	refused(t, "deleting a secret in use", err, codes.FailedPrecondition, "used by web")

	// Only the node running a consumer gets the values.
	eventually(t, "web on both nodes", func() (bool, string) {
		p := placement(h, "web")
		return p[n1] == 1 && p[n2] == 1, ""
	})
	var on1 string
	l2, err := h.berth.ListInstances(ctx, &pb.ListInstancesRequest{Service: "web"})
	if err != nil {
		t.Fatal(err)
	}
	for _, iv := range l2.Instances {
		if iv.Instance.Node == n1 {
			on1 = iv.Instance.Id
		}
	}
	got, err := pb.NewNodeAgentClient(partConn(t, h.srv, pki.RoleNode, n1)).InstanceSecrets(ctx, &pb.InstanceSecretsRequest{Node: n1, Instance: on1})
	if err != nil || string(got.Secrets["db"].GetData()["password"]) != value {
		t.Fatalf("n1 reading its instance's secrets: %v %v", got, err)
	}
	as2 := pb.NewNodeAgentClient(partConn(t, h.srv, pki.RoleNode, n2))
	_, err = as2.InstanceSecrets(ctx, &pb.InstanceSecretsRequest{Node: n2, Instance: on1})
	refused(t, "n2 reading n1's instance's secrets", err, codes.PermissionDenied, "assigned to node \"n1\"")
	_, err = as2.InstanceSecrets(ctx, &pb.InstanceSecretsRequest{Node: n1, Instance: on1})
	refused(t, "n2 speaking as n1", err, codes.PermissionDenied, "")
	_, err = tokenConnBerthAgent(t, h, "viewer").InstanceSecrets(ctx, &pb.InstanceSecretsRequest{Node: n1, Instance: on1})
	refused(t, "a user reading an instance's secrets", err, codes.PermissionDenied, "")

	// A deployer limited to shop cannot write secrets elsewhere; a viewer
	// none at all.
	deployer := pb.NewBerthClient(tokenConn(t, h.srv, createToken(t, h, &pb.CreateTokenRequest{Role: "deployer", Namespaces: []string{"shop"}}).Token))
	_, err = deployer.Apply(ctx, &pb.ApplyRequest{Secrets: []*pb.Secret{secret}})
	refused(t, "deployer writing a secret outside its namespace", err, codes.PermissionDenied, "limited to namespaces shop")
	// Carried by an object of its own namespace, the secret's namespace is
	// still checked.
	_, err = deployer.Apply(ctx, &pb.ApplyRequest{Volumes: []*pb.Volume{{Metadata: &pb.ObjectMeta{Name: "cache", Namespace: "shop"}}}, Secrets: []*pb.Secret{secret}})
	refused(t, "deployer smuggling a secret into another namespace", err, codes.PermissionDenied, "in namespace default")
	inShop := &pb.Secret{Metadata: &pb.ObjectMeta{Name: "db", Namespace: "shop"}, Data: map[string][]byte{"k": []byte("v")}}
	if _, err := deployer.Apply(ctx, &pb.ApplyRequest{Secrets: []*pb.Secret{inShop}}); err != nil {
		t.Fatalf("deployer writing a secret in its namespace: %v", err)
	}
	viewer := pb.NewBerthClient(tokenConn(t, h.srv, createToken(t, h, &pb.CreateTokenRequest{Role: "viewer"}).Token))
	_, err = viewer.Apply(ctx, &pb.ApplyRequest{Secrets: []*pb.Secret{inShop}})
	refused(t, "viewer writing a secret", err, codes.PermissionDenied, "")

	// The service as a user sees it names the secret, not its value.
	d, err := h.berth.GetService(ctx, &pb.GetServiceRequest{Namespace: "default", Name: "web"})
	if err != nil || len(d.GetService().GetSpec().GetSecrets()) != 1 || strings.Contains(d.String(), value) {
		t.Fatalf("describe: %v %v", d, err)
	}
	ev, err := h.berth.ListEvents(ctx, &pb.ListEventsRequest{})
	if err != nil || strings.Contains(ev.String(), value) {
		t.Fatalf("events: %v", err)
	}
	if strings.Contains(logs.String(), value) {
		t.Fatal("the secret's value was logged")
	}
}

func tokenConnBerthAgent(t *testing.T, h *harness, role string) pb.NodeAgentClient {
	t.Helper()
	return pb.NewNodeAgentClient(tokenConn(t, h.srv, createToken(t, h, &pb.CreateTokenRequest{Role: role}).Token))
}
