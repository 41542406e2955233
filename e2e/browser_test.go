package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"ci/client"
	"ci/webui"

	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/cdproto/target"
	"github.com/chromedp/chromedp"
)

// The browser tests drive Debian's Chromium headless against the web UI.
// All but TestBrowserLogRenderer run a real ci-server on the real engine.
// Screenshots go to e2e/artifacts/.

// rendererCases runs the ANSI parser and the log view in the page on
// chunks of output and serialises what they render: text as is, a span as
// <classes;color;bg background>text</>, a stderr line prefixed with "!".
const rendererCases = `(async () => {
  const { LogView } = await import("/static/logview.js");
  const ser = (root) => [...root.querySelectorAll(".l")].map((l) =>
    (l.classList.contains("le") ? "!" : "") + [...l.childNodes].map((n) => n.nodeType === 3 ? n.data :
      "<" + n.className + (n.style.color ? ";" + n.style.color : "") +
      (n.style.backgroundColor ? ";bg " + n.style.backgroundColor : "") + ">" + n.textContent + "</>").join("")).join("");
  const cases = [
    ["split SGR", [["stdout", "a\x1b"], ["stdout", "[31"], ["stdout", "mRED\x1b[0"], ["stdout", "m b\n"]], "a<c1>RED</> b\n"],
    ["split CSI, three chunks", [["stdout", "\x1b["], ["stdout", "1;3"], ["stdout", "2mX\x1b[m\n"]], "<c2 b>X</>\n"],
    ["bold green", [["stdout", "\x1b[1;32mBOLDGREEN\x1b[0m\n"]], "<c2 b>BOLDGREEN</>\n"],
    ["bright and background", [["stdout", "\x1b[91;44mX\x1b[49mY\x1b[39mZ\n"]], "<c9 g4>X</><c9>Y</>Z\n"],
    ["256 colours", [["stdout", "\x1b[38;5;196mA\x1b[38;5;3mB\x1b[48;5;240mC\x1b[m\n"]], "<;rgb(255, 0, 0)>A</><c3>B</><c3;bg rgb(88, 88, 88)>C</>\n"],
    ["truecolor", [["stdout", "\x1b[38;2;1;2;3mT\x1b[38:2::10:20:30mU\x1b[38:2:40:50:60mV\x1b[0m\n"]], "<;rgb(1, 2, 3)>T</><;rgb(10, 20, 30)>U</><;rgb(40, 50, 60)>V</>\n"],
    ["attributes and their resets", [["stdout", "\x1b[1;2;3;4;9mS\x1b[22;23;24;29mT\n"]], "<b d i u s>S</>T\n"],
    ["inverse", [["stdout", "\x1b[7mI\x1b[31mJ\x1b[27mK\x1b[0m\n"]], "<ci gi>I</><ci g1>J</><c1>K</>\n"],
    ["other sequences dropped", [["stdout", "A\x1b[2K\x1b[1G\x1b[?25l\x1b]0;title\x07B\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\\x1b(B\x1b7C\x1bP1$r\x1b\\D\n"]], "ABlinkCD\n"],
    ["controls dropped, tab kept", [["stdout", "a\x07b\x08c\x00d\te\x7f\n"]], "abcd\te\n"],
    ["carriage return rewrites the line", [["stdout", "50%\r100%\n"]], "100%\n"],
    ["CRLF", [["stdout", "a\r\nb\r\n"]], "a\nb\n"],
    ["CR across chunks", [["stdout", "x\r"], ["stdout", "y\n"]], "y\n"],
    ["OSC split across chunks", [["stdout", "\x1b"], ["stdout", "]0;t"], ["stdout", "itle\x1b"], ["stdout", "\\Z\n"]], "Z\n"],
    ["malformed CSI", [["stdout", "\x1b[12\x01x\n"]], "x\n"],
    ["stderr", [["stdout", "out\n"], ["stderr", "oops\n"], ["stderr", "\x1b[33mW\x1b[0m\n"]], "out\n!<e>oops</>\n!<c3 e>W</>\n"],
    ["empty lines", [["stdout", "\n\nx\n"]], "\n\nx\n"],
    ["unterminated last line", [["stdout", "a\nb"]], "a\nb"],
    ["style survives chunks", [["stdout", "\x1b[32m.."], ["stdout", "..\x1b[0m [100%]\n"]], "<c2>....</> [100%]\n"],
  ];
  const out = [];
  const mk = (cap) => {
    const root = document.createElement("div");
    root.className = "log";
    document.body.append(root);
    const r = { root, summary: "" };
    r.view = new LogView(root, { cap, onSummary: (s) => { r.summary = s; } });
    return r;
  };
  for (const [name, chunks, want] of cases) {
    const { root, view } = mk(Infinity);
    for (const [s, t] of chunks) view.write(s, t);
    out.push({ name, got: ser(root), want });
    root.remove();
  }
  {
    const r = mk(Infinity);
    r.view.write("stdout", "\x1b[32m====== \x1b[1m4 passed\x1b[0m\x1b[32m in 4.05s ======\x1b[0m\n");
    out.push({ name: "summary", got: r.summary, want: "4 passed in 4.05s" });
    r.root.remove();
  }
  {
    // Cap: 5,000 lines in chunks of 100 with a cap of 1,000.
    const r = mk(1000);
    let max = 0;
    for (let c = 0; c < 50; c++) {
      let s = "";
      for (let i = c * 100 + 1; i <= c * 100 + 100; i++) s += "line " + i + "\n";
      r.view.write("stdout", s);
      r.view.trim();
      max = Math.max(max, r.root.querySelectorAll(".l").length);
    }
    const ls = r.root.querySelectorAll(".l");
    out.push({ name: "cap: most lines in the DOM", got: String(max <= 1000), want: "true" });
    out.push({ name: "cap: last line", got: ls[ls.length - 1].textContent, want: "line 5000\n" });
    out.push({ name: "cap: hidden + shown", got: String(r.view.hidden + ls.length), want: "5000" });
    out.push({ name: "cap: first shown line", got: ls[0].textContent, want: "line " + (r.view.hidden + 1) + "\n" });
    out.push({ name: "cap: line numbers", got: ls[0].style.counterSet, want: "ln " + (r.view.hidden + 1) });
    r.root.remove();
  }
  {
    // Fast-forward: lines that would be capped away are not rendered.
    const r = mk(1000);
    r.view.write("stdout", "\x1b[31mpartial ");
    r.view.fastForward(4000);
    let s = "";
    for (let i = 1; i <= 5000; i++) s += "line " + i + "\n";
    r.view.write("stdout", s);
    r.view.trim();
    const ls = r.root.querySelectorAll(".l");
    out.push({ name: "fast-forward: lines", got: String(ls.length), want: "1000" });
    out.push({ name: "fast-forward: first", got: ls[0].innerHTML, want: '<span class="c1">line 4001</span>\n' });
    out.push({ name: "fast-forward: hidden", got: String(r.view.hidden), want: "4000" });
    r.root.remove();
  }
  {
    // Fast-forward over whole chunks that are only counted.
    const r = mk(1000);
    r.view.write("stdout", "\x1b[32mgreen ", 0);
    r.view.fastForward(4000);
    for (let c = 0; c < 50; c++) {
      let s = "";
      for (let i = c * 100 + 1; i <= c * 100 + 100; i++) s += "line " + i + (i % 250 === 0 ? "\r" : "") + "\n";
      r.view.write("stdout", s, 100);
    }
    r.view.write("stdout", "last", 0);
    r.view.trim();
    const ls = r.root.querySelectorAll(".l");
    out.push({ name: "chunk fast-forward: first", got: ls[0].innerHTML, want: '<span class="c2">line 4501</span>\n' });
    out.push({ name: "chunk fast-forward: count", got: ls.length + " " + r.view.hidden + " " + r.view.lines, want: "501 4500 5001" });
    r.root.remove();
  }
  return out;
})()`

