// The services page: every service with its revision, ready/desired,
// route and current rollout.
import { get } from '../api.js';
import { h, badge, table } from '../dom.js';
import { int, pct, phaseTone, active } from '../format.js';
import { header, refresher, serviceHref, rolloutHref, namespacePicker, nsQuery } from './common.js';

export function servicesPage({ main, setTitle }) {
  setTitle('Services');
  const body = h('div', { id: 'services', 'aria-live': 'polite', 'aria-busy': 'true' });
  main.append(header('Services', 'Every service, its revision, readiness, route and rollout.', namespacePicker(() => refresh())), body);
  const live = new Map(); // "ns/name" -> newest live rollout point

  async function load() {
    const res = await get('/services' + nsQuery());
    const services = (res.services || []).slice().sort((a, b) => key(a).localeCompare(key(b)));
    // The current rollout of each service; a service that never had one
    // answers NotFound.
    const rollouts = await Promise.all(services.slice(0, 200).map((s) => {
      const m = s.service.metadata;
      return get('/rollouts/' + encodeURIComponent(m.namespace) + '/' + encodeURIComponent(m.name)).catch(() => null);
    }));
    body.removeAttribute('aria-busy');
    return table({
      id: 'services-table',
      caption: 'Services',
      empty: 'No services yet. Apply one with: berth apply -f app.yaml',
      rows: services.map((s, i) => ({ s, ro: rollouts[i] })),
      rowAttrs: ({ s }) => ({ 'data-testid': 'service-row', 'data-service': key(s) }),
      cols: [
        { title: 'Service', cell: ({ s }) => h('a', { href: serviceHref(s.service.metadata.namespace, s.service.metadata.name), class: 'strong' }, s.service.metadata.name) },
        { title: 'Namespace', cell: ({ s }) => s.service.metadata.namespace },
        { title: 'Revision', numeric: true, cell: ({ s }) => 'r' + int(s.service.status && s.service.status.revision) },
        { title: 'Ready', numeric: true, cell: ({ s }) => readyCell(s) },
        { title: 'Image', class: 'mono clip', cell: ({ s }) => s.service.spec.image },
        { title: 'Route', class: 'mono', cell: ({ s }) => routeText(s.service.spec.route) },
        { title: 'Rollout', cell: ({ s, ro }) => rolloutCell(s, ro, live.get(key(s))) },
      ],
    });
  }

  const refresh = refresher(body, load);
  refresh();
  return {
    topics: ['services', 'rollouts'],
    refresh,
    onPoint(ev) {
      const k = ev.namespace + '/' + ev.service;
      live.set(k, ev.point);
      const cell = body.querySelector('[data-rollout-weight="' + CSS.escape(k) + '"]');
      if (cell) cell.textContent = pct(ev.point.weight);
    },
    dispose: refresh.dispose,
  };
}

function key(s) {
  return s.service.metadata.namespace + '/' + s.service.metadata.name;
}

function readyCell(s) {
  const ready = int(s.ready);
  const desired = int(s.desired);
  const tone = ready >= desired && desired > 0 ? 'ok' : ready === 0 && desired > 0 ? 'bad' : desired === 0 ? 'muted' : 'warn';
  return badge(ready + '/' + desired, tone, { 'data-testid': 'ready' });
}

export function routeText(route) {
  if (!route || !(route.hosts || []).length) return '–';
  const paths = (route.paths || []).length ? route.paths : ['/'];
  return route.hosts.flatMap((host) => paths.map((p) => host + p)).join(', ');
}

function rolloutCell(s, ro, point) {
  const m = s.service.metadata;
  if (!ro) return h('span', { class: 'muted' }, (s.service.spec.rollout && s.service.spec.rollout.strategy) || 'none');
  const weight = point ? point.weight : int(ro.weight) / 100;
  return h('a', { href: rolloutHref(m.namespace, m.name), class: 'rollout-link', 'data-testid': 'rollout-link' },
    badge(ro.phase || 'unknown', phaseTone(ro.phase)),
    ' ', h('span', { class: 'muted' }, (ro.strategy || 'canary') + ' r' + int(ro.revision)),
    active(ro.phase) && ro.strategy !== 'rolling' ? [' ', h('span', { class: 'weight', 'data-rollout-weight': key(s) }, pct(weight))] : null,
    h('span', { class: 'chev', 'aria-hidden': 'true' }, ' ›'));
}
