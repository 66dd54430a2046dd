package apiserver

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/api/pb"
	"github.com/berth-dev/berth/controlplane/secrets"
	"github.com/berth-dev/berth/controlplane/store"
	"github.com/berth-dev/berth/manifests"
)

// sealSecrets validates the secrets of an apply and seals them; problems
// name the object and field, never a value.
func (s *Server) sealSecrets(in []*pb.Secret) ([]store.SecretRecord, map[string]map[string]bool, []string) {
	var problems []string
	out := make([]store.SecretRecord, 0, len(in))
	keys := map[string]map[string]bool{}
	for i, p := range in {
		sec := api.Secret{Metadata: api.ObjectMeta{Name: p.GetMetadata().GetName(), Namespace: p.GetMetadata().GetNamespace()}, Data: map[string]string{}}
		for k, v := range p.GetData() {
			sec.Data[k] = base64.StdEncoding.EncodeToString(v)
		}
		manifests.DefaultsSecret(&sec)
		where := fmt.Sprintf("secrets[%d] (Secret %s)", i, sec.Key())
		if err := manifests.ValidateSecret(&sec); err != nil {
			problems = append(problems, where+": "+err.Error())
			continue
		}
		if _, dup := keys[sec.Key()]; dup {
			problems = append(problems, where+": the same secret twice")
			continue
		}
		if s.cfg.Secrets == nil {
			problems = append(problems, where+": this control plane has no secrets key (--secrets-key-file)")
			continue
		}
		sealed, err := s.cfg.Secrets.Seal(sec.Key(), p.GetData())
		if err != nil {
			problems = append(problems, where+": "+err.Error())
			continue
		}
		keys[sec.Key()] = map[string]bool{}
		for _, k := range sealed.Keys {
			keys[sec.Key()][k] = true
		}
		out = append(out, store.SecretRecord{Namespace: sec.Metadata.Namespace, Name: sec.Metadata.Name,
			Keys: sealed.Keys, Digest: sealed.Digest, KeyID: sealed.KeyID, Box: sealed.Box})
	}
	return out, keys, problems
}