// TestBrowserLogRenderer checks the ANSI parser and the log view in the
// browser, on output split at awkward places. It needs no engine.
func TestBrowserLogRenderer(t *testing.T) {
	b := newBrowser(t)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /blank", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprint(w, `<!doctype html><html><head><link rel="stylesheet" href="/static/app.css"></head><body></body></html>`)
	})
	mux.Handle("/", webui.Handler())
	ts := httptest.NewServer(mux)
	defer ts.Close()
	b.open(ts.URL + "/blank")
	type result struct{ Name, Got, Want string }
	for _, r := range eval[[]result](b, rendererCases) {
		if r.Got != r.Want {
			t.Errorf("%s:\n got %q\nwant %q", r.Name, r.Got, r.Want)
		}
	}
}

// logText is the text of the rendered log.
const logText = `document.getElementById("log").textContent`

// TestBrowserJobProgress watches a job of four one-second tests: its file
// name and progress dots show while it runs, then the summary and the
// passed badge.
func TestBrowserJobProgress(t *testing.T) {
	needBrowser(t)
	needEngine(t)
	s := startServer(t, t.TempDir())
	b := newBrowser(t)
	id := submitAsync(t, s, fixture(t, "webprogress"))
	b.open(s.url + "/jobs/" + id)

	// One condition, checked at once: still running, and dots already.
	b.wait("progress dots while running",
		`document.getElementById("badge").dataset.status === "running" && /test_progress\.py \.{2,}/.test(`+logText+`)`,
		time.Minute)
	b.screenshots("job-running")
	running := eval[string](b, `document.getElementById("duration").textContent`)
	if !regexp.MustCompile(`^\d+s$`).MatchString(running) {
		t.Errorf("duration while running = %q, want whole seconds", running)
	}

	b.wait("summary and passed badge",
		`document.getElementById("badge").dataset.status === "passed" && /4 passed/.test(`+logText+`) && document.getElementById("log").dataset.complete === "true"`,
		time.Minute)
	b.screenshots("job-passed")

	got := eval[map[string]string](b, `(() => {
		const g = (id) => document.getElementById(id);
		return { badge: g("badge").textContent, exit: g("exit").textContent, result: g("result").textContent,
			raw: g("raw").getAttribute("href"), conn: g("conn").dataset.state, title: document.title,
			duration: g("duration").textContent, reasonHidden: String(g("reason").hidden) };
	})()`)
	want := map[string]string{"badge": "passed", "exit": "0", "raw": "/api/v1/jobs/" + id + "/log", "conn": "ended", "reasonHidden": "true"}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
	if !strings.HasPrefix(got["result"], "4 passed in ") {
		t.Errorf("result = %q, want the pytest summary", got["result"])
	}
	if !strings.HasPrefix(got["title"], "passed · ") {
		t.Errorf("title = %q", got["title"])
	}
	if !regexp.MustCompile(`^\d+\.\ds$`).MatchString(got["duration"]) {
		t.Errorf("final duration = %q, want like 4.1s", got["duration"])
	}

	// Copying the whole log copies its text exactly, one newline a line.
	copied := eval[[]string](b, `(() => {
		const log = document.getElementById("log");
		const range = document.createRange();
		range.selectNodeContents(log);
		const sel = document.getSelection();
		sel.removeAllRanges();
		sel.addRange(range);
		const e = new ClipboardEvent("copy", { clipboardData: new DataTransfer(), bubbles: true, cancelable: true });
		log.dispatchEvent(e);
		sel.removeAllRanges();
		return [e.clipboardData.getData("text/plain"), log.textContent];
	})()`)
	if copied[0] != copied[1] || !strings.Contains(copied[0], "collected 4 items\n\ntest_progress.py") {
		t.Errorf("copied %q, want the log text %q", copied[0], copied[1])
	}

	// The raw log link serves the same text.
	resp, err := http.Get(s.url + "/api/v1/jobs/" + id + "/log")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("raw log: status %d", resp.StatusCode)
	}
}

