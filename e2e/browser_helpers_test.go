package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/cdproto/input"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"
)

// chromiumPath is where Debian's chromium package puts the browser.
var chromiumPath = envOr("CI_CHROMIUM", "/usr/bin/chromium")

// artifacts is where the browser tests save their screenshots.
const artifacts = "artifacts"

// needBrowser skips the test locally when Chromium is missing, and fails
// it in CI, where a missing browser is a failure.
func needBrowser(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(chromiumPath); err == nil {
		return
	}
	msg := fmt.Sprintf("no Chromium at %s (apt-get install chromium, or set CI_CHROMIUM)", chromiumPath)
	if os.Getenv("CI") != "" {
		t.Fatalf("CI is set but the browser tests can't run: %s", msg)
	}
	t.Skipf("skipping: %s", msg)
}

// browser is one headless Chromium tab.
type browser struct {
	t   *testing.T
	ctx context.Context

	mu     sync.Mutex
	errors []string // uncaught exceptions and console errors of our pages
}

// pageHooks runs before any script of every page: it turns CSP violations
// into console errors, and records long tasks and WebSocket messages, for
// the tests to read.
const pageHooks = `
addEventListener("securitypolicyviolation", (e) => console.error("CSP violation: " + e.violatedDirective + " " + e.blockedURI));
window.__longTasks = [];
window.__ws = { messages: 0, last: 0 };
window.WebSocket = class extends WebSocket {
  constructor(...args) {
    super(...args);
    this.addEventListener("message", () => { window.__ws.messages++; window.__ws.last = performance.now(); });
  }
};
try {
  new PerformanceObserver((l) => { for (const e of l.getEntries()) window.__longTasks.push(e.duration); }).observe({ type: "longtask" });
} catch (e) {}
`

// newBrowser starts Chromium headless with a fresh profile; it stops when
// the test ends. The test fails if a page throws or logs an error.
func newBrowser(t *testing.T) *browser {
	t.Helper()
	needBrowser(t)
	b := &browser{t: t}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromiumPath),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.NoFirstRun,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 800),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx, chromedp.WithListener(b.listen))
	b.ctx = ctx
	t.Cleanup(func() {
		cancel()
		cancelAlloc()
	})
	// The first Run starts the browser and must not have a timeout.
	err := chromedp.Do(ctx, func(ctx context.Context, tg *chromedp.Target) (chromedp.Void, error) {
		_, err := cdp.Call(ctx, tg, page.AddScriptToEvaluateOnNewDocument, page.AddScriptToEvaluateOnNewDocumentParams{Source: pageHooks})
		return chromedp.Void{}, err
	})
	if err != nil {
		t.Fatalf("start Chromium: %v", err)
	}
	b.do(30*time.Second, chromedp.EmulateViewport(1280, 800))
	t.Cleanup(b.checkErrors)
	return b
}

func (b *browser) listen(ev any) {
	var msg string
	switch ev := ev.(type) {
	case *runtime.EventExceptionThrown:
		d := ev.ExceptionDetails
		msg = fmt.Sprintf("uncaught exception: %s %s:%d", d.Text, d.URL, d.LineNumber)
		if d.Exception != nil && d.Exception.Description != "" {
			msg += ": " + d.Exception.Description
		}
	case *runtime.EventConsoleAPICalled:
		if ev.Type != runtime.ConsoleAPICalledTypeError {
			return
		}
		var parts []string
		for _, a := range ev.Args {
			if a.Value != nil {
				parts = append(parts, string(a.Value))
			} else {
				parts = append(parts, a.Description)
			}
		}
		msg = "console.error: " + strings.Join(parts, " ")
	default:
		return
	}
	b.mu.Lock()
	b.errors = append(b.errors, msg)
	b.mu.Unlock()
}

func (b *browser) checkErrors() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, e := range b.errors {
		b.t.Errorf("page error: %s", e)
	}
}

// do runs actions with a deadline, failing the test on error.
func (b *browser) do(timeout time.Duration, actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, timeout)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		b.t.Fatalf("browser: %v\n%s", err, b.state())
	}
}

// open navigates to url and waits for the page to load.
func (b *browser) open(url string) {
	b.t.Helper()
	b.do(30*time.Second, chromedp.Navigate(url))
}

// eval evaluates a JavaScript expression in the page and decodes its value.
func eval[T any](b *browser, expr string) T {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, time.Minute)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr, chromedp.EvalAwaitPromise))
	if err != nil {
		b.t.Fatalf("evaluate %s: %v\n%s", expr, err, b.state())
	}
	return v
}

// waitUntil polls a JavaScript expression until it is truthy and returns
// its value; it fails the test after timeout, saying what it waited for.
func waitUntil[T any](b *browser, what, expr string, timeout time.Duration) T {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, timeout+10*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Poll[T](expr, chromedp.WithPollingTimeout(timeout)))
	if err != nil {
		b.t.Fatalf("waiting for %s: %v\n%s", what, err, b.state())
	}
	return v
}

// wait is waitUntil for a condition.
func (b *browser) wait(what, expr string, timeout time.Duration) {
	b.t.Helper()
	waitUntil[chromedp.Void](b, what, expr, timeout)
}