// checkSecretRefs reports the secrets (and keys) services use that exist
// neither in the store nor in the same request.
func (s *Server) checkSecretRefs(ctx context.Context, svcs []api.Service, declared map[string]map[string]bool) ([]string, error) {
	var problems []string
	stored := map[string]map[string]bool{}
	keysOf := func(ns, name string) (map[string]bool, error) {
		key := ns + "/" + name
		if k, ok := declared[key]; ok {
			return k, nil
		}
		if k, ok := stored[key]; ok {
			return k, nil
		}
		rec, err := s.store.GetSecret(ctx, ns, name)
		if errors.Is(err, store.ErrNotFound) {
			stored[key] = nil
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		k := map[string]bool{}
		for _, name := range rec.Keys {
			k[name] = true
		}
		stored[key] = k
		return k, nil
	}
	for i, svc := range svcs {
		for j, m := range svc.Spec.Secrets {
			keys, err := keysOf(svc.Metadata.Namespace, m.Name)
			if err != nil {
				return nil, err
			}
			if keys == nil {
				problems = append(problems, fmt.Sprintf("services[%d] (Service %s): spec.secrets[%d].name: secret %q does not exist in namespace %s (create it with `berth secret create` or kind: Secret)",
					i, svc.Key(), j, m.Name, svc.Metadata.Namespace))
				continue
			}
			for _, env := range slices.Sorted(maps.Keys(m.Env)) {
				if !keys[m.Env[env]] {
					problems = append(problems, fmt.Sprintf("services[%d] (Service %s): spec.secrets[%d].env.%s: secret %q has no key %q",
						i, svc.Key(), j, env, m.Name, m.Env[env]))
				}
			}
		}
	}
	return problems, nil
}

// secretUsers lists the services of ns that use secret name.
func secretUsers(v *store.View, ns, name string) []string {
	var out []string
	for i := range v.Services {
		svc := &v.Services[i]
		if svc.Metadata.Namespace != ns {
			continue
		}
		for _, m := range svc.Spec.Secrets {
			if m.Name == name {
				out = append(out, svc.Metadata.Name)
				break
			}
		}
	}
	return out
}

// ListSecrets lists secrets: names, keys and users, never values.
func (s *Server) ListSecrets(ctx context.Context, req *pb.ListSecretsRequest) (*pb.ListSecretsResponse, error) {
	recs, err := s.store.ListSecrets(ctx, req.Namespace)
	if err != nil {
		return nil, storeErr(err)
	}
	v := s.cache.View()
	out := &pb.ListSecretsResponse{}
	for _, r := range recs {
		out.Secrets = append(out.Secrets, &pb.Secret{
			Metadata:  &pb.ObjectMeta{Name: r.Name, Namespace: r.Namespace},
			Keys:      r.Keys,
			CreatedAt: timestamppb.New(r.CreatedAt),
			UpdatedAt: timestamppb.New(r.UpdatedAt),
			UsedBy:    secretUsers(v, r.Namespace, r.Name),
		})
	}
	return out, nil
}

// DeleteSecret removes a secret no service uses.
func (s *Server) DeleteSecret(ctx context.Context, req *pb.DeleteSecretRequest) (*pb.DeleteSecretResponse, error) {
	ns := nsOrDefault(req.Namespace)
	if req.Name == "" {
		return nil, status.Error(codes.InvalidArgument, "delete secret: name is required")
	}
	if users := secretUsers(s.cache.View(), ns, req.Name); len(users) > 0 {
		return nil, status.Errorf(codes.FailedPrecondition, "delete secret %s/%s: used by %s (remove it from their spec.secrets first)", ns, req.Name, strings.Join(users, ", "))
	}
	if err := s.store.DeleteSecret(ctx, ns, req.Name); err != nil {
		return nil, storeErr(err)
	}
	_ = s.store.RecordEvent(ctx, store.Event{Namespace: ns, Object: "secret/" + req.Name, Reason: "Deleted", Message: fmt.Sprintf("secret deleted by %s", principalOf(ctx))})
	return &pb.DeleteSecretResponse{}, nil
}

// InstanceSecrets opens the secrets an instance uses, for the node it is
// assigned to and no other: Kubernetes' node authoriser gives a kubelet
// the secrets of its own pods only.
func (s *Server) InstanceSecrets(ctx context.Context, req *pb.InstanceSecretsRequest) (*pb.InstanceSecretsResponse, error) {
	v := s.cache.View()
	var in *api.Instance
	for _, vi := range v.NodeInstances(req.Node) {
		if vi.Instance.ID == req.Instance {
			in = &vi.Instance
			break
		}
	}
	if in == nil {
		// Only a refused call pays for the search of every node.
		for _, vi := range v.Instances {
			if vi.Instance.ID == req.Instance {
				return nil, errNotYours("node %s asked for the secrets of instance %s, which is assigned to node %q", req.Node, req.Instance, vi.Instance.Node)
			}
		}
		return nil, status.Errorf(codes.NotFound, "instance secrets: no instance %q", req.Instance)
	}
	out := &pb.InstanceSecretsResponse{Secrets: map[string]*pb.SecretData{}}
	for _, m := range in.Template.Secrets {
		if _, done := out.Secrets[m.Name]; done {
			continue
		}
		rec, err := s.store.GetSecret(ctx, in.Namespace, m.Name)
		if err != nil {
			return nil, storeErr(err)
		}
		if s.cfg.Secrets == nil {
			return nil, status.Error(codes.FailedPrecondition, "instance secrets: this control plane has no secrets key (--secrets-key-file)")
		}
		data, err := s.cfg.Secrets.Open(rec.Key(), secretsSealed(rec))
		if err != nil {
			return nil, status.Errorf(codes.FailedPrecondition, "instance secrets: %v", err)
		}
		out.Secrets[m.Name] = &pb.SecretData{Data: data}
	}
	return out, nil
}

func secretsSealed(r *store.SecretRecord) secrets.Sealed {
	return secrets.Sealed{Keys: r.Keys, Digest: r.Digest, KeyID: r.KeyID, Box: r.Box}
}
