// The dashboard's API client: JSON GETs, CSRF-protected POSTs and the
// server-sent event stream (ui/CONTRACT.md).

let csrf = '';

/** ApiError carries the server's {"error","code"} answer. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function parse(resp) {
  const text = await resp.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  if (resp.status === 401) {
    // The session ended: the server's login page brings the user back.
    location.assign('/login');
    throw new ApiError(401, 'Unauthenticated', 'not logged in');
  }
  if (!resp.ok) {
    const msg = (body && body.error) || text.trim() || resp.statusText || 'request failed';
    throw new ApiError(resp.status, (body && body.code) || String(resp.status), msg);
  }
  return body;
}

/** get fetches a JSON endpoint under /api. */
export async function get(path) {
  const resp = await fetch('/api' + path, { credentials: 'same-origin', headers: { Accept: 'application/json' } });
  return parse(resp);
}

/** post sends a state-changing request with the session's CSRF token. */
export async function post(path) {
  const resp = await fetch('/api' + path, {
    method: 'POST',
    credentials: 'same-origin',
    headers: { Accept: 'application/json', 'X-CSRF-Token': csrf },
  });
  return parse(resp);
}

/** whoami loads the session (and its CSRF token). */
export async function whoami() {
  const me = await get('/whoami');
  csrf = me.csrf || '';
  return me;
}

/** logout ends the session. */
export async function logout() {
  await fetch('/logout', { method: 'POST', credentials: 'same-origin', headers: { 'X-CSRF-Token': csrf } });
  location.assign('/login');
}

/**
 * Stream wraps /api/stream. Listeners: change({topics}), point({namespace,
 * service, point}), state('connecting'|'open'|'closed'), reconnect() after
 * the connection came back (pages refetch: events may have been missed).
 */
export class Stream {
  constructor() {
    this.listeners = { change: new Set(), point: new Set(), state: new Set(), reconnect: new Set() };
    this.state = 'connecting';
    this.wasOpen = false;
    this.connect();
  }

  on(kind, fn) {
    this.listeners[kind].add(fn);
    return () => this.listeners[kind].delete(fn);
  }

  emit(kind, arg) {
    for (const fn of [...this.listeners[kind]]) {
      try {
        fn(arg);
      } catch (err) {
        console.error('stream listener', kind, err);
      }
    }
  }

  setState(s) {
    if (s === this.state) return;
    this.state = s;
    this.emit('state', s);
  }

  connect() {
    const es = new EventSource('/api/stream');
    this.es = es;
    es.addEventListener('open', () => {
      this.setState('open');
      if (this.wasOpen) this.emit('reconnect');
      this.wasOpen = true;
    });
    es.addEventListener('error', () => {
      // EventSource reconnects by itself unless the server refused the
      // stream (closed): then try again later, checking the session.
      if (es.readyState === EventSource.CLOSED) {
        this.setState('closed');
        setTimeout(() => {
          get('/whoami').then(() => this.connect(), () => setTimeout(() => this.connect(), 5000));
        }, 3000);
      } else {
        this.setState('connecting');
      }
    });
    es.addEventListener('change', (e) => {
      const data = safeJSON(e.data);
      if (data) this.emit('change', data);
    });
    es.addEventListener('point', (e) => {
      const data = safeJSON(e.data);
      if (data && data.point) this.emit('point', data);
    });
  }
}

function safeJSON(s) {
  try {
    return JSON.parse(s);
  } catch {
    return null;
  }
}
