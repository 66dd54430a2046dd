// The rollout page: live plots of the weight, requests per second, error
// rate and p99 latency of each revision over the whole rollout, its steps,
// pauses and marks, the analysis thresholds, the verdict, and the
// promote/pause/resume/abort buttons.
//
// It opens with the recorded history (/history) and appends the stream's
// `point` events; it fetches the status (pause left, gateways and DNS in
// sync) and the history again when the rollout changes state.
import { get, post, ApiError } from '../api.js';
import { h, replace, badge, card } from '../dom.js';
import { int, pct, phaseTone, active, clock, ms, num } from '../format.js';
import { revisionsOf, appendPoint, verdictTitle, ratio, pauseLabel, lines } from '../plotdata.js';
import { RolloutCharts } from '../plots.js';
import { header, serviceHref } from './common.js';
import { confirmAction } from '../confirm.js';

const actions = [
  { id: 'promote', label: 'Promote', tone: 'primary', when: ['Progressing', 'Paused'], what: 'The canary moves on to its next step now, skipping what is left of this step\u2019s pause (at the last step it takes all the traffic).' },
  { id: 'pause', label: 'Pause', tone: 'default', when: ['Progressing'], what: 'The canary stays at its current weight until the rollout is resumed.' },
  { id: 'resume', label: 'Resume', tone: 'default', when: ['Paused'], what: 'The rollout continues from its current step.' },
  { id: 'abort', label: 'Abort', tone: 'danger', when: ['Progressing', 'Paused'], what: 'All traffic goes back to the stable revision and the canary\u2019s instances are stopped.' },
];

