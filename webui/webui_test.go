package webui

import (
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
)

func get(t *testing.T, h http.Handler, method, path string, hdr ...string) *http.Response {
	t.Helper()
	r := httptest.NewRequest(method, path, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		r.Header.Set(hdr[i], hdr[i+1])
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w.Result()
}

func TestHandlerServesPagesAndAssets(t *testing.T) {
	h := Handler()
	tests := []struct {
		path  string
		code  int
		ctype string
		want  string // in the body
	}{
		{"/", 200, "text/html; charset=utf-8", `<script type="module" src="/static/list.js">`},
		{"/jobs/01JABCDEF", 200, "text/html; charset=utf-8", `<script type="module" src="/static/job.js">`},
		{"/static/app.css", 200, "text/css; charset=utf-8", "prefers-color-scheme: dark"},
		{"/static/job.js", 200, "text/javascript; charset=utf-8", "import"},
		{"/static/list.js", 200, "text/javascript; charset=utf-8", "/api/v1/events"},
		{"/static/ansi.js", 200, "text/javascript; charset=utf-8", "export class AnsiParser"},
		{"/static/logview.js", 200, "text/javascript; charset=utf-8", "export class LogView"},
		{"/static/common.js", 200, "text/javascript; charset=utf-8", "export"},
		{"/static/favicon.svg", 200, "image/svg+xml", "<svg"},
		{"/nope", 404, "text/html; charset=utf-8", "Page not found"},
		{"/jobs/", 404, "text/html; charset=utf-8", "Page not found"},
		{"/jobs/a/b", 404, "text/html; charset=utf-8", "Page not found"},
		{"/static/nope.js", 404, "text/html; charset=utf-8", "Page not found"},
		{"/static/index.html", 404, "text/html; charset=utf-8", "Page not found"},
		{"/static/", 404, "text/html; charset=utf-8", "Page not found"},
	}
	for _, tt := range tests {
		resp := get(t, h, "GET", tt.path)
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != tt.code {
			t.Errorf("GET %s: status=%d, want %d", tt.path, resp.StatusCode, tt.code)
		}
		if got := resp.Header.Get("Content-Type"); got != tt.ctype {
			t.Errorf("GET %s: Content-Type=%q, want %q", tt.path, got, tt.ctype)
		}
		if got := resp.Header.Get("X-Content-Type-Options"); got != "nosniff" {
			t.Errorf("GET %s: X-Content-Type-Options=%q, want nosniff", tt.path, got)
		}
		if !strings.Contains(string(body), tt.want) {
			t.Errorf("GET %s: body lacks %q", tt.path, tt.want)
		}
	}
}

func TestPagesHaveStrictCSP(t *testing.T) {
	h := Handler()
	for _, p := range []string{"/", "/jobs/x", "/nope"} {
		csp := get(t, h, "GET", p).Header.Get("Content-Security-Policy")
		for _, want := range []string{"default-src 'none'", "script-src 'self'", "connect-src 'self' ws://example.com wss://example.com"} {
			if !strings.Contains(csp, want) {
				t.Errorf("GET %s: CSP %q lacks %q", p, csp, want)
			}
		}
		if strings.Contains(csp, "unsafe") {
			t.Errorf("GET %s: CSP %q allows unsafe sources", p, csp)
		}
	}
	r := httptest.NewRequest("GET", "/", nil)
	r.Host = "evil; script-src *"
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	if csp := w.Result().Header.Get("Content-Security-Policy"); strings.Contains(csp, "evil") {
		t.Errorf("CSP %q took an unsafe Host", csp)
	}
}

func TestHeadAndConditionalGet(t *testing.T) {
	h := Handler()
	resp := get(t, h, "HEAD", "/static/app.css")
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/css; charset=utf-8" {
		t.Fatalf("HEAD: status=%d type=%q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	etag := resp.Header.Get("Etag")
	if etag == "" {
		t.Fatal("no ETag")
	}
	if got := get(t, h, "GET", "/static/app.css", "If-None-Match", etag).StatusCode; got != http.StatusNotModified {
		t.Errorf("conditional GET: status=%d, want 304", got)
	}
	if got := get(t, h, "POST", "/").StatusCode; got != http.StatusMethodNotAllowed {
		t.Errorf("POST /: status=%d, want 405", got)
	}
}

// TestNothingExternal checks that the pages load nothing from outside the
// server, and that every /static/ file they reference exists.
func TestNothingExternal(t *testing.T) {
	external := regexp.MustCompile(`(?i)(src|href)\s*=\s*["']?(https?:)?//|url\(\s*["']?(https?:)?//|@import|fonts\.googleapis`)
	ref := regexp.MustCompile(`/static/[A-Za-z0-9._-]+|from "\./([A-Za-z0-9._-]+)"`)
	for name, a := range assets {
		if m := external.FindString(string(a.body)); m != "" {
			t.Errorf("%s references something external: %q", name, m)
		}
		for _, m := range ref.FindAllStringSubmatch(string(a.body), -1) {
			target := strings.TrimPrefix(m[0], "/static/")
			if m[1] != "" {
				target = m[1]
			}
			if assets[target] == nil {
				t.Errorf("%s references %q, which is not embedded", name, m[0])
			}
		}
	}
}
