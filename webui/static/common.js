// common.js: helpers shared by the pages: statuses, times, WebSocket URLs.

// TERMINAL holds the statuses nothing follows.
export const TERMINAL = new Set(["passed", "failed", "error", "timed_out", "canceled"]);

// rank orders statuses: a status never goes back to a lower rank.
export function rank(status) {
  if (status === "queued") return 0;
  if (status === "running") return 1;
  return TERMINAL.has(status) ? 2 : -1;
}

// statusLabel is a status as people read it.
export function statusLabel(status) {
  return String(status || "unknown").replace(/_/g, " ");
}

// setBadge makes el a badge for status.
export function setBadge(el, status) {
  el.className = "badge s-" + (status || "unknown");
  el.textContent = statusLabel(status);
  el.dataset.status = status || "";
}

// shortID is the part of a job id shown in lists.
export function shortID(id) {
  return id.slice(0, 10);
}

// parseTime returns the time in ms of an RFC 3339 string, or NaN.
export function parseTime(s) {
  return s ? Date.parse(s) : NaN;
}

// formatDuration formats a duration in milliseconds: 850ms, 4.2s, 37s,
// 2m 05s, 1h 02m. whole drops the fraction of short durations (ticking).
export function formatDuration(ms, whole = false) {
  if (!(ms >= 0)) return "";
  if (ms < 1000 && !whole) return Math.round(ms) + "ms";
  const s = ms / 1000;
  if (s < 10 && !whole) return s.toFixed(1) + "s";
  const t = Math.floor(s);
  if (t < 60) return t + "s";
  const m = Math.floor(t / 60), h = Math.floor(m / 60);
  if (h === 0) return `${m}m ${String(t % 60).padStart(2, "0")}s`;
  return `${h}h ${String(m % 60).padStart(2, "0")}m`;
}

// formatRelative formats a past time relative to now: "just now", "5s ago",
// "3m ago", "2h ago", "4d ago", then a date.
export function formatRelative(t, now = Date.now()) {
  if (!(t > 0)) return "";
  const s = Math.max(0, Math.floor((now - t) / 1000));
  if (s < 5) return "just now";
  if (s < 60) return s + "s ago";
  if (s < 3600) return Math.floor(s / 60) + "m ago";
  if (s < 86400) return Math.floor(s / 3600) + "h ago";
  if (s < 7 * 86400) return Math.floor(s / 86400) + "d ago";
  return new Date(t).toLocaleDateString(undefined, { dateStyle: "medium" });
}

// formatAbsolute formats a time in full, for titles.
export function formatAbsolute(t) {
  if (!(t > 0)) return "";
  return new Date(t).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "medium" });
}

// jobDuration returns how long a job ran (or has been running), in ms, or
// NaN when it has not started.
export function jobDuration(job, now = Date.now()) {
  const start = parseTime(job.started_at);
  if (!(start > 0)) return NaN;
  const end = parseTime(job.finished_at);
  return Math.max(0, (end > 0 ? end : now) - start);
}

// wsURL returns the WebSocket URL of a path on this server.
export function wsURL(path) {
  return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + path;
}

// backoff returns the delay before reconnect attempt n (1, 2, ...): 250ms
// doubling to 5s, with some jitter.
export function backoff(n) {
  const d = Math.min(5000, 250 * 2 ** Math.max(0, n - 1));
  return d * (0.8 + 0.4 * Math.random());
}

// setConn shows the state of the live connection in el: "connecting",
// "live", "reconnecting" or "ended".
export function setConn(el, state) {
  const text = { connecting: "connecting…", live: "live", reconnecting: "reconnecting…", ended: "" }[state] ?? state;
  el.dataset.state = state;
  el.textContent = text;
  el.hidden = text === "";
}
