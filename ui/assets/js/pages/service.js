// One service: its instances (node, state, IP, restarts, last error), the
// answers its DNS name gives right now, and its events.
import { get } from '../api.js';
import { h, badge, table, card } from '../dom.js';
import { int, ago, when, phaseTone } from '../format.js';
import { header, refresher, rolloutHref } from './common.js';
import { routeText } from './services.js';
import { eventsTable } from './events.js';

export function servicePage({ main, params, setTitle }) {
  const { ns, name } = params;
  const base = '/services/' + encodeURIComponent(ns) + '/' + encodeURIComponent(name);
  setTitle(name + ' · ' + ns);
  const body = h('div', { id: 'service', 'data-service': ns + '/' + name });
  main.append(
    header(name, h('span', null, 'Service in namespace ', h('code', null, ns)),
      h('a', { class: 'button', href: rolloutHref(ns, name), id: 'open-rollout' }, 'Rollout ›'),
      h('a', { class: 'button button-ghost', href: '#/services' }, '‹ All services')),
    body);

  async function load() {
    const [detail, inst, dns, events] = await Promise.all([
      get(base),
      get(base + '/instances'),
      get(base + '/dns').catch((err) => ({ error: err.message })),
      get(base + '/events'),
    ]);
    const svc = detail.service;
    const instances = (inst.instances || []).slice().sort((a, b) => int(b.instance.revision) - int(a.instance.revision) || a.instance.id.localeCompare(b.instance.id));
    const ready = instances.filter((iv) => iv.status && iv.status.ready && !iv.instance.draining).length;
    return [
      h('div', { class: 'facts' },
        fact('Revision', 'r' + int(svc.status && svc.status.revision)),
        fact('Ready', ready + '/' + (svc.spec.replicas ?? 1)),
        fact('Image', h('code', null, svc.spec.image)),
        fact('Route', h('code', null, routeText(svc.spec.route))),
        fact('Strategy', (svc.spec.rollout && svc.spec.rollout.strategy) || 'rolling'),
        fact('Updated', ago(svc.status && svc.status.updated_at))),
      card('Instances', table({
        id: 'instances-table',
        caption: 'Instances of ' + name,
        empty: 'No instances.',
        rows: instances,
        rowAttrs: (iv) => ({ 'data-testid': 'instance-row', 'data-instance': iv.instance.id }),
        cols: [
          { title: 'Instance', class: 'mono', cell: (iv) => iv.instance.id },
          { title: 'Revision', numeric: true, cell: (iv) => 'r' + int(iv.instance.revision) },
          { title: 'Node', cell: (iv) => iv.instance.node || h('span', { class: 'muted' }, 'unplaced') },
          { title: 'State', cell: stateCell },
          { title: 'IP', class: 'mono', cell: (iv) => (iv.status && iv.status.ip) || '–' },
          { title: 'Restarts', numeric: true, cell: (iv) => String(int(iv.status && iv.status.restarts)) },
          { title: 'Started', cell: (iv) => ago(iv.status && iv.status.started_at) },
          { title: 'Last error', class: 'error-cell', cell: (iv) => lastError(iv) },
        ],
      })),
      h('div', { class: 'grid-2' },
        card('DNS', dnsView(dns, detail)),
        card('Route owners', (detail.route_owners || []).length
          ? h('ul', { class: 'plain mono' }, detail.route_owners.map((r) => h('li', null, r)))
          : h('p', { class: 'muted' }, 'No route.'))),
      card('Events', eventsTable(events.events || [], { id: 'service-events', object: false })),
    ];
  }

  const refresh = refresher(body, load);
  refresh();
  return { topics: ['services', 'events', 'nodes'], refresh, dispose: refresh.dispose };
}

function fact(label, value) {
  return h('div', { class: 'fact' }, h('div', { class: 'fact-label' }, label), h('div', { class: 'fact-value' }, value));
}

function stateCell(iv) {
  const st = iv.status || {};
  const phase = st.phase || 'Pending';
  const parts = [badge(phase, phaseTone(phase), { 'data-testid': 'instance-phase' })];
  if (st.ready) parts.push(' ', badge('ready', 'ok'));
  if (iv.instance.draining) parts.push(' ', badge('draining', 'warn'));
  if (iv.panic_routing) parts.push(' ', badge('panic routing', 'bad', { title: 'Its node stopped reporting; kept in discovery because nothing else serves' }));
  if (iv.instance.desired && iv.instance.desired !== 'running') parts.push(' ', badge(iv.instance.desired, 'muted'));
  return parts;
}

function lastError(iv) {
  const st = iv.status || {};
  const exit = st.last_exit && st.last_exit.at ? 'exit ' + int(st.last_exit.code) + ' ' + ago(st.last_exit.at) : '';
  const text = [st.last_error, exit].filter(Boolean).join(' · ');
  return text ? h('span', { title: text }, text) : h('span', { class: 'muted' }, '–');
}

function dnsView(dns, detail) {
  const name = dns && dns.name ? dns.name : (detail.dns_names || [])[0] || '';
  const answers = dns && dns.answers ? dns.answers : detail.dns_answers || [];
  return h('div', { id: 'dns' },
    h('p', null, h('span', { class: 'muted' }, 'A records for '), h('code', { id: 'dns-name' }, name || '–')),
    dns && dns.error ? h('p', { class: 'error-text' }, dns.error) : null,
    answers.length
      ? h('ul', { class: 'chips', id: 'dns-answers' }, answers.map((ip) => h('li', { class: 'chip mono' }, ip)))
      : h('p', { class: 'muted', id: 'dns-answers' }, 'No answers: nothing ready serves this name.'),
    (detail.dns_names || []).length > 1 ? h('p', { class: 'muted small' }, 'Also: ', detail.dns_names.slice(1).join(', ')) : null);
}

export { when };