// state describes the page for failure messages.
func (b *browser) state() string {
	ctx, cancel := context.WithTimeout(b.ctx, 5*time.Second)
	defer cancel()
	s, err := chromedp.Run(ctx, chromedp.Evaluate[string](`(() => {
		const g = (id) => document.getElementById(id);
		const log = g("log") ? g("log").textContent : "";
		return JSON.stringify({
			url: location.href,
			conn: g("conn") && g("conn").dataset.state,
			badge: g("badge") && g("badge").textContent,
			rows: [...document.querySelectorAll("tr.row")].map(r => r.innerText.replace(/\s+/g, " ")),
			scroll: g("scroller") && [g("scroller").scrollTop, g("scroller").scrollHeight, g("scroller").clientHeight, g("jump").hidden].join(" "),
			logTail: log.slice(-1500),
			body: document.body ? document.body.innerText.slice(0, 600) : "",
		}, null, 1);
	})()`))
	if err != nil {
		return "page state: " + err.Error()
	}
	return "page state: " + s
}

// setDark emulates prefers-color-scheme: dark (or light).
func (b *browser) setDark(dark bool) {
	b.t.Helper()
	scheme := "light"
	if dark {
		scheme = "dark"
	}
	b.do(10*time.Second, func(ctx context.Context, tg *chromedp.Target) (chromedp.Void, error) {
		_, err := cdp.Call(ctx, tg, emulation.SetEmulatedMedia, emulation.SetEmulatedMediaParams{
			Features: []*emulation.MediaFeature{{Name: "prefers-color-scheme", Value: scheme}},
		})
		return chromedp.Void{}, err
	})
}

// screenshot saves a full-page PNG under artifacts/.
func (b *browser) screenshot(name string) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Fatalf("screenshot %s: %v", name, err)
	}
	if err := os.MkdirAll(artifacts, 0o755); err != nil {
		b.t.Fatal(err)
	}
	p := filepath.Join(artifacts, name)
	if err := os.WriteFile(p, png, 0o644); err != nil {
		b.t.Fatal(err)
	}
	b.t.Logf("screenshot: e2e/%s", p)
}

// screenshots saves the page in light and in dark mode: name.png and
// name-dark.png.
func (b *browser) screenshots(name string) {
	b.t.Helper()
	b.screenshot(name + ".png")
	b.setDark(true)
	b.screenshot(name + "-dark.png")
	b.setDark(false)
}

// jsString quotes s as a JavaScript string literal.
func jsString(s string) string {
	q, _ := json.Marshal(s)
	return string(q)
}

// submitAsync submits the fixture project dir with --async and returns the
// job id.
func submitAsync(t *testing.T, s *server, dir string, pytestArgs ...string) string {
	t.Helper()
	args := []string{"submit", "test", "--async"}
	if len(pytestArgs) > 0 {
		args = append(append(args, "--"), pytestArgs...)
	}
	return jobIDFromAsync(t, s.ci(t, dir, args...))
}

// tcpProxy forwards TCP connections to a server; a test can cut every
// connection at once and refuse new ones for a while.
type tcpProxy struct {
	ln     net.Listener
	target string
	url    string

	mu       sync.Mutex
	conns    map[net.Conn]struct{}
	refusing bool
	accepted int
	wg       sync.WaitGroup
}

func startProxy(t *testing.T, target string) *tcpProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tcpProxy{ln: ln, target: target, url: "http://" + ln.Addr().String(), conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(func() {
		ln.Close()
		p.cut()
		p.wg.Wait()
	})
	return p
}

func (p *tcpProxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		refusing := p.refusing
		if !refusing {
			p.accepted++
		}
		p.mu.Unlock()
		if refusing {
			c.Close()
			continue
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns[c], p.conns[up] = struct{}{}, struct{}{}
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(c, up)
		go p.pipe(up, c)
	}
}

func (p *tcpProxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	io.Copy(dst, src)
	dst.Close()
	src.Close()
	p.mu.Lock()
	delete(p.conns, dst)
	delete(p.conns, src)
	p.mu.Unlock()
}

// cut closes every proxied connection.
func (p *tcpProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.Close()
	}
}

// refuse makes the proxy close new connections at once (true) or forward
// them again (false).
func (p *tcpProxy) refuse(on bool) {
	p.mu.Lock()
	p.refusing = on
	p.mu.Unlock()
}

// connections returns how many connections the proxy forwarded.
func (p *tcpProxy) connections() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.accepted
}

// wheelParams are the parameters of a mouse wheel event. The protocol
// wants deltaX even at 0, which input.DispatchMouseEventParams omits.
type wheelParams struct {
	Type   input.DispatchMouseEventType `json:"type"`
	X      float64                      `json:"x"`
	Y      float64                      `json:"y"`
	DeltaX float64                      `json:"deltaX"`
	DeltaY float64                      `json:"deltaY"`
}

var dispatchWheel = cdp.Command[wheelParams, cdp.Empty]{Method: input.CommandDispatchMouseEvent}

// wheel scrolls by dy pixels with the mouse wheel at x, y.
func wheel(x, y, dy float64) chromedp.Action[chromedp.Void] {
	return func(ctx context.Context, tg *chromedp.Target) (chromedp.Void, error) {
		_, err := cdp.Call(ctx, tg, dispatchWheel, wheelParams{Type: input.DispatchMouseEventTypeMouseWheel, X: x, Y: y, DeltaY: dy})
		return chromedp.Void{}, err
	}
}

// pressEnter presses Enter on the focused element.
func pressEnter() chromedp.Action[chromedp.Void] {
	return chromedp.KeyEvent(kb.Enter)
}

// ansiSeq matches ANSI escape sequences: CSI, OSC and two-character ones.
var ansiSeq = regexp.MustCompile("\x1b\\[[0-?]*[ -/]*[@-~]|\x1b\\][^\x07\x1b]*(\x07|\x1b\\\\)|\x1b[@-Z\\\\-_]")

// stripANSI removes ANSI escape sequences, for comparing a raw log that
// still has them with the page's text.
func stripANSI(s string) string {
	return ansiSeq.ReplaceAllString(s, "")
}

// tail returns the last n bytes of s.
func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}