// TestBrowserColors checks that colour output is rendered as coloured
// elements, pytest's own colours included, with no escape codes left.
func TestBrowserColors(t *testing.T) {
	needBrowser(t)
	needEngine(t)
	s := startServer(t, t.TempDir())
	b := newBrowser(t)
	id := submitAsync(t, s, fixture(t, "webcolor"))
	b.open(s.url + "/jobs/" + id)
	b.wait("the failed job, fully rendered",
		`document.getElementById("badge").dataset.status === "failed" && document.getElementById("log").dataset.complete === "true"`,
		time.Minute)

	type span struct{ Text, Class, Color, Weight, Style, Decoration string }
	spans := eval[[]span](b, `[...document.querySelectorAll("#log span")].map((e) => {
		const cs = getComputedStyle(e);
		return { Text: e.textContent, Class: e.className, Color: cs.color, Weight: cs.fontWeight,
			Style: cs.fontStyle, Decoration: cs.textDecorationLine };
	})`)
	find := func(text string) *span {
		for i := range spans {
			if strings.TrimSpace(spans[i].Text) == text {
				return &spans[i]
			}
		}
		t.Errorf("no span with text %q", text)
		return nil
	}
	// Light theme palette: --a1 #cf222e, --a2 #1a7f37.
	if sp := find("RED"); sp != nil && (sp.Class != "c1" || sp.Color != "rgb(207, 34, 46)") {
		t.Errorf("RED: class %q color %s, want c1 rgb(207, 34, 46)", sp.Class, sp.Color)
	}
	if sp := find("BOLDGREEN"); sp != nil && (sp.Color != "rgb(26, 127, 55)" || sp.Weight != "700") {
		t.Errorf("BOLDGREEN: class %q color %s weight %s, want green and bold", sp.Class, sp.Color, sp.Weight)
	}
	if sp := find("ORANGE256"); sp != nil && sp.Color != "rgb(255, 135, 0)" {
		t.Errorf("ORANGE256: color %s, want rgb(255, 135, 0)", sp.Color)
	}
	if sp := find("PURPLE24"); sp != nil && sp.Color != "rgb(120, 60, 200)" {
		t.Errorf("PURPLE24: color %s, want rgb(120, 60, 200)", sp.Color)
	}
	if sp := find("ITALICUNDER"); sp != nil && (sp.Style != "italic" || sp.Decoration != "underline") {
		t.Errorf("ITALICUNDER: style %s decoration %s", sp.Style, sp.Decoration)
	}
	// pytest's own colours (PY_COLORS=1): the failure summary in red.
	pytestRed := false
	for _, sp := range spans {
		if strings.Contains(sp.Class, "c1") && (strings.Contains(sp.Text, "failed") || strings.Contains(sp.Text, "FAILED")) {
			pytestRed = true
		}
	}
	if !pytestRed {
		t.Errorf("no red span with pytest's \"failed\": pytest's colours did not come through (does the server run pytest with PY_COLORS=1?)")
	}

	text := eval[string](b, `document.body.innerText + "\n" + document.getElementById("log").textContent`)
	if strings.ContainsRune(text, 0x1b) {
		t.Errorf("the page contains an ESC character")
	}
	if m := regexp.MustCompile(`\[[0-9;]*m`).FindString(text); m != "" {
		t.Errorf("the page contains escape residue %q", m)
	}
	for _, w := range []string{"RED", "BOLDGREEN", "1 failed, 1 passed"} {
		if !strings.Contains(text, w) {
			t.Errorf("page text lacks %q", w)
		}
	}
	// stderr is marked, and still readable (not the background colour).
	errLine := eval[map[string]string](b, `(() => {
		const l = [...document.querySelectorAll("#log .l.le")].find((l) => l.textContent.includes("STDERRLINE"));
		return l ? { color: getComputedStyle(l.querySelector(".e")).color, bg: getComputedStyle(l).backgroundColor,
			legend: String(!document.getElementById("legend").hidden) } : {};
	})()`)
	if errLine["color"] == "" || errLine["legend"] != "true" {
		t.Errorf("stderr line not marked as such: %v", errLine)
	}

	got := eval[map[string]string](b, `({ exit: document.getElementById("exit").textContent,
		reason: document.getElementById("reason").hidden ? "" : document.getElementById("reason").textContent })`)
	if got["exit"] != "1" || got["reason"] == "" {
		t.Errorf("exit code %q, reason %q: want 1 and a reason", got["exit"], got["reason"])
	}
	b.screenshots("job-failed-colors")
	_ = id
}

