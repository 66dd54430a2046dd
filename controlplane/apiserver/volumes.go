package apiserver

import (
	"context"
	"fmt"
	"sort"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/api/pb"
	"github.com/berth-dev/berth/controlplane/store"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// volumeUsers lists the instances that mount a volume and still exist
// (running, draining or stopping).
func volumeUsers(v *store.View, key string) []string {
	var out []string
	for _, vi := range v.Instances {
		in := vi.Instance
		for _, name := range in.Template.VolumeNames(in.Namespace, in.Ordinal) {
			if name == key {
				out = append(out, in.ID)
				break
			}
		}
	}
	sort.Strings(out)
	return out
}

func (s *Server) volumeView(v *store.View, vol *api.Volume) *pb.VolumeView {
	return &pb.VolumeView{Volume: pb.FromVolume(vol), UsedBy: volumeUsers(v, vol.Key())}
}

// ListVolumes lists volumes and who mounts them.
func (s *Server) ListVolumes(ctx context.Context, req *pb.ListVolumesRequest) (*pb.ListVolumesResponse, error) {
	v := s.cache.View()
	keys := make([]string, 0, len(v.Volumes))
	for k, vv := range v.Volumes {
		if req.Namespace == "" || vv.Volume.Metadata.Namespace == req.Namespace {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	out := &pb.ListVolumesResponse{}
	for _, k := range keys {
		vol := v.Volumes[k].Volume
		out.Volumes = append(out.Volumes, s.volumeView(v, &vol))
	}
	return out, nil
}

// GetVolume describes a volume.
func (s *Server) GetVolume(ctx context.Context, req *pb.GetVolumeRequest) (*pb.VolumeDetail, error) {
	ns := nsOrDefault(req.Namespace)
	v := s.cache.View()
	vv, ok := v.Volumes[ns+"/"+req.Name]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "volume %s/%s not found", ns, req.Name)
	}
	out := &pb.VolumeDetail{View: s.volumeView(v, &vv.Volume)}
	events, err := s.store.ListEvents(ctx, ns, "volume/"+req.Name, 50)
	if err != nil {
		return nil, storeErr(err)
	}
	for _, ev := range events {
		out.Events = append(out.Events, fromEvent(ev))
	}
	return out, nil
}

// DeleteVolume removes a volume and its data. It is refused while any
// instance mounts it: deleting a service never deletes its volumes, and
// removing one is always an explicit, safe step.
func (s *Server) DeleteVolume(ctx context.Context, req *pb.DeleteVolumeRequest) (*pb.DeleteVolumeResponse, error) {
	ns := nsOrDefault(req.Namespace)
	key := ns + "/" + req.Name
	v := s.cache.View()
	vv, ok := v.Volumes[key]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "volume %s not found", key)
	}
	if users := volumeUsers(v, key); len(users) > 0 {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is in use by %v: delete or change those services first", key, users)
	}
	vol := vv.Volume
	change := store.VolumeChange{Volume: vol, ModRevision: vv.ModRevision}
	msg := "volume deleted"
	if vol.Status.Node == "" {
		change.Delete = true // no data anywhere
	} else {
		change.Volume.Status.Deleting = true
		msg = "volume deleting: node " + vol.Status.Node + " removes its data"
	}
	if err := s.store.Commit(ctx, nil, []store.VolumeChange{change}); err != nil {
		return nil, storeErr(err)
	}
	_ = s.store.RecordEvent(ctx, store.Event{Namespace: ns, Object: "volume/" + req.Name, Reason: "Deleted", Message: msg})
	return &pb.DeleteVolumeResponse{}, nil
}

// ReleaseVolume unbinds a volume from its node: its consumers may then be
// placed elsewhere, on an empty directory. For a node lost for good.
func (s *Server) ReleaseVolume(ctx context.Context, req *pb.ReleaseVolumeRequest) (*pb.ReleaseVolumeResponse, error) {
	ns := nsOrDefault(req.Namespace)
	key := ns + "/" + req.Name
	vv, ok := s.cache.View().Volumes[key]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "volume %s not found", key)
	}
	vol := vv.Volume
	prev := vol.Status.Node
	if prev == "" {
		prev = vol.Spec.Node
	}
	vol.Status.Node, vol.Spec.Node = "", ""
	if err := s.store.Commit(ctx, nil, []store.VolumeChange{{Volume: vol, ModRevision: vv.ModRevision}}); err != nil {
		return nil, storeErr(err)
	}
	_ = s.store.RecordEvent(ctx, store.Event{Namespace: ns, Object: "volume/" + req.Name, Reason: "Released", Type: "Warning",
		Message: fmt.Sprintf("volume released from node %q: its next consumer starts on an empty directory", prev)})
	return &pb.ReleaseVolumeResponse{PreviousNode: prev}, nil
}

// VolumeDeleted: a node removed a deleting volume's data; forget it.
func (s *Server) VolumeDeleted(ctx context.Context, req *pb.VolumeDeletedRequest) (*pb.VolumeDeletedResponse, error) {
	key := nsOrDefault(req.Namespace) + "/" + req.Name
	vv, ok := s.cache.View().Volumes[key]
	if !ok {
		return &pb.VolumeDeletedResponse{}, nil
	}
	if !vv.Volume.Status.Deleting || vv.Volume.Status.Node != req.Node {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is not being deleted on node %s", key, req.Node)
	}
	if err := s.store.Commit(ctx, nil, []store.VolumeChange{{Volume: vv.Volume, ModRevision: vv.ModRevision, Delete: true}}); err != nil {
		return nil, storeErr(err)
	}
	return &pb.VolumeDeletedResponse{}, nil
}

// checkVolumeRefs reports the named volumes services mount that exist
// neither in the store nor in the same request.
func checkVolumeRefs(v *store.View, svcs []api.Service, vols []api.Volume) []string {
	declared := map[string]bool{}
	for _, vol := range vols {
		declared[vol.Key()] = true
	}
	var problems []string
	for i, svc := range svcs {
		for j, m := range svc.Spec.Volumes {
			if m.Tmpfs {
				continue
			}
			key := svc.Metadata.Namespace + "/" + m.Name
			vv, stored := v.Volumes[key]
			switch {
			case declared[key]:
			case !stored:
				problems = append(problems, fmt.Sprintf("services[%d] (Service %s): spec.volumes[%d].name: volume %q does not exist in namespace %s (declare it with kind: Volume)",
					i, svc.Key(), j, m.Name, svc.Metadata.Namespace))
			case vv.Volume.Status.Deleting:
				problems = append(problems, fmt.Sprintf("services[%d] (Service %s): spec.volumes[%d].name: volume %q is being deleted", i, svc.Key(), j, m.Name))
			}
		}
	}
	return problems
}
