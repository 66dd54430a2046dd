// The rollout page's four uPlot charts and the plugin that draws the
// rollout on them: step bands with their labels, pause bands, marks (a
// step, a pause, a promote, a rollback) as labelled vertical lines, and an
// analysis threshold as a horizontal line.
/* global uPlot */
import { columns, metrics, threshold, stepBands, pauseBands, lines } from './plotdata.js';
import { clock } from './format.js';

const css = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();

// Colours by role: the canary warm, the stable cool; more revisions (rare)
// take the next colours.
function revisionColour(rv, i) {
  if (rv.role === 'canary') return css('--canary') || '#e8590c';
  if (rv.role === 'stable') return css('--stable') || '#1c7ed6';
  return ['#7048e8', '#2b8a3e', '#c2255c'][i % 3];
}

const markColour = {
  step: '--mark-step',
  ack: '--mark-ack',
  pause: '--mark-pause',
  resume: '--mark-step',
  promote: '--mark-ok',
  promoted: '--mark-ok',
  abort: '--mark-bad',
  rollback: '--mark-bad',
};

/**
 * rolloutPlugin draws the rollout's structure. get() returns the current
 * history (it changes as points arrive). labels: whether this chart
 * writes the marks' labels (only the top chart does, the others draw the
 * lines alone).
 */
function rolloutPlugin(get, metricId, labels) {
  return {
    hooks: {
      // Bands go under the series.
      drawClear: [
        (u) => {
          const hist = get();
          const { ctx } = u;
          const { top, height } = u.bbox;
          const dpr = devicePixelRatio || 1;
          ctx.save();
          stepBands(hist).forEach((b, i) => {
            const x0 = u.valToPos(b.from / 1000, 'x', true);
            const x1 = u.valToPos(b.to / 1000, 'x', true);
            if (i % 2 === 1) {
              ctx.fillStyle = css('--band-step');
              ctx.fillRect(x0, top, Math.max(1, x1 - x0), height);
            }
            if (labels) {
              ctx.fillStyle = css('--text-muted');
              ctx.font = `${11 * dpr}px system-ui, sans-serif`;
              ctx.textBaseline = 'top';
              ctx.fillText(b.label, x0 + 4 * dpr, top + 3 * dpr, Math.max(0, x1 - x0 - 6 * dpr));
            }
          });
          for (const b of pauseBands(hist)) {
            const x0 = u.valToPos(b.from / 1000, 'x', true);
            const x1 = u.valToPos(b.to / 1000, 'x', true);
            ctx.fillStyle = css('--band-pause');
            ctx.fillRect(x0, top, Math.max(2 * dpr, x1 - x0), height);
          }
          ctx.restore();
        },
      ],
      draw: [
        (u) => {
          const hist = get();
          const { ctx } = u;
          const { left, top, width, height } = u.bbox;
          const dpr = devicePixelRatio || 1;
          ctx.save();
          // Marks.
          let labelRow = 0;
          let lastLabelX = -Infinity;
          for (const m of lines(hist)) {
            const x = Math.round(u.valToPos(m.t / 1000, 'x', true));
            if (x < left - 1 || x > left + width + 1) continue;
            ctx.strokeStyle = css(markColour[m.kind] || '--mark-step');
            ctx.lineWidth = (m.kind === 'ack' ? 1 : 1.5) * dpr;
            ctx.setLineDash(m.kind === 'ack' ? [2 * dpr, 3 * dpr] : m.kind === 'step' ? [] : [6 * dpr, 3 * dpr]);
            ctx.beginPath();
            ctx.moveTo(x, top);
            ctx.lineTo(x, top + height);
            ctx.stroke();
            if (labels && m.kind !== 'ack' && m.kind !== 'step') {
              // Stagger labels that would overlap.
              labelRow = x - lastLabelX < 120 * dpr ? (labelRow + 1) % 3 : 0;
              lastLabelX = x;
              ctx.setLineDash([]);
              ctx.font = `600 ${11 * dpr}px system-ui, sans-serif`;
              const text = { rollback: 'rolled back', promoted: 'promoted', abort: 'abort', promote: 'promote', pause: 'pause', resume: 'resume' }[m.kind] || m.kind;
              const tw = Math.min(ctx.measureText(text).width, 220 * dpr);
              const y = top + (18 + 15 * labelRow) * dpr;
              const tx = Math.min(x + 4 * dpr, left + width - tw - 4 * dpr);
              ctx.fillStyle = css('--surface');
              ctx.globalAlpha = 0.85;
              ctx.fillRect(tx - 2 * dpr, y - 1 * dpr, tw + 4 * dpr, 14 * dpr);
              ctx.globalAlpha = 1;
              ctx.fillStyle = css(markColour[m.kind] || '--mark-step');
              ctx.textBaseline = 'top';
              ctx.fillText(text, tx, y, tw);
            }
          }
          // The analysis threshold.
          const th = threshold(hist, metricId);
          if (th > 0) {
            const y = Math.round(u.valToPos(th, 'y', true));
            ctx.strokeStyle = css('--threshold');
            ctx.lineWidth = 1.5 * dpr;
            ctx.setLineDash([8 * dpr, 4 * dpr]);
            ctx.beginPath();
            ctx.moveTo(left, y);
            ctx.lineTo(left + width, y);
            ctx.stroke();
            ctx.setLineDash([]);
            ctx.fillStyle = css('--threshold');
            ctx.font = `600 ${11 * dpr}px system-ui, sans-serif`;
            ctx.textBaseline = 'bottom';
            const text = 'limit ' + (metricId === 'errors' ? th.toFixed(th < 1 ? 1 : 0) + '%' : th + ' ms');
            ctx.fillText(text, left + width - ctx.measureText(text).width - 4 * dpr, y - 2 * dpr);
          }
          ctx.restore();
        },
      ],
    },
  };
}

