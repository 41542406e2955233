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

// Access to a server started with --token --private: the page asks for
// the token once and keeps it for this tab only (sessionStorage). fetch
// sends it as a bearer header; a WebSocket, which can't carry headers from
// a browser, offers it as the subprotocol "bearer.<base64url>" beside
// "ci.v1", which the server selects.

const TOKEN_KEY = "ci.token";

// token returns the token kept for this tab, or "".
export function token() {
  try {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  } catch {
    return "";
  }
}

function b64url(s) {
  const bytes = new TextEncoder().encode(s);
  let bin = "";
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

// apiFetch is fetch with the tab's token. On 401 it asks for the token
// (again, if the one kept was refused) and retries.
export async function apiFetch(path, opts = {}) {
  for (let refused = false; ; refused = true) {
    const headers = new Headers(opts.headers || {});
    const t = token();
    if (t) headers.set("Authorization", "Bearer " + t);
    const r = await fetch(path, { cache: "no-store", ...opts, headers });
    if (r.status !== 401) return r;
    await askToken(refused && t !== "");
  }
}

// openSocket opens a WebSocket to a path of this server, with the tab's
// token if there is one.
export function openSocket(path) {
  const t = token();
  return t ? new WebSocket(wsURL(path), ["ci.v1", "bearer." + b64url(t)]) : new WebSocket(wsURL(path));
}

let asking = null;

// askToken shows a dialog asking for the server's token and resolves once
// one is entered. Concurrent callers share one dialog.
export function askToken(refused) {
  if (asking) return asking;
  asking = new Promise((resolve) => {
    const dlg = document.createElement("dialog");
    dlg.className = "token-dialog";
    dlg.setAttribute("aria-labelledby", "token-title");
    const form = document.createElement("form");
    form.method = "dialog";
    const h = document.createElement("h2");
    h.id = "token-title";
    h.textContent = "This ci-server needs a token";
    const p = document.createElement("p");
    p.textContent = refused
      ? "That token was not accepted. Enter the server's token (kept for this tab only)."
      : "Enter the server's token (the one ci uses as CI_TOKEN). It is kept for this tab only.";
    const label = document.createElement("label");
    label.textContent = "Token";
    const input = document.createElement("input");
    input.type = "password";
    input.name = "token";
    input.required = true;
    input.autocomplete = "current-password";
    label.append(input);
    const button = document.createElement("button");
    button.type = "submit";
    button.textContent = "Continue";
    form.append(h, p, label, button);
    dlg.append(form);
    document.body.append(dlg);
    form.addEventListener("submit", () => {
      try {
        sessionStorage.setItem(TOKEN_KEY, input.value.trim());
      } catch {
        // storage off: the token lives as long as the page then
      }
      dlg.remove();
      asking = null;
      resolve();
    });
    dlg.addEventListener("cancel", (e) => e.preventDefault()); // nothing works without it
    dlg.showModal();
    input.focus();
  });
  return asking;
}