// TestBrowserJobList opens the list, then submits jobs: their rows appear
// without a reload and their badges follow them to the end.
func TestBrowserJobList(t *testing.T) {
	needBrowser(t)
	needEngine(t)
	s := startServer(t, t.TempDir())
	b := newBrowser(t)
	b.open(s.url + "/")
	b.wait("the live list", `document.getElementById("conn").dataset.state === "live" && !document.getElementById("empty").hidden`, 30*time.Second)
	b.screenshot("list-empty.png")
	eval[bool](b, `window.__sameDocument = true`)

	failing := submitAsync(t, s, fixture(t, "failing"))
	b.wait("the failing job's final badge", `(() => {
		const r = document.querySelector('tr.row[data-id=`+jsString(failing)+`]');
		return r && r.querySelector(".badge").dataset.status === "failed";
	})()`, time.Minute)
	progress := submitAsync(t, s, fixture(t, "webprogress"))
	row := `document.querySelector('tr.row[data-id=` + jsString(progress) + `]')`
	b.wait("the new row, running", row+` && `+row+`.querySelector(".badge").dataset.status === "running"`, time.Minute)
	b.wait("a ticking duration", `/^[1-9]\d*s$/.test(`+row+`.querySelector(".dur").textContent)`, 30*time.Second)
	b.screenshots("list-running")
	b.wait("the passed badge", row+`.querySelector(".badge").dataset.status === "passed"`, time.Minute)

	got := eval[map[string]string](b, `(() => {
		const rows = [...document.querySelectorAll("tr.row")];
		const r = rows[0];
		return { same: String(window.__sameDocument === true), rows: String(rows.length), first: r.dataset.id,
			href: r.querySelector("a").getAttribute("href"), title: r.querySelector("a").title,
			short: r.querySelector("a").textContent, exit: r.querySelector(".exit").textContent,
			exit2: rows[1].querySelector(".exit").textContent, when: r.querySelector("time").textContent,
			ths: String(document.querySelectorAll("thead th").length) };
	})()`)
	want := map[string]string{"same": "true", "rows": "2", "first": progress, "href": "/jobs/" + progress,
		"title": progress, "short": progress[:10], "exit": "0", "exit2": "1", "ths": "5"}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
	if !strings.HasSuffix(got["when"], "ago") && got["when"] != "just now" {
		t.Errorf("submitted = %q, want a relative time", got["when"])
	}
	b.screenshots("list")

	// Rows are links: keyboard focus on the first one and Enter opens it.
	eval[bool](b, `(document.querySelector("tr.row a").focus(), true)`)
	b.do(30*time.Second, func(ctx context.Context, tg *chromedp.Target) (chromedp.Void, error) {
		_, err := chromedp.WaitEvent(page.LoadEventFired, nil, pressEnter())(ctx, tg)
		return chromedp.Void{}, err
	})
	b.wait("the job page", `location.pathname === "/jobs/`+progress+`" && document.getElementById("badge").dataset.status === "passed"`, 30*time.Second)
}

