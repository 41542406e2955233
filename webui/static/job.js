// job.js: one job's live log, through GET /api/v1/jobs/{id}/events.
//
// Events are buffered as they arrive and rendered once per animation frame
// within a time budget, so a flood of output never blocks the tab. Only the
// newest CAP lines stay in the DOM unless the user asks for all of them.
// The page tracks the seq of the last event it accepted, ignores anything
// at or below it and resumes from it after a dropped connection.

import {
  backoff, formatAbsolute, formatDuration, formatRelative, parseTime, rank,
  setBadge, setConn, shortID, statusLabel, TERMINAL, apiFetch, openSocket, token,
} from "./common.js";
import { LogView } from "./logview.js";

// CAP is the most lines kept in the DOM.
const CAP = 5000;
// BUDGET is the time, in ms, spent rendering in one frame, and
// LINE_BUDGET the most line elements made in one frame (the browser's
// style and layout work comes after, and grows with it).
const BUDGET = 10;
const LINE_BUDGET = 800;
// While the page catches up with events that existed when it loaded, it
// renders at most every CATCH_UP ms, so that lines a big backlog would
// push out are never rendered at all.
const CATCH_UP = 400;

const $ = (id) => document.getElementById(id);
const id = decodeURIComponent(location.pathname.replace(/^\/jobs\//, ""));
const api = "/api/v1/jobs/" + encodeURIComponent(id);

const el = {
  conn: $("conn"), badge: $("badge"), result: $("result"), submitted: $("submitted"),
  duration: $("duration"), exit: $("exit"), args: $("args"), argsItem: $("args-item"),
  replica: $("replica"), replicaItem: $("replica-item"),
  reason: $("reason"), lines: $("lines"), notice: $("notice"), noticeText: $("notice-text"),
  showAll: $("show-all"), scroller: $("scroller"), log: $("log"), jump: $("jump"),
  legend: $("legend"), phase: $("phase"),
};

// What the page knows of the job.
const job = { status: "", created: NaN, started: NaN, finished: NaN, exitCode: null, reason: "", phase: "" };

// PHASES says what a running job does in each of its phases.
const PHASES = { install: "installing dependencies", test: "running tests" };

let lastSeq = 0;       // seq of the last accepted event
let backlog = 0;       // last_seq of the job when it was loaded
let ended = false;     // the terminal status event was accepted
let ws = null;
let attempt = 0;

// Output waiting to be rendered: chunks[rendered:].
const chunks = [];     // {s: stream, t: text, nl: newlines}, or {ph: phase, nl: 0}
let rendered = 0;
let pendingNl = 0;
let showAll = false;
let scheduled = false;
let pendingJump = null; // node id of a failure to jump to once the log is drawn
let lastFrame = 0;     // when the last frame rendered
let catchTimer = 0;
let gutter = 3;        // digits of the line numbers

const view = new LogView(el.log, {
  cap: CAP,
  onSummary: (text) => { el.result.textContent = text; },
});

// Page setup.
$("job-id").textContent = id;
$("crumb-id").textContent = shortID(id);
$("crumb-id").title = id;
$("nf-id").textContent = id;
$("raw").href = api + "/log";
$("notice-raw").href = api + "/log";
// A private server needs the token for the raw log too, and a plain link
// can't send it: fetch it with the token and open the text as a blob.
for (const link of [$("raw"), $("notice-raw")]) {
  link.addEventListener("click", async (e) => {
    if (!token()) return; // a public server: the plain link works
    e.preventDefault();
    const r = await apiFetch(api + "/log");
    const url = URL.createObjectURL(new Blob([await r.text()], { type: "text/plain;charset=utf-8" }));
    window.open(url, "_blank", "noopener");
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
  });
}
document.title = `${shortID(id)} · ci`;

// applyJob takes what the job JSON says.
function applyJob(j) {
  backlog = Math.max(backlog, j.last_seq || 0);
  job.created = parseTime(j.created_at);
  if (j.started_at) job.started = parseTime(j.started_at);
  if (j.finished_at) job.finished = parseTime(j.finished_at);
  if (j.args && j.args.length) {
    el.args.textContent = j.args.join(" ");
    el.argsItem.hidden = false;
  }
  if (j.replica) {
    el.replica.textContent = j.replica;
    el.replicaItem.hidden = false;
  }
  if (j.phase) job.phase = j.phase;
  setStatus(j.status, j.exit_code, j.reason);
}

// setStatus shows a status, never going back to an earlier one.
function setStatus(status, exitCode, reason) {
  if (rank(status) < rank(job.status)) return;
  job.status = status;
  if (exitCode !== undefined && exitCode !== null) job.exitCode = exitCode;
  if (reason) job.reason = reason;
  renderHeader();
}

function renderHeader() {
  const s = job.status;
  if (el.badge.dataset.status !== s) setBadge(el.badge, s);
  const ph = s === "running" ? job.phase : "";
  if (el.phase.dataset.phase !== ph) {
    el.phase.dataset.phase = ph;
    el.phase.textContent = PHASES[ph] || ph;
    el.phase.hidden = !ph;
  }
  document.title = `${statusLabel(s)} · ${shortID(id)} · ci`;
  if (job.exitCode !== null) {
    el.exit.textContent = String(job.exitCode);
    el.exit.className = job.exitCode !== 0 ? "bad" : "";
  }
  if (TERMINAL.has(s) && s !== "passed" && job.reason) {
    el.reason.hidden = false;
    el.reason.style.setProperty("--c", `var(--${s})`);
    el.reason.style.setProperty("--b", `var(--${s}-bg)`);
    el.reason.textContent = "";
    const b = document.createElement("strong");
    b.textContent = statusLabel(s) + ": ";
    el.reason.append(b, job.reason);
  }
  if (TERMINAL.has(s)) el.log.dataset.ended = "";
  tick();
}

// tick refreshes the times.
function tick() {
  const now = Date.now();
  el.submitted.textContent = formatRelative(job.created, now);
  el.submitted.title = formatAbsolute(job.created);
  el.submitted.dateTime = Number.isNaN(job.created) ? "" : new Date(job.created).toISOString();
  let d = "—";
  if (job.started > 0) {
    const running = !(job.finished > 0);
    d = formatDuration(Math.max(0, (running ? now : job.finished) - job.started), running);
  }
  if (el.duration.textContent !== d) el.duration.textContent = d;
}
setInterval(tick, 1000);

// loadJob fetches the job JSON: "ok", "notfound" or "error".
async function loadJob() {
  try {
    const r = await apiFetch(api);
    if (r.status === 404) return "notfound";
    if (!r.ok) return "error";
    applyJob(await r.json());
    return "ok";
  } catch {
    return "error";
  }
}

function notFound() {
  $("summary").hidden = true;
  $("output").hidden = true;
  $("notfound").hidden = false;
  setConn(el.conn, "ended");
  document.title = "Job not found · ci";
}

// start (re)loads the job and opens the event stream.
async function start() {
  const r = await loadJob();
  if (r === "notfound") return notFound();
  if (r === "error") return retry();
  connect();
}

function retry() {
  attempt++;
  setConn(el.conn, "reconnecting");
  setTimeout(start, backoff(attempt));
}

function connect() {
  const sock = openSocket(api + "/events?after=" + lastSeq);
  ws = sock;
  sock.onopen = () => {
    if (sock === ws) setConn(el.conn, "live");
  };
  sock.onmessage = (m) => {
    if (sock !== ws) return;
    let ev;
    try {
      ev = JSON.parse(m.data);
    } catch {
      return;
    }
    attempt = 0;
    if (!accept(ev)) {
      // A gap: start over from the last accepted event.
      ws = null;
      sock.close(4000, "gap");
      retry();
    }
  };
  sock.onclose = () => {
    if (sock !== ws) return;
    ws = null;
    if (ended) {
      setConn(el.conn, "ended");
      return;
    }
    retry();
  };
}

// accept takes one event; it returns false on a gap in seq.
function accept(ev) {
  if (typeof ev.seq !== "number" || ev.seq <= lastSeq) return true; // seen already
  if (ev.seq !== lastSeq + 1) return false;
  lastSeq = ev.seq;
  if (ev.type === "log") {
    const t = ev.text || "";
    let nl = 0;
    for (let i = t.indexOf("\n"); i >= 0; i = t.indexOf("\n", i + 1)) nl++;
    chunks.push({ s: ev.stream, t, nl });
    if (ev.stream === "stderr") el.legend.hidden = false;
    pendingNl += nl;
    schedule();
  } else if (ev.type === "phase") {
    if (ev.phase) {
      chunks.push({ ph: ev.phase, nl: 0 });
      schedule();
      job.phase = ev.phase;
      renderHeader();
    }
  } else if (ev.type === "result") {
    showResult(ev);
  } else if (ev.type === "status") {
    const at = parseTime(ev.time);
    if (ev.status === "running" && !(job.started > 0)) job.started = at;
    if (TERMINAL.has(ev.status)) {
      ended = true;
      if (!(job.finished > 0)) job.finished = at;
      schedule();
    }
    setStatus(ev.status, ev.exit_code, ev.reason);
  }
  return true;
}

// Rendering, once per frame.

function schedule() {
  if (scheduled) return;
  scheduled = true;
  if (document.hidden) setTimeout(frame, 100);
  else requestAnimationFrame(frame);
}

function frame() {
  scheduled = false;
  const t0 = performance.now();
  if (lastSeq < backlog && ws && t0 - lastFrame < CATCH_UP) {
    // Catching up: let more of the backlog arrive first.
    if (!catchTimer) {
      catchTimer = setTimeout(() => {
        catchTimer = 0;
        schedule();
      }, CATCH_UP - (t0 - lastFrame));
    }
    return;
  }
  lastFrame = t0;
  // Lines that would be capped away anyway are parsed, not rendered.
  if (!showAll && view.skip === 0 && pendingNl > CAP) view.fastForward(pendingNl - CAP);
  const made = view.made;
  while (rendered < chunks.length) {
    const c = chunks[rendered++];
    pendingNl -= c.nl;
    if (c.ph) view.phase(c.ph);
    else view.write(c.s, c.t, c.nl);
    if (performance.now() - t0 > BUDGET || view.made - made > LINE_BUDGET) break;
  }
  view.trim();
  const hidden = view.hidden;
  el.notice.hidden = hidden === 0;
  if (hidden > 0) {
    el.noticeText.textContent = `${hidden.toLocaleString()} earlier ${hidden === 1 ? "line" : "lines"} hidden —`;
  }
  const n = view.lines;
  el.lines.textContent = n ? `${n.toLocaleString()} ${n === 1 ? "line" : "lines"}` : "";
  const gw = Math.max(3, String(n).length);
  if (gw !== gutter) {
    gutter = gw;
    el.log.style.setProperty("--gw", gw + "ch");
  }
  if (sticky) toEnd();
  if (pendingJump) {
    const nodeid = pendingJump;
    pendingJump = null;
    jumpToTest(nodeid);
  }
  if (rendered < chunks.length) {
    schedule();
  } else if (ended) {
    el.log.dataset.complete = "true";
  }
}

el.showAll.addEventListener("click", () => {
  showAll = true;
  view.cap = Infinity;
  view.clear();
  rendered = 0;
  pendingNl = chunks.reduce((n, c) => n + c.nl, 0);
  delete el.log.dataset.complete;
  setSticky(false);
  el.scroller.scrollTop = 0;
  el.scroller.focus();
  schedule();
});

// Sticking to the bottom.

let sticky = true;
let autoTop = -1; // scrollTop we set ourselves

function atBottom() {
  const s = el.scroller;
  return s.scrollHeight - s.scrollTop - s.clientHeight < 8;
}

function toEnd() {
  const s = el.scroller;
  s.scrollTop = s.scrollHeight;
  autoTop = s.scrollTop;
}

function setSticky(v) {
  sticky = v;
  el.jump.hidden = v;
}

el.scroller.addEventListener("scroll", () => {
  if (Math.abs(el.scroller.scrollTop - autoTop) < 2) return;
  autoTop = -1;
  setSticky(atBottom());
}, { passive: true });
// Scrolling up by wheel or key unsticks at once, before the scroll event.
const overflows = () => el.scroller.scrollHeight > el.scroller.clientHeight;
el.scroller.addEventListener("wheel", (e) => {
  if (e.deltaY < 0 && overflows()) setSticky(false);
}, { passive: true });
el.scroller.addEventListener("keydown", (e) => {
  if (["ArrowUp", "PageUp", "Home"].includes(e.key) && overflows()) setSticky(false);
});
el.jump.addEventListener("click", () => {
  setSticky(true);
  toEnd();
  el.scroller.focus();
});
// Copying from the log copies its text exactly: each line element holds
// its own newline, which the browser's default (block per line, plus the
// newline) would double.
document.addEventListener("copy", (e) => {
  const sel = document.getSelection();
  if (!sel || sel.isCollapsed || sel.rangeCount === 0) return;
  const range = sel.getRangeAt(0);
  if (!el.log.contains(range.startContainer) || !el.log.contains(range.endContainer)) return;
  e.clipboardData.setData("text/plain", range.cloneContents().textContent);
  e.preventDefault();
});

new ResizeObserver(() => {
  if (sticky) toEnd();
}).observe(el.scroller);

if (id && !id.includes("/")) start();
else notFound();

// showResult renders a result event: the counts, and a table of failed
// tests whose rows jump to the test's section in the log.
function showResult(ev) {
  const t = ev.tests;
  if (!t) return;
  $("tests").hidden = false;
  const parts = [`${t.total} tests`, `${t.passed} passed`, `${t.failed} failed`,
    `${t.errors} ${t.errors === 1 ? "error" : "errors"}`, `${t.skipped} skipped`];
  $("test-counts").textContent = parts.join(" · ") + (ev.duration_s ? ` in ${ev.duration_s.toFixed(2)}s` : "");
  const body = $("failures-body");
  body.textContent = "";
  for (const f of ev.failures || []) {
    const tr = document.createElement("tr");
    const a = document.createElement("a");
    a.href = "#";
    a.textContent = f.nodeid;
    a.addEventListener("click", (e) => {
      e.preventDefault();
      jumpToTest(f.nodeid);
    });
    const td1 = document.createElement("td");
    td1.append(a);
    const td2 = document.createElement("td");
    td2.textContent = f.message || "";
    tr.append(td1, td2);
    body.append(tr);
  }
  $("failures").hidden = body.children.length === 0;
}

// jumpToTest scrolls the log to pytest's section of a failed test (its
// "____ test_name ____" header), or else to its "FAILED" summary line.
function jumpToTest(nodeid) {
  const name = nodeid.split("::").slice(1).join(".");
  const lines = [...el.log.querySelectorAll(".l")];
  const hit = lines.find((l) => /^_{3,} /.test(l.textContent) && l.textContent.includes(" " + name + " ")) ||
    lines.find((l) => l.textContent.includes(nodeid));
  if (!hit) {
    // The log before the result may not be on the page yet (it is drawn
    // a frame at a time): jump once it is.
    if (rendered < chunks.length) {
      pendingJump = nodeid;
      schedule();
    }
    return;
  }
  for (const l of el.log.querySelectorAll(".l.target")) l.classList.remove("target");
  hit.classList.add("target");
  hit.scrollIntoView({ block: "start" });
}
