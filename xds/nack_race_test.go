package xds

import (
	"testing"

	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
)

// A delta client that NACKed version 3 of a type and has been sent nothing
// since: WaitForAck(4) must report the NACK only if that type did not
// change after version 3 (nothing new is coming for it); if it changed, a
// response is due and the wait goes on. Checked on the state directly,
// because on a real stream the window between publishing version 4 and
// sending it is too short to hit reliably.
func TestDeltaNackIsNotReportedWhileAResponseIsDue(t *testing.T) {
	nack := &NackStatus{TypeURL: resource.EndpointType, Version: "3", Error: "bad endpoint"}
	for _, tc := range []struct {
		name       string
		changedAt  []uint64 // versions that changed the endpoint type
		wantNacked bool
	}{
		{"endpoints changed at 4: a response is due", []uint64{1, 3, 4}, false},
		{"endpoints unchanged since the rejected 3", []uint64{1, 3}, true},
	} {
		s := &Server{}
		s.history[viewGateway] = map[string][]uint64{resource.EndpointType: tc.changedAt}
		st := &streamState{nodeID: "gw", delta: true, view: viewGateway, types: map[string]*typeState{}}
		ts := st.typeState(resource.EndpointType)
		ts.applied, ts.blocked, ts.nack, ts.nackNonce, ts.sent = 2, true, nack, "n3", sentState{nonce: "n3", version: "3"}
		got := s.nackedLocked(st, resource.EndpointType, ts, 4) != nil
		if got != tc.wantNacked {
			t.Errorf("%s: nacked = %v, want %v", tc.name, got, tc.wantNacked)
		}
	}
}