// TestBrowserReconnect cuts the page's connections mid-job: the page says
// it is reconnecting, resumes, and shows every line exactly once.
func TestBrowserReconnect(t *testing.T) {
	needBrowser(t)
	needEngine(t)
	s := startServer(t, t.TempDir())
	p := startProxy(t, s.addr)
	b := newBrowser(t)
	id := submitAsync(t, s, fixture(t, "webcount"))
	b.open(p.url + "/jobs/" + id)
	b.wait("tick 010", `/tick 010\n/.test(`+logText+`)`, time.Minute)

	p.refuse(true)
	p.cut()
	b.wait("reconnecting", `document.getElementById("conn").dataset.state === "reconnecting" && document.getElementById("conn").textContent.includes("reconnecting")`, 30*time.Second)
	b.screenshot("job-reconnecting.png")
	if st := eval[string](b, `document.getElementById("badge").dataset.status`); st != "running" {
		t.Logf("note: badge %q when the connection dropped (the job may have ended)", st)
	}
	before := p.connections()
	p.refuse(false)

	b.wait("the end of the job", `document.getElementById("badge").dataset.status === "passed" && document.getElementById("log").dataset.complete === "true"`, time.Minute)
	if p.connections() <= before {
		t.Errorf("no new connection after the drop")
	}
	text := eval[string](b, logText)
	for i := 1; i <= 40; i++ {
		line := fmt.Sprintf("tick %03d\n", i)
		if n := strings.Count(text, line); n != 1 {
			t.Errorf("%q appears %d times, want 1", strings.TrimSpace(line), n)
		}
	}
	if n := strings.Count(text, "1 passed"); n != 1 {
		t.Errorf("summary appears %d times, want 1", n)
	}
	// The page's text is the job's whole log, with nothing missing.
	resp, err := http.Get(s.url + "/api/v1/jobs/" + id + "/log")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var raw strings.Builder
	if _, err := io.Copy(&raw, resp.Body); err != nil {
		t.Fatal(err)
	}
	if plain := stripANSI(raw.String()); plain != text {
		t.Errorf("page log differs from the raw log:\npage: %q\nraw:  %q", tail(text, 300), tail(plain, 300))
	}
}

