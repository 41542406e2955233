// list.js: the job list, live through GET /api/v1/events.

import {
  backoff, formatAbsolute, formatDuration, formatRelative, jobDuration,
  parseTime, setBadge, setConn, shortID, TERMINAL, apiFetch, openSocket,
} from "./common.js";

const LIMIT = 50;  // jobs asked for in a snapshot
const KEEP = 200;  // rows kept as new jobs arrive

const tbody = document.getElementById("jobs");
const empty = document.getElementById("empty");
const loading = document.getElementById("loading");
const conn = document.getElementById("conn");

let jobs = new Map();  // id -> job
const rows = new Map(); // id -> row element
let ws = null;
let attempt = 0;
let loaded = false;    // a snapshot (or the fallback list) was shown
let drawn = false;     // the first draw happened: later rows are new
let scheduled = false;

// upsert applies a job update unless it is older than what we hold.
function upsert(job) {
  if (!job || !job.id) return;
  const old = jobs.get(job.id);
  if (old && (job.last_seq ?? 0) < (old.last_seq ?? 0)) return;
  jobs.set(job.id, job);
}

function connect() {
  const sock = openSocket("/api/v1/events?limit=" + LIMIT);
  ws = sock;
  sock.onmessage = (m) => {
    if (sock !== ws) return;
    let msg;
    try {
      msg = JSON.parse(m.data);
    } catch {
      return;
    }
    if (msg.type === "snapshot") {
      jobs = new Map();
      for (const j of msg.jobs || []) upsert(j);
      loaded = true;
      attempt = 0;
      setConn(conn, "live");
    } else if (msg.type === "job") {
      upsert(msg.job);
    }
    schedule();
  };
  sock.onclose = () => {
    if (sock !== ws) return;
    attempt++;
    setConn(conn, "reconnecting");
    if (!loaded) fallback();
    setTimeout(connect, backoff(attempt));
  };
}

// fallback shows the list from GET /api/v1/jobs while the live stream
// can't be had.
async function fallback() {
  try {
    const r = await apiFetch("/api/v1/jobs?limit=" + LIMIT);
    if (!r.ok || loaded) return;
    const data = await r.json();
    if (loaded) return;
    for (const j of data.jobs || []) upsert(j);
    loaded = true;
    schedule();
  } catch {
    // the server is away; the reconnect loop keeps trying
  }
}

function schedule() {
  if (scheduled) return;
  scheduled = true;
  requestAnimationFrame(draw);
}

function newestFirst(a, b) {
  const ta = parseTime(a.created_at) || 0, tb = parseTime(b.created_at) || 0;
  if (ta !== tb) return tb - ta;
  return a.id < b.id ? 1 : a.id > b.id ? -1 : 0;
}

function draw() {
  scheduled = false;
  const list = [...jobs.values()].sort(newestFirst).slice(0, KEEP);
  const keep = new Set(list.map((j) => j.id));
  for (const [id, tr] of rows) {
    if (!keep.has(id)) {
      tr.remove();
      rows.delete(id);
      jobs.delete(id);
    }
  }
  let prev = null;
  for (const j of list) {
    let tr = rows.get(j.id);
    if (!tr) {
      tr = makeRow(j);
      rows.set(j.id, tr);
      if (drawn) tr.classList.add("new");
    }
    update(tr, j);
    const want = prev ? prev.nextElementSibling : tbody.firstElementChild;
    if (want !== tr) tbody.insertBefore(tr, want);
    prev = tr;
  }
  if (loaded) {
    loading.hidden = true;
    empty.hidden = list.length > 0;
    drawn = true;
  }
}

function cell(tr, cls) {
  const td = document.createElement("td");
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}

function makeRow(j) {
  const tr = document.createElement("tr");
  tr.className = "row";
  tr.dataset.id = j.id;
  const id = cell(tr, "id");
  const a = document.createElement("a");
  a.href = "/jobs/" + encodeURIComponent(j.id);
  a.title = j.id;
  const code = document.createElement("code");
  code.textContent = shortID(j.id);
  a.appendChild(code);
  id.appendChild(a);
  const args = document.createElement("span");
  args.className = "args";
  id.appendChild(args);
  const badge = document.createElement("span");
  cell(tr, "status").appendChild(badge);
  const time = document.createElement("time");
  cell(tr, "submitted").appendChild(time);
  const dur = cell(tr, "num dur");
  const exit = cell(tr, "num exit");
  tr._c = { a, args, badge, time, dur, exit };
  return tr;
}

function update(tr, j) {
  const c = tr._c;
  tr._job = j;
  const label = (j.args || []).join(" ");
  if (c.args.textContent !== label) c.args.textContent = label;
  c.a.setAttribute("aria-label", `Job ${j.id}, ${j.status.replace(/_/g, " ")}`);
  if (c.badge.dataset.status !== j.status) setBadge(c.badge, j.status);
  c.badge.title = j.reason || "";
  const created = parseTime(j.created_at);
  c.time.dateTime = j.created_at || "";
  c.time.title = formatAbsolute(created);
  if (j.exit_code === undefined || j.exit_code === null) {
    c.exit.textContent = "—";
    c.exit.className = "num exit none";
  } else {
    c.exit.textContent = String(j.exit_code);
    c.exit.className = "num exit" + (j.exit_code !== 0 ? " bad" : "");
  }
  tick(tr, Date.now());
}

// tick refreshes what changes with time: relative times, running durations.
function tick(tr, now) {
  const j = tr._job, c = tr._c;
  const rel = formatRelative(parseTime(j.created_at), now);
  if (c.time.textContent !== rel) c.time.textContent = rel;
  const d = jobDuration(j, now);
  const running = !TERMINAL.has(j.status) && !j.finished_at && d >= 0;
  const text = d >= 0 ? formatDuration(d, running) : "—";
  if (c.dur.textContent !== text) c.dur.textContent = text;
  c.dur.classList.toggle("live", running);
  c.dur.classList.toggle("none", !(d >= 0));
}

setInterval(() => {
  const now = Date.now();
  for (const tr of rows.values()) tick(tr, now);
}, 1000);

setConn(conn, "connecting");
connect();
