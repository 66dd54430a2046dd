// Pieces every page uses: the header, error boxes, and a refresh loop that
// keeps one fetch in flight at a time.
import { h, replace } from '../dom.js';

/** header is a page's title line with an optional subtitle and actions. */
export function header(title, sub, ...actions) {
  return h('header', { class: 'page-header' }, h('div', null, h('h1', { id: 'page-title' }, title), sub ? h('p', { class: 'subtitle' }, sub) : null), actions.length ? h('div', { class: 'page-actions' }, actions) : null);
}

/** errorBox shows an API error. */
export function errorBox(err) {
  return h('div', { class: 'alert alert-bad', role: 'alert', 'data-testid': 'load-error' }, h('strong', null, 'Could not load: '), err && err.message ? err.message : String(err));
}

/**
 * refresher runs load() and renders its result into el, one call at a
 * time: a refresh asked for while one runs runs once more after it.
 */
export function refresher(el, load) {
  let running = false;
  let again = false;
  let disposed = false;
  async function run() {
    if (disposed) return;
    if (running) {
      again = true;
      return;
    }
    running = true;
    try {
      const nodes = await load();
      if (!disposed) {
        replace(el, nodes);
        el.dataset.loaded = String(Date.now());
      }
    } catch (err) {
      if (!disposed) replace(el, listErrorBox(err));
    } finally {
      running = false;
      if (again && !disposed) {
        again = false;
        run();
      }
    }
  }
  run.dispose = () => (disposed = true);
  return run;
}

/** link to a service or rollout page. */
export function serviceHref(ns, name) {
  return '#/services/' + encodeURIComponent(ns) + '/' + encodeURIComponent(name);
}
export function rolloutHref(ns, name) {
  return '#/rollouts/' + encodeURIComponent(ns) + '/' + encodeURIComponent(name);
}

// The namespace the list pages show ("" = every namespace the token may
// read), kept across pages and reloads. A token limited to namespaces
// must name one: the API refuses it the whole list.
const nsKey = 'berth.namespace';
export function namespaceFilter() {
  try {
    return localStorage.getItem(nsKey) || '';
  } catch {
    return '';
  }
}

/** nsQuery is "?namespace=NS" for the chosen namespace, or "". */
export function nsQuery() {
  const ns = namespaceFilter();
  return ns ? '?namespace=' + encodeURIComponent(ns) : '';
}

/** namespacePicker is a field choosing the list pages' namespace. */
export function namespacePicker(onChange) {
  const input = h('input', { id: 'namespace-filter', type: 'search', placeholder: 'all namespaces', value: namespaceFilter(), 'aria-label': 'Namespace', size: 16, spellcheck: 'false' });
  input.addEventListener('change', () => {
    try {
      localStorage.setItem(nsKey, input.value.trim());
    } catch {
      // storage off: the choice lasts for this page only
    }
    onChange();
  });
  return h('label', { class: 'ns-filter' }, 'Namespace ', input);
}

/** listErrorBox explains a refused list: a token limited to namespaces. */
export function listErrorBox(err) {
  if (err && err.status === 403 && !namespaceFilter()) {
    return h('div', { class: 'alert alert-info', role: 'alert', 'data-testid': 'load-error' },
      'This token may read only some namespaces: name one in the Namespace field above. (', err.message, ')');
  }
  return errorBox(err);
}
