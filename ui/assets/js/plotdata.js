// Pure functions from a rollout's history (ui/CONTRACT.md) to what the
// plots draw: aligned columns per revision, step bands, pause bands and
// marks. No DOM here, so node can test it.

/** revisionsOf lists the revisions in the points, canary first. */
export function revisionsOf(history) {
  const seen = new Map();
  for (const p of history.points || []) {
    for (const r of p.revisions || []) if (!seen.has(r.revision)) seen.set(r.revision, r.role);
  }
  if (!seen.size) {
    if (history.revision) seen.set(history.revision, 'canary');
    if (history.stable) seen.set(history.stable, 'stable');
  }
  return [...seen.entries()]
    .map(([revision, role]) => ({ revision: Number(revision), role }))
    .sort((a, b) => (a.role === b.role ? b.revision - a.revision : a.role === 'canary' ? -1 : 1));
}

/**
 * columns builds uPlot's aligned data for one metric: [xs (seconds),
 * ...one column per revision]. pick(revisionPoint) -> number|null.
 */
export function columns(points, revisions, pick) {
  const xs = new Array(points.length);
  const cols = revisions.map(() => new Array(points.length));
  points.forEach((p, i) => {
    xs[i] = p.t_ms / 1000;
    const byRev = new Map((p.revisions || []).map((r) => [Number(r.revision), r]));
    revisions.forEach((rv, j) => {
      const r = byRev.get(rv.revision);
      cols[j][i] = r ? pick(r) : null;
    });
  });
  return [xs, ...cols];
}

/** metrics are the four plots: id, title, unit, what each revision draws. */
export const metrics = [
  { id: 'weight', title: 'Traffic weight', unit: '%', pick: (r) => r.weight * 100 },
  { id: 'rps', title: 'Requests per second', unit: 'req/s', pick: (r) => r.rps },
  { id: 'errors', title: 'Error rate', unit: '%', pick: (r) => (r.rps > 0 ? r.error_rate * 100 : null) },
  { id: 'p99', title: 'p99 latency', unit: 'ms', pick: (r) => (r.p99_ms > 0 ? r.p99_ms : null) },
];

/** threshold of a metric in its plotted unit (0: none). */
export function threshold(history, metricId) {
  const th = history.thresholds || {};
  if (metricId === 'errors') return (th.max_error_rate || 0) * 100;
  if (metricId === 'p99') return th.max_p99_ms || 0;
  return 0;
}

/** endMs is where the plotted rollout ends: its verdict or its newest point. */
export function endMs(history) {
  const pts = history.points || [];
  const last = pts.length ? pts[pts.length - 1].t_ms : history.started_ms || 0;
  return Math.max(last, history.verdict ? history.verdict.t_ms : 0);
}

/** stepBands are [{from, to, label, index}] in ms, one per reached step. */
export function stepBands(history) {
  const steps = (history.steps || []).filter((s) => s.started_ms > 0).sort((a, b) => a.started_ms - b.started_ms);
  const end = endMs(history);
  return steps.map((s, i) => ({
    index: s.index,
    from: s.started_ms,
    to: i + 1 < steps.length ? steps[i + 1].started_ms : end,
    label: 'step ' + (s.index + 1) + ' · ' + Math.round(ratio(s.weight) * 100) + '%',
  }));
}

/** pauseBands are the spans where the points say the rollout was paused. */
export function pauseBands(history) {
  const out = [];
  let open = null;
  for (const p of history.points || []) {
    if (p.phase === 'Paused') {
      if (!open) open = { from: p.t_ms, to: p.t_ms };
      open.to = p.t_ms;
    } else if (open) {
      open.to = p.t_ms;
      out.push(open);
      open = null;
    }
  }
  if (open) out.push(open);
  return out;
}

/** lines are the vertical marks to draw: marks plus the verdict. */
export function lines(history) {
  const out = (history.marks || []).map((m) => ({ t: m.t_ms, kind: m.kind, text: m.text || m.kind }));
  const v = history.verdict;
  if (v && !out.some((m) => m.t === v.t_ms && (m.kind === 'rollback' || m.kind === 'promoted' || m.kind === 'abort'))) {
    out.push({ t: v.t_ms, kind: v.outcome === 'promoted' ? 'promoted' : v.outcome === 'aborted' ? 'abort' : 'rollback', text: verdictTitle(v.outcome) });
  }
  return out.sort((a, b) => a.t - b.t);
}

/** verdictTitle is the heading of a verdict. */
export function verdictTitle(outcome) {
  return { promoted: 'Promoted', rolled_back: 'Rolled back', aborted: 'Aborted' }[outcome] || outcome;
}

/** ratio reads a weight given as 0..1 (or 0..100 from an older server). */
export function ratio(w) {
  w = Number(w) || 0;
  return w > 1 ? w / 100 : w;
}

/** appendPoint adds a live point unless it is older than the newest one. */
export function appendPoint(history, point) {
  const pts = history.points || (history.points = []);
  const last = pts[pts.length - 1];
  if (last && point.t_ms <= last.t_ms) {
    if (point.t_ms === last.t_ms) pts[pts.length - 1] = point;
    return false;
  }
  pts.push(point);
  return true;
}

/** pauseLabel says what a step's pause means. */
export function pauseLabel(pause) {
  if (pause === 'promote' || pause === '') return pause === '' ? 'no pause' : 'until promoted';
  return pause;
}
