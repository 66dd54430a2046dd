// The dashboard's shell: hash routing, the navigation, the live stream,
// and refetching the open page when the cluster changes.
import { whoami, logout, Stream } from './api.js';
import { h, replace } from './dom.js';
import { servicesPage } from './pages/services.js';
import { servicePage } from './pages/service.js';
import { nodesPage } from './pages/nodes.js';
import { gatewaysPage } from './pages/gateways.js';
import { eventsPage } from './pages/events.js';
import { rolloutPage } from './pages/rollout.js';

// Routes: pattern segments, ':x' captures; nav names the tab to mark.
const routes = [
  { path: ['services'], page: servicesPage, nav: 'services' },
  { path: ['services', ':ns', ':name'], page: servicePage, nav: 'services' },
  { path: ['rollouts', ':ns', ':name'], page: rolloutPage, nav: 'services' },
  { path: ['nodes'], page: nodesPage, nav: 'nodes' },
  { path: ['gateways'], page: gatewaysPage, nav: 'gateways' },
  { path: ['events'], page: eventsPage, nav: 'events' },
];

/** match finds the route of a hash ("#/services/default/web"). */
export function match(hash) {
  const parts = hash.replace(/^#\/?/, '').split('/').filter(Boolean).map(decodeURIComponent);
  if (!parts.length) return { route: routes[0], params: {} };
  for (const r of routes) {
    if (r.path.length !== parts.length) continue;
    const params = {};
    let ok = true;
    r.path.forEach((seg, i) => {
      if (seg.startsWith(':')) params[seg.slice(1)] = parts[i];
      else if (seg !== parts[i]) ok = false;
    });
    if (ok) return { route: r, params };
  }
  return null;
}

const main = document.getElementById('view');
const stream = new Stream();
let current = null; // the open page's controller
let refreshTimer = 0;
let pendingTopics = new Set();

function setLive(state) {
  const el = document.getElementById('live');
  el.dataset.state = state;
  el.querySelector('.live-text').textContent = state === 'open' ? 'Live' : state === 'connecting' ? 'Connecting…' : 'Offline';
  el.title = state === 'open' ? 'Receiving live updates' : 'Live updates interrupted; reconnecting';
}

function markNav(name) {
  for (const a of document.querySelectorAll('#nav a')) {
    if (a.dataset.nav === name) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
}

function navigate() {
  if (current && current.dispose) current.dispose();
  current = null;
  pendingTopics.clear();
  const m = match(location.hash);
  if (!m) {
    markNav('');
    replace(main, h('div', { class: 'empty-state', id: 'not-found' }, h('h1', null, 'Not found'), h('p', null, 'No page at ', h('code', null, location.hash), '. ', h('a', { href: '#/services' }, 'Back to services'))));
    document.title = 'Not found · Berth';
    return;
  }
  markNav(m.route.nav);
  main.replaceChildren();
  main.dataset.page = m.route.nav;
  current = m.route.page({
    main,
    params: m.params,
    stream,
    setTitle: (t) => (document.title = t + ' · Berth'),
  });
  main.focus({ preventScroll: true });
}

// Change events are debounced by the server; coalesce once more so a burst
// of topics refetches a page once.
stream.on('change', ({ topics }) => {
  if (!current || !current.refresh) return;
  for (const t of topics || []) if ((current.topics || []).includes(t)) pendingTopics.add(t);
  if (!pendingTopics.size || refreshTimer) return;
  refreshTimer = setTimeout(() => {
    refreshTimer = 0;
    const topics = [...pendingTopics];
    pendingTopics.clear();
    if (current && current.refresh) current.refresh(topics);
  }, 150);
});
stream.on('point', (ev) => current && current.onPoint && current.onPoint(ev));
stream.on('reconnect', () => current && current.refresh && current.refresh(current.topics || []));
stream.on('state', setLive);

async function start() {
  setLive(stream.state);
  document.getElementById('logout').addEventListener('click', () => logout());
  try {
    const me = await whoami();
    replace(document.getElementById('whoami'), h('span', { class: 'who', title: 'Signed in as ' + me.principal }, me.principal), h('span', { class: 'muted' }, ' · ', me.replica || 'replica', ' · ', me.version || ''));
  } catch (err) {
    replace(document.getElementById('whoami'), h('span', { class: 'error-text' }, err.message));
  }
  window.addEventListener('hashchange', navigate);
  if (!location.hash) history.replaceState(null, '', '#/services');
  navigate();
}

start();
