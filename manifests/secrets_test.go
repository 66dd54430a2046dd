package manifests

import (
	"strings"
	"testing"
)

func TestSecretManifests(t *testing.T) {
	ok := `apiVersion: berth.dev/v1
kind: Secret
metadata: {name: db, namespace: shop}
data: {password: aHVudGVyMg==}
stringData: {user: app}
---
apiVersion: berth.dev/v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  image: berth.local/hello:v1
  env: {MODE: prod}
  secrets: [{name: db, mountPath: /run/secrets/db, env: {DB_PASSWORD: password}}]
`
	objs, err := ParseObjects("ok.yaml", []byte(ok))
	if err != nil {
		t.Fatal(err)
	}
	if len(objs.Secrets) != 1 || len(objs.Services) != 1 {
		t.Fatalf("objects: %+v", objs)
	}
	vals, err := objs.Secrets[0].Values()
	if err != nil || string(vals["password"]) != "hunter2" || string(vals["user"]) != "app" {
		t.Fatalf("values: %v %v", vals, err)
	}
	if m := objs.Services[0].Spec.Secrets[0]; m.Name != "db" || m.Env["DB_PASSWORD"] != "password" {
		t.Fatalf("secret mount: %+v", m)
	}

	for _, tc := range []struct{ doc, want string }{
		{"kind: Secret\nmetadata: {name: db}\ndata: {password: not-base64!}\n", "data.password: must be base64"},
		{"kind: Secret\nmetadata: {name: db}\nstringData: {../x: v}\n", `stringData["../x"]: key must be letters`},
		{"kind: Secret\nmetadata: {name: db}\nstringData: {..: v}\n", `key must be letters`},
		{"kind: Secret\nmetadata: {name: db}\n", "a secret needs at least one key"},
		{"kind: Secret\nmetadata: {name: db}\nstringData: {k: " + strings.Repeat("x", MaxSecretBytes) + "}\n", "more than the 524288 a secret may hold"},
		{"kind: Secret\nmetadata: {name: Bad_Name}\nstringData: {k: v}\n", "metadata.name"},
		{"kind: Service\nmetadata: {name: web}\nspec:\n  image: x\n  secrets: [{name: db}]\n", "spec.secrets[0]: needs a mountPath, env, or both"},
		{"kind: Service\nmetadata: {name: web}\nspec:\n  image: x\n  secrets: [{name: db, env: {1BAD: k}}]\n", "spec.secrets[0].env.1BAD: environment variable name"},
		{"kind: Service\nmetadata: {name: web}\nspec:\n  image: x\n  env: {A: b}\n  secrets: [{name: db, env: {A: k}}]\n", `is also set in spec.env`},
		{"kind: Service\nmetadata: {name: web}\nspec:\n  image: x\n  volumes: [{name: s, mountPath: /s, tmpfs: true}]\n  secrets: [{name: db, mountPath: /s}]\n", "spec.secrets[0].mountPath: /s is already mounted"},
		{"kind: Service\nmetadata: {name: web}\nspec:\n  image: x\n  secrets: [{name: db, mountPath: /a}, {name: db, mountPath: /b}]\n", `secret "db" is already given`},
		{"kind: Service\nmetadata: {name: web}\nspec:\n  image: x\n  resources: {pids: -1}\n", "spec.resources.pids"},
	} {
		_, err := ParseObjects("bad.yaml", []byte("apiVersion: berth.dev/v1\n"+tc.doc))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want an error saying %q", tc.doc, err, tc.want)
		}
	}
}
