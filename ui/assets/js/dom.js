// Small DOM helpers. Text goes in through textContent only: nothing the
// API returns is ever parsed as HTML.

/**
 * h builds an element: h('a', {href: '#/x', class: 'link'}, 'text', child).
 * Attributes: class, dataset (object), on<event> (function), aria-*, role,
 * anything else through setAttribute. Children: strings, numbers, nodes,
 * arrays of those, null/undefined/false (skipped).
 */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') el.className = Array.isArray(v) ? v.filter(Boolean).join(' ') : v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else if (c instanceof Node) el.appendChild(c);
    else el.appendChild(document.createTextNode(String(c)));
  }
}

/** replace empties el and puts children in. */
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** badge is a coloured status pill; tone: ok, warn, bad, info, muted. */
export function badge(text, tone, attrs) {
  return h('span', { ...(attrs || {}), class: ['badge', 'badge-' + (tone || 'muted'), attrs && attrs.class] }, text);
}

/**
 * table renders rows under headers. cols: [{title, cell(row) -> node|string,
 * class?, numeric?}]. rowAttrs(row) gives each <tr>'s attributes.
 */
export function table({ id, caption, cols, rows, rowAttrs, empty }) {
  const thead = h('thead', null, h('tr', null, cols.map((c) => h('th', { scope: 'col', class: c.numeric ? 'num' : null }, c.title))));
  const body = h('tbody');
  if (!rows.length) {
    body.appendChild(h('tr', { class: 'empty' }, h('td', { colspan: cols.length }, empty || 'Nothing here yet.')));
  }
  for (const r of rows) {
    body.appendChild(h('tr', rowAttrs ? rowAttrs(r) : null, cols.map((c) => h('td', { class: [c.numeric ? 'num' : null, c.class] }, c.cell(r)))));
  }
  return h('div', { class: 'table-wrap' }, h('table', { id, class: 'data' }, caption ? h('caption', { class: 'sr-only' }, caption) : null, thead, body));
}

/** section is a titled card. */
export function card(title, ...children) {
  return h('section', { class: 'card', 'aria-label': title }, h('h2', { class: 'card-title' }, title), children);
}
