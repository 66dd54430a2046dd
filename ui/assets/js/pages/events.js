// The events page: the cluster's recent events, newest first.
import { get } from '../api.js';
import { h, badge, table } from '../dom.js';
import { ago, when, phaseTone } from '../format.js';
import { header, refresher, serviceHref, namespacePicker, nsQuery } from './common.js';

export function eventsPage({ main, setTitle }) {
  setTitle('Events');
  const body = h('div', { id: 'events' });
  main.append(header('Events', 'What the control plane did and saw, newest first.', namespacePicker(() => refresh())), body);
  const refresh = refresher(body, async () => eventsTable((await get('/events' + nsQuery())).events || [], { id: 'events-table', object: true }));
  refresh();
  return { topics: ['events'], refresh, dispose: refresh.dispose };
}

/** eventsTable lists events newest first; object: show the object column. */
export function eventsTable(events, { id, object }) {
  const rows = events.slice().sort((a, b) => Date.parse(b.at || 0) - Date.parse(a.at || 0));
  const cols = [
    { title: 'When', class: 'nowrap', cell: (e) => h('time', { datetime: e.at, title: when(e.at) }, ago(e.at)) },
    { title: 'Type', cell: (e) => badge(e.type || 'Normal', phaseTone(e.type || 'Normal')) },
    { title: 'Reason', class: 'strong', cell: (e) => e.reason },
  ];
  if (object) cols.push({ title: 'Object', class: 'mono', cell: (e) => objectCell(e) });
  cols.push({ title: 'Message', class: 'wrap', cell: (e) => e.message });
  return table({ id, caption: 'Events', cols, rows, empty: 'No events.', rowAttrs: () => ({ 'data-testid': 'event-row' }) });
}

function objectCell(e) {
  const obj = e.object || '';
  const ns = e.namespace || 'default';
  if (obj.startsWith('service/')) return h('a', { href: serviceHref(ns, obj.slice(8)) }, ns + '/' + obj);
  return (e.namespace ? e.namespace + '/' : '') + obj;
}
