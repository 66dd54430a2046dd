// Pure formatting helpers (no DOM), shared by the pages.

/** int reads a protojson int64 (a string) or a number; NaN-safe. */
export function int(v) {
  if (v === undefined || v === null || v === '') return 0;
  const n = typeof v === 'number' ? v : Number(v);
  return Number.isFinite(n) ? n : 0;
}

/** pct formats a 0..1 ratio as a percentage. */
export function pct(ratio, digits = 0) {
  if (ratio === null || ratio === undefined || !Number.isFinite(ratio)) return '–';
  return (ratio * 100).toFixed(digits) + '%';
}

/** num formats a number with at most `digits` decimals. */
export function num(v, digits = 1) {
  if (v === null || v === undefined || !Number.isFinite(v)) return '–';
  return Number(v.toFixed(digits)).toLocaleString('en-US');
}

/** ms formats milliseconds, switching to seconds above one. */
export function ms(v) {
  if (!v) return '–';
  return v >= 1000 ? (v / 1000).toFixed(2) + ' s' : v.toFixed(v < 10 ? 1 : 0) + ' ms';
}

/** ago says how long before now an RFC 3339 time or epoch-ms was. */
export function ago(t, now = Date.now()) {
  const at = typeof t === 'number' ? t : Date.parse(t || '');
  if (!Number.isFinite(at) || at <= 0) return '–';
  return duration(Math.max(0, now - at)) + ' ago';
}

/** duration formats milliseconds as "3h 2m", "4m 05s" or "12s". */
export function duration(d) {
  const s = Math.round(d / 1000);
  if (s < 60) return s + 's';
  const m = Math.floor(s / 60);
  if (m < 60) return m + 'm ' + String(s % 60).padStart(2, '0') + 's';
  const hr = Math.floor(m / 60);
  if (hr < 48) return hr + 'h ' + (m % 60) + 'm';
  return Math.floor(hr / 24) + 'd ' + (hr % 24) + 'h';
}

/** clock formats epoch-ms as local HH:MM:SS. */
export function clock(t) {
  const d = new Date(t);
  return [d.getHours(), d.getMinutes(), d.getSeconds()].map((x) => String(x).padStart(2, '0')).join(':');
}

/** when formats an RFC 3339 time as local date and time. */
export function when(t) {
  const at = Date.parse(t || '');
  if (!Number.isFinite(at) || at <= 0) return '–';
  const d = new Date(at);
  return d.toLocaleDateString('en-CA') + ' ' + clock(at);
}

/** bytes formats a byte count in binary units. */
export function bytes(b) {
  b = int(b);
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (b >= 1024 && i < units.length - 1) {
    b /= 1024;
    i++;
  }
  return (i === 0 ? b : b.toFixed(b < 10 ? 1 : 0)) + ' ' + units[i];
}

/** cpu formats milli-CPUs. */
export function cpu(m) {
  m = int(m);
  return m % 1000 === 0 ? m / 1000 + ' CPU' : m + 'm';
}

/** phaseTone maps a rollout or instance phase to a badge tone. */
export function phaseTone(phase) {
  switch (phase) {
    case 'Running':
    case 'Succeeded':
    case 'Ready':
    case 'SYNCED':
    case 'Normal':
      return 'ok';
    case 'Progressing':
    case 'Pending':
    case 'Pulling':
    case 'Starting':
      return 'info';
    case 'Paused':
    case 'STALE':
    case 'NotReady':
    case 'Aborted':
    case 'Stopped':
      return 'warn';
    case 'RolledBack':
    case 'Backoff':
    case 'NACKED':
    case 'Lost':
    case 'Warning':
    case 'Failed':
      return 'bad';
    default:
      return 'muted';
  }
}

/** active says whether a rollout phase is still running. */
export function active(phase) {
  return phase === 'Progressing' || phase === 'Paused';
}

/** stepWeight reads a history step weight (0..1, or 0..100 from older servers). */
export function ratio(w) {
  w = Number(w) || 0;
  return w > 1 ? w / 100 : w;
}
