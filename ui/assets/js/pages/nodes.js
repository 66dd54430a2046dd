// The nodes page: status, allocated vs capacity, pod subnet, DNS version.
import { get } from '../api.js';
import { h, badge, table } from '../dom.js';
import { int, ago, bytes, cpu } from '../format.js';
import { header, refresher } from './common.js';

export function nodesPage({ main, setTitle }) {
  setTitle('Nodes');
  const body = h('div', { id: 'nodes' });
  main.append(header('Nodes', 'Agents, what is placed on them, and the discovery version their DNS answers from.'), body);

  async function load() {
    const [nodes, gws] = await Promise.all([get('/nodes'), get('/gateways').catch(() => null)]);
    const published = gws ? int(gws.published_version) : 0;
    const list = (nodes.nodes || []).slice().sort((a, b) => a.name.localeCompare(b.name));
    return table({
      id: 'nodes-table',
      caption: 'Nodes',
      empty: 'No nodes have joined.',
      rows: list,
      rowAttrs: (n) => ({ 'data-testid': 'node-row', 'data-node': n.name }),
      cols: [
        { title: 'Node', class: 'strong', cell: (n) => n.name },
        { title: 'Status', cell: statusCell },
        { title: 'Address', class: 'mono', cell: (n) => n.address || '–' },
        { title: 'Pod subnet', class: 'mono', cell: (n) => n.pod_cidr || '–' },
        { title: 'CPU', cell: (n) => usage(int(n.allocated && n.allocated.milli_cpu), int(n.capacity && n.capacity.milli_cpu), cpu) },
        { title: 'Memory', cell: (n) => usage(int(n.allocated && n.allocated.memory_bytes), int(n.capacity && n.capacity.memory_bytes), bytes) },
        { title: 'Instances', numeric: true, cell: (n) => String(int(n.instances)) },
        { title: 'DNS version', numeric: true, cell: (n) => dnsVersion(int(n.dns_version), published) },
        { title: 'Heartbeat', cell: (n) => ago(n.heartbeat) },
      ],
    });
  }

  const refresh = refresher(body, load);
  refresh();
  return { topics: ['nodes', 'gateways'], refresh, dispose: refresh.dispose };
}

function statusCell(n) {
  const state = n.state || (n.ready ? 'Ready' : 'NotReady');
  const tone = state === 'Ready' ? 'ok' : state === 'Lost' ? 'bad' : 'warn';
  return [badge(state, tone, { 'data-testid': 'node-state', title: n.state_since ? 'since ' + ago(n.state_since) : null }), n.cordoned ? [' ', badge('cordoned', 'warn')] : null];
}

/** usage draws allocated/capacity as a meter with its numbers. */
export function usage(used, capacity, fmt) {
  const ratio = capacity > 0 ? Math.min(1, used / capacity) : 0;
  const meter = h('div', { class: 'meter', role: 'meter', 'aria-valuemin': '0', 'aria-valuemax': String(capacity), 'aria-valuenow': String(used), 'aria-label': 'allocated of capacity' },
    h('div', { class: ['meter-fill', ratio > 0.9 ? 'meter-bad' : ratio > 0.7 ? 'meter-warn' : null] }));
  meter.firstChild.style.width = (ratio * 100).toFixed(1) + '%';
  return h('div', { class: 'usage' }, meter, h('span', { class: 'usage-text' }, fmt(used) + ' / ' + (capacity ? fmt(capacity) : '–')));
}

function dnsVersion(v, published) {
  if (!published) return String(v);
  return h('span', null, String(v), ' ', v >= published ? badge('current', 'ok') : badge('behind ' + (published - v), 'warn'));
}