// TestBrowserNotFound opens a job that does not exist, and a page that
// does not exist.
func TestBrowserNotFound(t *testing.T) {
	needBrowser(t)
	s := startServer(t, t.TempDir())
	b := newBrowser(t)
	b.open(s.url + "/jobs/01NOSUCHJOB0000000000000000")
	b.wait("the not found page", `!document.getElementById("notfound").hidden && document.getElementById("output").hidden`, 30*time.Second)
	text := eval[string](b, `document.body.innerText`)
	if !strings.Contains(text, "Job not found") || !strings.Contains(text, "01NOSUCHJOB0000000000000000") {
		t.Errorf("page says %q", text)
	}
	b.screenshot("job-notfound.png")

	b.open(s.url + "/no/such/page")
	if text := eval[string](b, `document.body.innerText`); !strings.Contains(text, "Page not found") {
		t.Errorf("page says %q", text)
	}
}

// domCap is the most line elements the job page keeps in the DOM (CAP in
// webui/static/job.js).
const domCap = 5000

// TestBrowserLargeLog opens the page of a job that printed 200,000 lines:
// the page renders its end, keeps at most the cap of lines in the DOM and
// stays responsive.
func TestBrowserLargeLog(t *testing.T) {
	needBrowser(t)
	needEngine(t)
	s := startServer(t, t.TempDir())
	b := newBrowser(t)
	id := submitAsync(t, s, fixture(t, "webbig"))
	waitStatus(t, s, id, "passed")
	j, err := client.New(s.url).Job(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	b.open(s.url + "/jobs/" + id)
	ms := waitUntil[float64](b, "the last line",
		`document.getElementById("log").dataset.complete === "true" && performance.now()`, 2*time.Minute)
	wall := time.Since(start)
	got := eval[map[string]float64](b, `(() => {
		const ls = document.querySelectorAll("#log .l");
		const last = [...ls].reverse().find((l) => l.textContent.startsWith("line "));
		return { lines: ls.length, last: last ? Number(last.textContent.slice(5, 11)) : 0,
			longest: Math.max(0, ...window.__longTasks), longTasks: window.__longTasks.length,
			hidden: document.getElementById("notice").hidden ? 0 : 1,
			messages: window.__ws.messages, lastMessage: window.__ws.last };
	})()`)
	t.Logf("large log: %d events; last event received %.0f ms and final line rendered %.0f ms after navigation start (%v wall); %v line elements in the DOM; longest task %.0f ms, %v long tasks",
		j.LastSeq, got["lastMessage"], ms, wall.Round(time.Millisecond), got["lines"], got["longest"], got["longTasks"])
	if got["last"] != 200000 {
		t.Errorf("last rendered line = %v, want 200000", got["last"])
	}
	if got["lines"] > domCap || got["lines"] < 1000 {
		t.Errorf("%v line elements in the DOM, want at most the cap of %d", got["lines"], domCap)
	}
	if got["hidden"] != 1 {
		t.Errorf("no notice of hidden lines")
	}
	if got["longest"] > 1000 {
		t.Errorf("a task blocked the page for %.0f ms", got["longest"])
	}
	// The page still answers quickly.
	t0 := time.Now()
	eval[bool](b, `new Promise((r) => requestAnimationFrame(() => r(true)))`)
	if d := time.Since(t0); d > 2*time.Second {
		t.Errorf("a frame took %v after rendering", d)
	}
	notice := strings.Join(strings.Fields(eval[string](b, `document.getElementById("notice").innerText`)), " ")
	if !regexp.MustCompile(`^[\d,]+ earlier lines hidden — show all · open raw log$`).MatchString(notice) {
		t.Errorf("notice = %q", notice)
	}
	b.screenshot("job-large.png")

	// Scrolled up, the view stays put and offers a way back to the end.
	b.do(10*time.Second, wheel(600, 500, -3000))
	b.wait("the jump to end button", `!document.getElementById("jump").hidden`, 10*time.Second)
	b.screenshot("job-large-scrolled.png")
	if d := eval[float64](b, `(() => { const s = document.getElementById("scroller"); return s.scrollHeight - s.scrollTop - s.clientHeight; })()`); d < 1000 {
		t.Errorf("after scrolling up by 3000px, %.0fpx from the end", d)
	}
	eval[bool](b, `(document.getElementById("jump").click(), true)`)
	b.wait("the end again", `(() => {
		const s = document.getElementById("scroller");
		return document.getElementById("jump").hidden && s.scrollHeight - s.scrollTop - s.clientHeight < 8;
	})()`, 10*time.Second)

	// Show all renders every line, without freezing the page.
	eval[bool](b, `(window.__longTasks.length = 0, document.getElementById("show-all").click(), true)`)
	ms0 := eval[float64](b, `performance.now()`)
	ms = waitUntil[float64](b, "every line", `document.getElementById("log").dataset.complete === "true" && performance.now()`, 2*time.Minute)
	all := eval[map[string]float64](b, `({ lines: document.querySelectorAll("#log .l").length,
		hidden: document.getElementById("notice").hidden ? 0 : 1, longest: Math.max(0, ...window.__longTasks) })`)
	t.Logf("show all: %v line elements in %.0f ms; longest task %.0f ms", all["lines"], ms-ms0, all["longest"])
	// As many lines as the raw log has (200,000 printed, plus pytest's own).
	want := eval[float64](b, `fetch("/api/v1/jobs/" + location.pathname.split("/").pop() + "/log")
		.then((r) => r.text()).then((t) => t.split("\n").length - (t.endsWith("\n") ? 1 : 0))`)
	if want < 200000 || all["lines"] != want || all["hidden"] != 0 {
		t.Errorf("after show all: %v lines, notice shown %v; want %v lines (the raw log's) and no notice", all["lines"], all["hidden"], want)
	}
}

// TestBrowserPrivateServer opens the pages of a server started with
// --token --private: the page asks for the token once, then shows the job
// live (the WebSocket carries the token as a subprotocol), and the list
// opens in the same tab without asking again.
func TestBrowserPrivateServer(t *testing.T) {
	needBrowser(t)
	needEngine(t)
	const token = "browser-test-token-0123456789"
	s := startServer(t, t.TempDir(), "--token", token, "--private")
	t.Setenv("CI_TOKEN", token)
	id := submitAsync(t, s, fixture(t, "passing"))

	b := newBrowser(t)
	b.open(s.url + "/jobs/" + id)
	b.wait("the token dialog", `!!document.querySelector(".token-dialog[open] input")`, 30*time.Second)
	b.screenshot("token-dialog.png")
	eval[bool](b, `(() => {
		document.querySelector(".token-dialog input").value = "not-the-token";
		document.querySelector(".token-dialog form").requestSubmit();
		return true;
	})()`)
	b.wait("the dialog again, saying the token was refused", `(() => {
		const d = document.querySelector(".token-dialog[open]");
		return d && d.textContent.includes("not accepted");
	})()`, 30*time.Second)
	eval[bool](b, `(() => {
		document.querySelector(".token-dialog input").value = `+jsString(token)+`;
		document.querySelector(".token-dialog form").requestSubmit();
		return true;
	})()`)
	b.wait("the passed job with its log", `document.getElementById("badge").dataset.status === "passed" &&
		document.getElementById("scroller").innerText.includes("2 passed")`, time.Minute)

	// The raw log link fetches the log with the token and opens it.
	opened := chromedp.WaitNewTarget(b.ctx, func(info *target.Info) bool { return strings.HasPrefix(info.URL, "blob:") })
	eval[bool](b, `(document.getElementById("raw").click(), true)`)
	select {
	case id := <-opened:
		// The new tab holds the log; close it, so the job list below runs
		// in a visible tab (animation frames pause in hidden ones).
		tctx, _ := chromedp.NewContext(b.ctx, chromedp.WithTargetID(id))
		ctx, cancel := context.WithTimeout(tctx, 30*time.Second)
		text, err := chromedp.Run(ctx, chromedp.Poll[string](`document.body && document.body.innerText.includes("passed") && document.body.innerText`))
		cancel()
		if err != nil || !strings.Contains(text, "2 passed") {
			t.Errorf("the raw log tab shows %q (%v), want the log", text, err)
		}
		if err := chromedp.Cancel(tctx); err != nil {
			t.Errorf("close the raw log tab: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("the raw log link opened no page with the log\n%s", b.state())
	}

	b.open(s.url + "/")
	b.wait("the list without a new prompt", `!!document.querySelector('tr.row[data-id=`+jsString(id)+`]') && !document.querySelector(".token-dialog")`, 30*time.Second)
}

// TestBrowserTestResults opens a failed job: the page shows the test
// counts and a table of failures whose rows jump to the test's section of
// the log.
func TestBrowserTestResults(t *testing.T) {
	needBrowser(t)
	needEngine(t)
	s := startServer(t, t.TempDir())
	id := submitAsync(t, s, fixture(t, "failing"))
	b := newBrowser(t)
	b.open(s.url + "/jobs/" + id)
	b.wait("the test results", `!document.getElementById("tests").hidden && !document.getElementById("failures").hidden`, 2*time.Minute)
	counts := eval[string](b, `document.getElementById("test-counts").textContent`)
	if !strings.HasPrefix(counts, "2 tests · 1 passed · 1 failed · 0 errors · 0 skipped") {
		t.Errorf("counts %q, want 2 tests, 1 passed, 1 failed", counts)
	}
	row := eval[string](b, `document.querySelector("#failures-body a").textContent`)
	if row != "test_broken.py::test_wrong_answer" {
		t.Errorf("failure row %q, want test_broken.py::test_wrong_answer", row)
	}
	eval[bool](b, `(document.querySelector("#failures-body a").click(), true)`)
	b.wait("the jump to the test's section", `(() => {
		const l = document.querySelector("#log .l.target");
		return l && l.textContent.includes("test_wrong_answer");
	})()`, 10*time.Second)
	b.screenshots("job-test-results")
}