export function rolloutPage({ main, params, setTitle }) {
  const { ns, name } = params;
  const base = '/rollouts/' + encodeURIComponent(ns) + '/' + encodeURIComponent(name);
  setTitle('Rollout ' + name);

  let status = null; // Rollout (RolloutStatus)
  let history = null; // History JSON, points appended live
  let disposed = false;
  let lastStatusAt = 0;

  // Layout: everything has a stable id for the browser test.
  const verdict = h('div', { id: 'rollout-verdict', class: 'verdict', hidden: true, role: 'status', 'aria-live': 'assertive' });
  const summary = h('div', { id: 'rollout-summary', class: 'stats', 'aria-live': 'polite' });
  const steps = h('ol', { id: 'rollout-steps', class: 'steps', 'aria-label': 'Canary steps' });
  const actionError = h('div', { id: 'action-error', class: 'alert alert-bad', role: 'alert', hidden: true });
  const actionOk = h('div', { id: 'action-result', class: 'alert alert-ok', role: 'status', hidden: true });
  const buttons = actions.map((a) =>
    h('button', { type: 'button', id: 'btn-' + a.id, 'data-action': a.id, class: ['button', 'button-' + a.tone], disabled: true, onclick: () => act(a) }, a.label));
  const chartsEl = h('div', { id: 'rollout-charts', class: 'charts', 'data-points': '0', 'data-live-points': '0' });
  const chartNote = h('p', { id: 'chart-note', class: 'muted', hidden: true });
  const legend = h('div', { class: 'mark-legend', 'aria-hidden': 'true' },
    legendItem('step', 'step (shaded: alternate steps)'), legendItem('pause', 'paused'), legendItem('ack', 'gateways + DNS applied'), legendItem('threshold', 'analysis limit'), legendItem('bad', 'rollback / abort'), legendItem('ok', 'promote'));
  const marksEl = h('div', { id: 'rollout-marks' });
  const sync = h('div', { id: 'rollout-sync' });
  const title = h('span', { id: 'rollout-title' }, name);
  const sub = h('span', { id: 'rollout-sub' }, 'Rollout of ', h('a', { href: serviceHref(ns, name) }, ns + '/' + name));
  const loadError = h('div', { id: 'rollout-error' });

  main.append(
    header(title, sub, h('a', { class: 'button button-ghost', href: serviceHref(ns, name) }, 'Service ›')),
    loadError,
    verdict,
    h('section', { class: 'card rollout-head', 'aria-label': 'Rollout status' },
      summary,
      steps,
      h('div', { class: 'actions', role: 'group', 'aria-label': 'Rollout actions' }, buttons),
      actionError,
      actionOk),
    h('section', { class: 'card', 'aria-label': 'Live plots' },
      h('div', { class: 'card-title-row' }, h('h2', { class: 'card-title' }, 'Over the rollout'), legend),
      chartNote,
      chartsEl),
    h('div', { class: 'grid-2' }, card('Timeline', marksEl), card('Gateways and DNS', sync)));

  const charts = new RolloutCharts(chartsEl);

  async function loadStatus() {
    lastStatusAt = Date.now();
    try {
      status = await get(base);
      replace(loadError);
    } catch (err) {
      status = null;
      if (err instanceof ApiError && err.status === 404) {
        replace(loadError, h('div', { class: 'alert alert-info', id: 'no-rollout' }, 'No rollout recorded for ', h('code', null, ns + '/' + name), ' yet. This page follows it as soon as one starts.'));
      } else replace(loadError, h('div', { class: 'alert alert-bad', role: 'alert' }, 'Could not load the rollout: ', err.message));
    }
    if (!disposed) renderStatus();
    awaitVerdict();
  }

  // The status can say a rollout ended before this replica's recorder has
  // seen it (both follow the cluster on their own): the history fetched
  // then has no verdict, no final point and no rollback mark, and no live
  // point comes after an end. Ask again, a few times, until it has them.
  let verdictTries = 0;
  function awaitVerdict() {
    if (!status || !history || active(status.phase) || history.verdict || history.revision !== int(status.revision)) {
      verdictTries = 0;
      return;
    }
    if (verdictTries < 20) {
      verdictTries++;
      soon(loadHistory, hi, 250);
    }
  }

  async function loadHistory() {
    try {
      history = await get(base + '/history');
      chartNote.hidden = true;
    } catch (err) {
      if (!history) {
        chartNote.hidden = false;
        chartNote.textContent = err instanceof ApiError && err.status === 404
          ? 'No plot recorded for this rollout on this replica (the record is kept in memory for the last hour); it starts with the next rollout.'
          : 'Could not load the plot: ' + err.message;
      }
      return;
    }
    if (!disposed) renderHistory();
    awaitVerdict();
  }

  let shownRevision = 0;
  function renderHistory() {
    if (!history) return;
    if (shownRevision && history.revision !== shownRevision) {
      // A new rollout: the last one's action result is not about it.
      actionError.hidden = true;
      actionOk.hidden = true;
    }
    shownRevision = history.revision;
    const revisions = revisionsOf(history);
    charts.setHistory(history, revisions);
    chartNote.hidden = (history.points || []).length > 0;
    if (!chartNote.hidden) chartNote.textContent = 'Waiting for the first point…';
    renderVerdict();
    renderSteps();
    renderMarks();
    renderSummary();
  }

  function renderVerdict() {
    const v = history && history.verdict;
    const phase = status && status.phase;
    let outcome = v ? v.outcome : null;
    let reason = v ? v.reason : '';
    // A rollout that ended before this replica recorded it: its status says how.
    if (!outcome && phase && !active(phase) && status.strategy === 'canary' && (!history || history.revision === int(status.revision))) {
      outcome = { Succeeded: 'promoted', RolledBack: 'rolled_back', Aborted: 'aborted' }[phase] || null;
      reason = status.message || '';
    }
    if (!outcome) {
      verdict.hidden = true;
      verdict.removeAttribute('data-outcome');
      return;
    }
    verdict.hidden = false;
    verdict.dataset.outcome = outcome;
    verdict.className = 'verdict verdict-' + outcome;
    const icon = outcome === 'promoted' ? '✓' : outcome === 'aborted' ? '■' : '↺';
    const rev = history ? history.revision : int(status.revision);
    const stable = history ? history.stable : int(status.stable);
    replace(verdict,
      h('div', { class: 'verdict-icon', 'aria-hidden': 'true' }, icon),
      h('div', null,
        h('div', { class: 'verdict-title', id: 'verdict-title' }, verdictTitle(outcome),
          h('span', { class: 'verdict-revs' }, outcome === 'promoted' ? ' · r' + rev + ' serves all traffic' : ' · r' + stable + ' serves all traffic, r' + rev + ' was stopped')),
        reason ? h('div', { class: 'verdict-reason', id: 'verdict-reason' }, reason) : null,
        v && v.t_ms ? h('div', { class: 'verdict-time' }, 'at ', clock(v.t_ms)) : null));
  }

  function lastPoint() {
    const pts = (history && history.points) || [];
    return pts.length ? pts[pts.length - 1] : null;
  }

  function renderSummary() {
    const p = lastPoint();
    const s = status;
    if (!s && !p) {
      replace(summary);
      return;
    }
    // The newest of the point (once a second) and the status (on changes).
    const fresherPoint = p && s && history && history.revision === int(s.revision) && active(s.phase) ? p : null;
    const phase = (fresherPoint && fresherPoint.phase) || (s && s.phase) || (p && p.phase) || '';
    const stepIdx = fresherPoint ? fresherPoint.step : s ? s.step : p.step;
    const nSteps = (s && s.steps) || (history && history.steps ? history.steps.length : 0);
    const weightRatio = fresherPoint ? fresherPoint.weight : s ? int(s.weight) / 100 : p.weight;
    const weightPct = Math.round(weightRatio * 100);
    const strategy = (s && s.strategy) || (history && history.strategy) || 'canary';
    const rev = s ? int(s.revision) : history.revision;
    const stable = s ? int(s.stable) : history.stable;
    replace(title, 'Rollout ', name, ' ', h('span', { class: 'muted' }, 'r' + rev + (stable ? ' vs r' + stable : '')));
    const canary = p && (p.revisions || []).find((r) => r.role === 'canary');
    const stableP = p && (p.revisions || []).find((r) => r.role === 'stable');
    replace(summary,
      stat('Phase', badge(phase || '–', phaseTone(phase), { id: 'rollout-phase', 'data-phase': phase })),
      strategy === 'canary'
        ? stat('Step', h('span', { id: 'rollout-step', 'data-step': String(stepIdx + 1), 'data-steps': String(nSteps) }, nSteps ? Math.min(stepIdx + 1, nSteps) + ' / ' + nSteps : '–'))
        : stat('Available', h('span', { id: 'rollout-step' }, int(s && s.available) + ' / ' + int(s && s.replicas))),
      stat('Canary weight', h('span', { class: 'weight-stat' },
        h('span', { id: 'rollout-weight', 'data-weight': String(weightPct) }, weightPct + '%'),
        h('span', { class: 'weightbar', 'aria-hidden': 'true' }, weightBar(weightRatio)))),
      stat('Pause left', h('span', { id: 'rollout-pause-left' }, (s && active(s.phase) && s.pause_left) || '–')),
      stat('Gateways', syncBadge(s && s.weight_synced, 'rollout-gateways-synced', s)),
      stat('Node DNS', syncBadge(s && s.dns_synced, 'rollout-dns-synced', s)),
      stat('Canary', h('span', { id: 'rollout-canary-traffic' }, canary ? num(canary.rps) + ' req/s · ' + pct(canary.error_rate, 1) + ' err' + (canary.p99_ms ? ' · p99 ' + ms(canary.p99_ms) : '') : '–'),
        s ? h('div', { class: 'muted small' }, int(s.canary_ready) + ' ready') : null),
      stat('Stable', h('span', { id: 'rollout-stable-traffic' }, stableP ? num(stableP.rps) + ' req/s · ' + pct(stableP.error_rate, 1) + ' err' + (stableP.p99_ms ? ' · p99 ' + ms(stableP.p99_ms) : '') : '–'),
        s ? h('div', { class: 'muted small' }, int(s.stable_ready) + ' ready') : null),
      s && s.deadline_left && active(s.phase) ? stat('Deadline', h('span', { id: 'rollout-deadline' }, s.deadline_left)) : null,
      s && s.message ? h('p', { class: 'status-message', id: 'rollout-message' }, s.message) : null);
    for (const [i, a] of actions.entries()) buttons[i].disabled = !(s && a.when.includes(phase));
    renderSteps(stepIdx, phase);
  }

  function renderSteps(current, phase) {
    const specSteps = (history && history.steps) || [];
    const n = specSteps.length;
    if (current === undefined) {
      const p = lastPoint();
      current = status ? status.step : p ? p.step : 0;
      phase = status ? status.phase : p ? p.phase : '';
    }
    if (!n) {
      replace(steps);
      return;
    }
    const done = phase === 'Succeeded';
    replace(steps, specSteps.map((st, i) => {
      const state = done || i < current ? 'done' : i === current && active(phase) ? 'current' : 'pending';
      return h('li', { class: ['step', 'step-' + state, i === current && phase === 'Paused' ? 'step-paused' : null], 'data-step-index': String(i), 'data-state': state, 'aria-current': state === 'current' ? 'step' : null },
        h('span', { class: 'step-n' }, String(i + 1)),
        h('span', { class: 'step-w' }, Math.round(ratio(st.weight) * 100) + '%'),
        h('span', { class: 'step-p' }, pauseLabel(st.pause)));
    }));
  }

  function renderMarks() {
    const marks = lines(history).filter((m) => m.kind !== 'ack');
    if (!marks.length) {
      replace(marksEl, h('p', { class: 'muted' }, 'Nothing happened yet.'));
      return;
    }
    replace(marksEl, h('ol', { class: 'timeline' }, marks.reverse().map((m) =>
      h('li', { class: 'tl tl-' + m.kind, 'data-kind': m.kind }, h('time', null, clock(m.t)), ' ', h('span', { class: 'tl-kind' }, m.kind), ' ', m.text))));
  }

  function renderSync() {
    const s = status;
    if (!s) {
      replace(sync);
      return;
    }
    replace(sync,
      h('ul', { class: 'plain sync-list' },
        (s.gateways || []).map((g) => {
          const state = (g.match(/\b(SYNCED|STALE|NACKED)\b/) || [])[1] || '';
          return h('li', null, badge(state || '?', phaseTone(state)), ' ', h('span', { class: 'mono' }, g.replace(/:\s*(SYNCED|STALE|NACKED)/, '')));
        }),
        (s.nodes || []).map((n) => h('li', null, badge('DNS', 'info'), ' ', h('span', { class: 'mono' }, n)))),
      !(s.gateways || []).length && !(s.nodes || []).length ? h('p', { class: 'muted' }, 'No gateway or node reports yet.') : null);
  }

  function renderStatus() {
    renderSummary();
    renderVerdict();
    renderSync();
  }

  async function act(a) {
    actionError.hidden = true;
    actionOk.hidden = true;
    const ok = await confirmAction({
      title: a.label + ' the rollout of ' + ns + '/' + name + '?',
      body: a.what,
      confirm: a.label,
      danger: a.id === 'abort',
    });
    if (!ok) return;
    for (const b of buttons) b.disabled = true;
    try {
      status = { ...(status || {}), ...(await post(base + '/' + a.id)) };
      actionOk.hidden = false;
      actionOk.textContent = a.label + ': done. ' + (status.message || '');
    } catch (err) {
      actionError.hidden = false;
      replace(actionError, h('strong', null, a.label + ' refused: '), err.message, err.code ? h('span', { class: 'muted' }, ' (' + err.code + ')') : null);
    }
    await Promise.all([loadStatus(), loadHistory()]);
  }

  // A change of phase, step or revision brings new marks and a new status.
  function soon(fn, timerRef, delay) {
    if (timerRef.t) return;
    timerRef.t = setTimeout(() => {
      timerRef.t = 0;
      if (!disposed) fn();
    }, delay);
  }
  const st = { t: 0 };
  const hi = { t: 0 };

  function onPoint(ev) {
    if (ev.namespace !== ns || ev.service !== name) return;
    const p = ev.point;
    const canary = (p.revisions || []).find((r) => r.role === 'canary');
    if (!history || (canary && history.revision && Number(canary.revision) !== history.revision)) {
      soon(loadHistory, hi, 100);
      soon(loadStatus, st, 100);
      return;
    }
    const prev = lastPoint();
    if (!appendPoint(history, p)) return;
    // How many points came over the stream (not with a fetched history).
    chartsEl.dataset.livePoints = String(int(chartsEl.dataset.livePoints) + 1);
    charts.update();
    chartNote.hidden = true;
    renderSummary();
    if (!prev || prev.phase !== p.phase || prev.step !== p.step) {
      soon(loadHistory, hi, 300);
      soon(loadStatus, st, 300);
    } else if (Date.now() - lastStatusAt > 2000) {
      soon(loadStatus, st, 0);
    }
  }

  function refresh(topics) {
    if (!topics || topics.includes('rollouts') || topics.includes('gateways')) soon(loadStatus, st, 0);
    if (!topics || topics.includes('rollouts')) soon(loadHistory, hi, 0);
  }

  Promise.all([loadStatus(), loadHistory()]);
  return {
    topics: ['rollouts', 'gateways', 'services'],
    refresh,
    onPoint,
    dispose() {
      disposed = true;
      clearTimeout(st.t);
      clearTimeout(hi.t);
      charts.dispose();
    },
  };
}

function stat(label, ...value) {
  return h('div', { class: label === 'Canary' || label === 'Stable' ? 'stat stat-wide' : 'stat' }, h('div', { class: 'stat-label' }, label), h('div', { class: 'stat-value' }, value));
}

function syncBadge(ok, id, s) {
  if (!s) return badge('–', 'muted', { id });
  return badge(ok ? 'synced' : 'applying…', ok ? 'ok' : 'warn', { id, 'data-synced': String(!!ok) });
}

function weightBar(r) {
  const bar = h('span', { class: 'weightbar-fill' });
  bar.style.width = Math.round(r * 100) + '%';
  return bar;
}

function legendItem(kind, text) {
  return h('span', { class: 'legend-item' }, h('span', { class: 'swatch swatch-' + kind }), text);
}
