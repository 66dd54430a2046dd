package store

import (
	"context"
	"fmt"

	"github.com/berth-dev/berth/api"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// PutGateways records the xDS clients connected to a control plane
// replica, under lease (the replica's session): if the replica dies, its
// entry goes with the lease and the leader stops waiting for its clients.
func (s *Store) PutGateways(ctx context.Context, replica string, lease clientv3.LeaseID, gateways []api.GatewayStatus) error {
	if gateways == nil {
		gateways = []api.GatewayStatus{}
	}
	if _, err := s.cli.Put(ctx, gatewaysKey(replica), mustJSON(gateways), clientv3.WithLease(lease)); err != nil {
		return fmt.Errorf("store: record gateways of replica %s: %w", replica, err)
	}
	return nil
}

// DeleteGateways removes a replica's entry (on a clean shutdown).
func (s *Store) DeleteGateways(ctx context.Context, replica string) error {
	if _, err := s.cli.Delete(ctx, gatewaysKey(replica)); err != nil {
		return fmt.Errorf("store: remove gateways of replica %s: %w", replica, err)
	}
	return nil
}
