// Package rollouthistory keeps, on every control plane replica, a bounded
// record of each rollout as it ran: one point a second (the weight of
// each revision, its requests a second, error rate and p99 latency, from
// the same load reports the canary analysis reads), marks where the
// rollout changed state (a step, a pause, a promote, a rollback) and the
// verdict at its end. The dashboard plots it, so a page opened in the
// middle of a rollout shows it from the start.
//
// It is not `berth rollout history` (the revisions of a service, kept in
// etcd): this record lives in memory only, for the last hour of each
// rollout and the last MaxFinished finished ones, and is rebuilt by each
// replica from its own cache and load window (every replica sees the
// whole cluster's load through controlplane/loadshare). No leader, no etcd
// writes. It decides nothing: the analysis' limits come from
// controller.AnalysisThresholds, the "has every gateway applied the
// weight" answer from controller.SyncOf.
package rollouthistory

// History is one rollout as recorded: the JSON the dashboard's rollout
// page reads (ui/CONTRACT.md).
type History struct {
	Namespace  string     `json:"namespace"`
	Service    string     `json:"service"`
	Revision   int64      `json:"revision"`
	Stable     int64      `json:"stable"`
	Strategy   string     `json:"strategy"`
	StartedMs  int64      `json:"started_ms"`
	Steps      []Step     `json:"steps"`
	Thresholds Thresholds `json:"thresholds"`
	Points     []Point    `json:"points"`
	Marks      []Mark     `json:"marks"`
	Verdict    *Verdict   `json:"verdict"`
}

// Step is one canary step of the spec; StartedMs is 0 until reached.
type Step struct {
	Index  int     `json:"index"`
	Weight float64 `json:"weight"`
	// Pause: a duration ("30s"), "promote" (until promoted) or "" (none).
	Pause     string `json:"pause"`
	StartedMs int64  `json:"started_ms"`
}

// Thresholds are the analysis' limits; all zero when the rollout has no
// analysis (nothing is judged, nothing to draw). MaxP99Ms is 0 when
// latency is not judged.
type Thresholds struct {
	MaxErrorRate float64 `json:"max_error_rate"`
	MaxP99Ms     float64 `json:"max_p99_ms"`
	MinRequests  int64   `json:"min_requests"`
}

// Point is the rollout at one second.
type Point struct {
	TMs   int64  `json:"t_ms"`
	Phase string `json:"phase"`
	Step  int    `json:"step"`
	// Weight is the canary's share of traffic, 0..1.
	Weight    float64         `json:"weight"`
	Revisions []RevisionPoint `json:"revisions"`
}

// RevisionPoint is one revision's traffic over the point's window.
type RevisionPoint struct {
	Revision int64 `json:"revision"`
	// Role: "canary" (the new revision) or "stable".
	Role      string  `json:"role"`
	Weight    float64 `json:"weight"`
	RPS       float64 `json:"rps"`
	ErrorRate float64 `json:"error_rate"`
	// P99Ms is 0 when no latency was reported.
	P99Ms float64 `json:"p99_ms"`
}

// Mark kinds.
const (
	MarkStep     = "step"     // a step's weight set
	MarkAck      = "ack"      // every gateway and node DNS applied it
	MarkPause    = "pause"    // paused (by the user, or waiting for promote)
	MarkResume   = "resume"   // resumed by the user
	MarkPromote  = "promote"  // promoted by the user
	MarkAbort    = "abort"    // abort asked by the user
	MarkRollback = "rollback" // the analysis or the deadline rolled back
	MarkPromoted = "promoted" // the canary took all the traffic
)

// Mark is a change of the rollout's state, drawn on the plot.
type Mark struct {
	TMs  int64  `json:"t_ms"`
	Kind string `json:"kind"`
	Text string `json:"text"`
}

// Verdict outcomes.
const (
	OutcomePromoted   = "promoted"
	OutcomeRolledBack = "rolled_back"
	OutcomeAborted    = "aborted"
)

// Verdict is how the rollout ended.
type Verdict struct {
	Outcome string `json:"outcome"`
	Reason  string `json:"reason"`
	TMs     int64  `json:"t_ms"`
}

// Live is the newest point of a rollout in progress.
type Live struct {
	Namespace string `json:"namespace"`
	Service   string `json:"service"`
	Point     Point  `json:"point"`
}
