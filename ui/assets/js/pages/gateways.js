// The gateways page: each gateway's xDS version, SYNCED/STALE/NACKED and lag.
import { get } from '../api.js';
import { h, badge, table } from '../dom.js';
import { int, ago, phaseTone, duration } from '../format.js';
import { header, refresher } from './common.js';

export function gatewaysPage({ main, setTitle }) {
  setTitle('Gateways');
  const body = h('div', { id: 'gateways' });
  main.append(header('Gateways', 'Edge proxies and the discovery version each one runs.'), body);

  async function load() {
    const res = await get('/gateways');
    const published = int(res.published_version);
    const list = (res.gateways || []).slice().sort((a, b) => a.node_id.localeCompare(b.node_id));
    return [
      h('p', { class: 'muted' }, 'Published version: ', h('strong', { id: 'published-version' }, String(published))),
      table({
        id: 'gateways-table',
        caption: 'Gateways',
        empty: 'No gateway is connected.',
        rows: list,
        rowAttrs: (g) => ({ 'data-testid': 'gateway-row', 'data-gateway': g.node_id }),
        cols: [
          { title: 'Gateway', class: 'strong', cell: (g) => g.node_id },
          { title: 'State', cell: (g) => badge(g.state || 'unknown', phaseTone(g.state), { 'data-testid': 'gateway-state' }) },
          { title: 'Version', numeric: true, cell: (g) => String(int(g.version)) },
          { title: 'Lag', numeric: true, cell: (g) => (int(g.lag_ms) ? duration(int(g.lag_ms)) : '0s') },
          { title: 'Protocol', cell: (g) => (g.proxyless ? 'proxyless gRPC' : 'gateway') + (g.delta ? ', delta' : ', state of the world') },
          { title: 'Address', class: 'mono', cell: (g) => g.address || '–' },
          { title: 'Replica', cell: (g) => g.replica || '–' },
          { title: 'Connected', cell: (g) => ago(g.connected_at) },
          { title: 'Last NACK', class: 'wrap error-cell', cell: (g) => g.last_nack || h('span', { class: 'muted' }, '–') },
        ],
      }),
    ];
  }

  const refresh = refresher(body, load);
  refresh();
  return { topics: ['gateways'], refresh, dispose: refresh.dispose };
}