// latestInLegend shows the newest values in the legend while the cursor is
// not over the plot (uPlot shows dashes then).
function latestInLegend() {
  const show = (u) => {
    const n = u.data[0].length;
    if (n && (u.cursor.idx === null || u.cursor.idx === undefined)) u.setLegend({ idx: n - 1 });
  };
  return { hooks: { setData: [show], setCursor: [show] } };
}

function fmtValue(metricId, v) {
  if (v === null || v === undefined) return '–';
  switch (metricId) {
    case 'weight':
      return v.toFixed(0) + '%';
    case 'errors':
      return v.toFixed(v < 10 ? 2 : 1) + '%';
    case 'p99':
      return v.toFixed(v < 10 ? 1 : 0) + ' ms';
    default:
      return v.toFixed(v < 10 ? 1 : 0);
  }
}

/**
 * RolloutCharts owns the four charts in container. setHistory(h) redraws
 * all from a history; appended() redraws after points were appended to the
 * same history object.
 */
export class RolloutCharts {
  constructor(container) {
    this.container = container;
    this.charts = [];
    this.key = '';
    this.history = null;
    this.observer = new ResizeObserver(() => this.resize());
    this.observer.observe(container);
  }

  setHistory(history, revisions) {
    this.history = history;
    const key = revisions.map((r) => r.revision + r.role).join(',') + '|' + (history.thresholds ? history.thresholds.max_p99_ms : '');
    if (key !== this.key) {
      this.key = key;
      this.build(revisions);
    }
    this.update();
  }

  build(revisions) {
    this.destroy();
    this.revisions = revisions;
    this.container.replaceChildren();
    for (const m of metrics) {
      const fig = document.createElement('figure');
      fig.className = 'chart';
      fig.id = 'chart-' + m.id;
      fig.dataset.testid = 'chart';
      fig.dataset.metric = m.id;
      fig.setAttribute('role', 'img');
      fig.setAttribute('aria-label', m.title + ' per revision over the rollout');
      const cap = document.createElement('figcaption');
      cap.textContent = m.title;
      const unit = document.createElement('span');
      unit.className = 'unit';
      unit.textContent = ' (' + m.unit + ')';
      cap.appendChild(unit);
      const plot = document.createElement('div');
      plot.className = 'plot';
      fig.append(cap, plot);
      this.container.appendChild(fig);
      const get = () => this.history;
      const series = [
        { value: (u, v) => (v === null || v === undefined ? '–' : clock(v * 1000)) },
        ...revisions.map((rv, i) => ({
          label: 'r' + rv.revision + ' ' + rv.role,
          stroke: revisionColour(rv, i),
          fill: m.id === 'weight' ? revisionColour(rv, i) + '1a' : undefined,
          width: 2,
          spanGaps: false,
          points: { show: false },
          value: (u, v) => fmtValue(m.id, v),
        })),
      ];
      const opts = {
        width: this.width(plot),
        height: 220,
        class: 'uplot-chart',
        cursor: { sync: { key: 'rollout' }, drag: { x: false, y: false } },
        legend: { live: true },
        scales: {
          x: { time: true },
          y: {
            range: (u, min, max) => {
              if (m.id === 'weight') return [0, 100];
              const th = threshold(this.history, m.id);
              const top = Math.max(max || 0, th * 1.25, m.id === 'errors' ? 1 : m.id === 'p99' ? 10 : 5);
              return [0, top * 1.08];
            },
          },
        },
        axes: [
          // Whole seconds at least: points come once a second.
          { stroke: css('--text-muted'), grid: { stroke: css('--grid'), width: 1 }, ticks: { stroke: css('--grid') }, space: 70, incrs: [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200] },
          {
            stroke: css('--text-muted'),
            grid: { stroke: css('--grid'), width: 1 },
            ticks: { stroke: css('--grid') },
            size: 66,
            values: (u, vals) => vals.map((v) => fmtValue(m.id, v)),
          },
        ],
        series,
        plugins: [rolloutPlugin(get, m.id, m.id === 'weight'), latestInLegend()],
      };
      const u = new uPlot(opts, this.data(m), plot);
      this.charts.push({ m, u, fig, plot });
    }
  }

  data(m) {
    return columns(this.history.points || [], this.revisions, m.pick);
  }

  update() {
    const n = (this.history.points || []).length;
    for (const c of this.charts) {
      c.u.setData(this.data(c.m));
      c.fig.dataset.points = String(n);
    }
    this.container.dataset.points = String(n);
  }

  width(plot) {
    return Math.max(280, Math.floor(plot.clientWidth || 600));
  }

  resize() {
    for (const c of this.charts) {
      const w = this.width(c.plot);
      if (Math.abs(c.u.width - w) > 2) c.u.setSize({ width: w, height: 220 });
    }
  }

  destroy() {
    for (const c of this.charts) c.u.destroy();
    this.charts = [];
  }

  dispose() {
    this.observer.disconnect();
    this.destroy();
  }
}
