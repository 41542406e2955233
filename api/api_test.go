package api_test

import (
	"archive/zip"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"ci/api"
	"ci/executor"
	"ci/jobs"
	"ci/persistence"
	"ci/webui"
	"ci/ws"

	"github.com/coder/websocket"
)

type env struct {
	srv     *httptest.Server
	svc     *jobs.Service
	archDir string
}

// newEnv runs the real service, store and handlers with the fake executor.
func newEnv(t *testing.T, maxUpload int64) *env {
	t.Helper()
	return newEnvWith(t, func(c *api.Config) { c.MaxUpload = maxUpload })
}

// newEnvWith is newEnv with the API configuration changed by tweak.
func newEnvWith(t *testing.T, tweak func(*api.Config)) *env {
	t.Helper()
	store, arch, archDir := openStore(t)
	svc := jobs.NewService(store, arch, &executor.Fake{}, jobs.Config{Concurrency: 2})
	if err := svc.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	events := ws.NewHandler(svc, nil)
	cfg := api.Config{Events: events, JobEvents: http.HandlerFunc(events.ServeJobs), UI: webui.Handler()}
	tweak(&cfg)
	h := api.NewHandler(svc, cfg)
	srv := httptest.NewServer(h)
	t.Cleanup(func() {
		srv.Close()
		events.Close()
		svc.Close()
	})
	return &env{srv: srv, svc: svc, archDir: archDir}
}

// openStore opens a real SQLite store and archive dir in a temp dir; the
// store is closed when the test ends.
func openStore(t *testing.T) (*persistence.Store, *persistence.Archives, string) {
	t.Helper()
	dir := t.TempDir()
	store, err := persistence.Open(context.Background(), filepath.Join(dir, "ci.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	archDir := filepath.Join(dir, "archives")
	arch, err := persistence.NewArchives(archDir)
	if err != nil {
		t.Fatal(err)
	}
	return store, arch, archDir
}

// project returns a zip whose fake script prints n numbered lines and
// exits with code.
func project(t *testing.T, n, code int) []byte {
	t.Helper()
	var script strings.Builder
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&script, "stdout %q\n", fmt.Sprintf("line %d\n", i))
	}
	fmt.Fprintf(&script, "stderr %q\nexit %d\n", "done\n", code)
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	w, _ := zw.Create("ci-fake-script")
	io.WriteString(w, script.String())
	w, _ = zw.Create("test_a.py")
	io.WriteString(w, "def test_a(): pass\n")
	zw.Close()
	return buf.Bytes()
}

type jobJSON struct {
	ID        string   `json:"id"`
	Status    string   `json:"status"`
	Args      []string `json:"args"`
	ExitCode  *int     `json:"exit_code"`
	Reason    string   `json:"reason"`
	LastSeq   int64    `json:"last_seq"`
	EventsURL string   `json:"events_url"`
	WebURL    string   `json:"web_url"`
}

func (e *env) submit(t *testing.T, body []byte, query string) jobJSON {
	t.Helper()
	resp, err := http.Post(e.srv.URL+"/api/v1/jobs"+query, "application/zip", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("submit: status %d (%s), want 201", resp.StatusCode, b)
	}
	var j jobJSON
	if err := json.NewDecoder(resp.Body).Decode(&j); err != nil {
		t.Fatal(err)
	}
	return j
}

// wait follows the job to its end through the service.
func (e *env) wait(t *testing.T, id string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.svc.Follow(ctx, id, 0, func(jobs.Event) error { return nil }); err != nil {
		t.Fatal(err)
	}
}

func getJSON(t *testing.T, url string, wantStatus int, v any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != wantStatus {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET %s: status %d (%s), want %d", url, resp.StatusCode, b, wantStatus)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("GET %s: Content-Type %q, want application/json", url, ct)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatal(err)
	}
}

func TestSubmitAndGet(t *testing.T) {
	e := newEnv(t, 0)
	j := e.submit(t, project(t, 3, 1), "?args=-k&args=test_a")
	if j.ID == "" || j.Status != "queued" {
		t.Fatalf("submit returned %+v, want an id and status queued", j)
	}
	host := strings.TrimPrefix(e.srv.URL, "http://")
	if j.EventsURL != "ws://"+host+"/api/v1/jobs/"+j.ID+"/events" || j.WebURL != "http://"+host+"/jobs/"+j.ID {
		t.Fatalf("urls %q %q, want ws://%s/api/v1/jobs/%s/events and http://%s/jobs/%s", j.EventsURL, j.WebURL, host, j.ID, host, j.ID)
	}
	e.wait(t, j.ID)
	var got jobJSON
	getJSON(t, e.srv.URL+"/api/v1/jobs/"+j.ID, http.StatusOK, &got)
	if got.Status != "failed" || got.ExitCode == nil || *got.ExitCode != 1 || got.Reason == "" {
		t.Fatalf("job %+v, want failed with exit code 1 and a reason", got)
	}
	if strings.Join(got.Args, " ") != "-k test_a" {
		t.Fatalf("args %q, want [-k test_a]", got.Args)
	}

	resp, err := http.Get(e.srv.URL + "/api/v1/jobs/" + j.ID + "/log")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := "line 1\nline 2\nline 3\ndone\n"; string(b) != want {
		t.Fatalf("log %q, want %q", b, want)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Fatalf("log Content-Type %q, want text/plain", ct)
	}
}

func TestListNewestFirstPaginated(t *testing.T) {
	e := newEnv(t, 0)
	var ids []string
	for range 5 {
		ids = append(ids, e.submit(t, project(t, 1, 0), "").ID)
	}
	type page struct {
		Jobs []jobJSON `json:"jobs"`
		Next string    `json:"next"`
	}
	var got []string
	url := e.srv.URL + "/api/v1/jobs?limit=2"
	for range 10 {
		var p page
		getJSON(t, url, http.StatusOK, &p)
		for _, j := range p.Jobs {
			got = append(got, j.ID)
		}
		if p.Next == "" {
			break
		}
		url = e.srv.URL + "/api/v1/jobs?limit=2&before=" + p.Next
	}
	var want []string
	for i := len(ids) - 1; i >= 0; i-- {
		want = append(want, ids[i])
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("listed %v, want %v", got, want)
	}
}

func TestErrorsAreJSON(t *testing.T) {
	e := newEnv(t, 1024)
	type apiErr struct {
		Error string `json:"error"`
		Code  string `json:"code"`
	}
	check := func(name string, resp *http.Response, status int, code, msg string) {
		t.Helper()
		defer resp.Body.Close()
		var body apiErr
		if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
			t.Fatalf("%s: body is not JSON: %v", name, err)
		}
		if resp.StatusCode != status || body.Code != code || !strings.Contains(body.Error, msg) {
			t.Fatalf("%s: %d %+v, want %d %s containing %q", name, resp.StatusCode, body, status, code, msg)
		}
	}
	post := func(ct string, body []byte) *http.Response {
		resp, err := http.Post(e.srv.URL+"/api/v1/jobs", ct, bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	get := func(path string) *http.Response {
		resp, err := http.Get(e.srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	check("not a zip", post("application/zip", []byte("plain text")), 400, "invalid", "not a valid zip")
	check("empty", post("application/zip", nil), 400, "invalid", "not a valid zip")
	check("content type", post("text/plain", project(t, 1, 0)), 415, "invalid", "zip")
	check("too large", post("application/zip", bytes.Repeat([]byte("x"), 4096)), 413, "invalid", "limit")
	check("unknown job", get("/api/v1/jobs/nope"), 404, "not_found", "nope")
	check("unknown job log", get("/api/v1/jobs/nope/log"), 404, "not_found", "nope")
	check("bad limit", get("/api/v1/jobs?limit=0"), 400, "invalid", "limit")
	check("unknown endpoint", get("/api/v1/nothing"), 404, "not_found", "/api/v1/nothing")
	req, _ := http.NewRequest(http.MethodDelete, e.srv.URL+"/api/v1/jobs", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	check("wrong method", resp, 405, "invalid", "DELETE")

	// Nothing of a refused upload stays on disk.
	entries, err := os.ReadDir(e.archDir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 0 {
		t.Fatalf("archive dir holds %d entries after refused uploads, want 0", len(entries))
	}
}

// TestEventsAfterN checks, through the whole stack, that after=N replays
// exactly N+1..last and then closes with 1000.
func TestEventsAfterN(t *testing.T) {
	e := newEnv(t, 0)
	j := e.submit(t, project(t, 20, 0), "")
	e.wait(t, j.ID)
	var final jobJSON
	getJSON(t, e.srv.URL+"/api/v1/jobs/"+j.ID, http.StatusOK, &final)
	for _, after := range []int64{0, 1, final.LastSeq / 2, final.LastSeq - 1} {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, _, err := websocket.Dial(ctx, j.EventsURL+fmt.Sprintf("?after=%d", after), nil)
		if err != nil {
			t.Fatal(err)
		}
		want := after + 1
		for {
			_, b, err := c.Read(ctx)
			if err != nil {
				if websocket.CloseStatus(err) != websocket.StatusNormalClosure {
					t.Fatalf("after=%d: read: %v, want close 1000", after, err)
				}
				break
			}
			var ev struct{ Seq int64 }
			json.Unmarshal(b, &ev)
			if ev.Seq != want {
				t.Fatalf("after=%d: seq %d, want %d", after, ev.Seq, want)
			}
			want++
		}
		cancel()
		if want-1 != final.LastSeq {
			t.Fatalf("after=%d: ended at %d, want %d", after, want-1, final.LastSeq)
		}
	}
}

func TestHealthAndPages(t *testing.T) {
	e := newEnv(t, 0)
	var h map[string]string
	getJSON(t, e.srv.URL+"/healthz", http.StatusOK, &h)
	if h["status"] != "ok" {
		t.Fatalf("healthz %v, want status ok", h)
	}
	for _, p := range []string{"/", "/jobs/x"} {
		resp, err := http.Get(e.srv.URL + p)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
			t.Fatalf("GET %s: %d %s, want 200 text/html", p, resp.StatusCode, resp.Header.Get("Content-Type"))
		}
	}
}

// TestJobFeed follows the job list feed through the whole stack: a
// snapshot, then a new job's changes up to its end.
func TestJobFeed(t *testing.T) {
	e := newEnv(t, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(e.srv.URL, "http")+"/api/v1/events", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	type msg struct {
		Type string    `json:"type"`
		Jobs []jobJSON `json:"jobs"`
		Job  *jobJSON  `json:"job"`
	}
	read := func() msg {
		_, b, err := c.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var m msg
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		return m
	}
	if m := read(); m.Type != "snapshot" || m.Jobs == nil || len(m.Jobs) != 0 {
		t.Fatalf("first message %+v, want an empty snapshot", m)
	}
	j := e.submit(t, project(t, 2, 0), "")
	var statuses []string
	for {
		m := read()
		if m.Type != "job" || m.Job == nil || m.Job.ID != j.ID {
			t.Fatalf("message %+v, want a change of job %s", m, j.ID)
		}
		statuses = append(statuses, m.Job.Status)
		if m.Job.Status == "passed" {
			break
		}
	}
	if got := strings.Join(statuses, " "); got != "queued running passed" {
		t.Fatalf("changes %q, want \"queued running passed\"", got)
	}
}

// TestLogStripsANSI checks the plain-text log: colour codes are removed
// by default, even when split across events, and kept on request.
func TestLogStripsANSI(t *testing.T) {
	e := newEnv(t, 0)
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	w, _ := zw.Create(executor.FakeScript)
	io.WriteString(w, "stdout \"\\x1b[3\"\nstdout \"1mred\\x1b[0m\\n\"\n")
	zw.Close()
	j := e.submit(t, buf.Bytes(), "")
	e.wait(t, j.ID)
	for query, want := range map[string]string{
		"":            "red\n",
		"?ansi=strip": "red\n",
		"?ansi=keep":  "\x1b[31mred\x1b[0m\n",
	} {
		resp, err := http.Get(e.srv.URL + "/api/v1/jobs/" + j.ID + "/log" + query)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != want {
			t.Errorf("log%s = %q, want %q", query, b, want)
		}
	}
	resp, err := http.Get(e.srv.URL + "/api/v1/jobs/" + j.ID + "/log?ansi=maybe")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("ansi=maybe: status %d, want 400", resp.StatusCode)
	}
}

func TestCancelAndTimeoutParams(t *testing.T) {
	e := newEnv(t, 0)
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	w, _ := zw.Create(executor.FakeScript)
	io.WriteString(w, "stdout \"started\\n\"\nblock\n")
	zw.Close()
	j := e.submit(t, buf.Bytes(), "?timeout=90s")
	var got struct {
		jobJSON
		Timeout string `json:"timeout"`
	}
	getJSON(t, e.srv.URL+"/api/v1/jobs/"+j.ID, http.StatusOK, &got)
	if got.Timeout != "1m30s" {
		t.Fatalf("timeout %q, want 1m30s", got.Timeout)
	}
	resp, err := http.Post(e.srv.URL+"/api/v1/jobs/"+j.ID+"/cancel", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		getJSON(t, e.srv.URL+"/api/v1/jobs/"+j.ID, http.StatusOK, &got)
		t.Fatalf("cancel: status %d, want 200 (job %+v)", resp.StatusCode, got)
	}
	e.wait(t, j.ID)
	getJSON(t, e.srv.URL+"/api/v1/jobs/"+j.ID, http.StatusOK, &got)
	if got.Status != "canceled" {
		t.Fatalf("status %s after cancel, want canceled", got.Status)
	}
	for path, want := range map[string]int{
		"/api/v1/jobs/" + j.ID + "/cancel": http.StatusConflict,
		"/api/v1/jobs/nope/cancel":         http.StatusNotFound,
	} {
		resp, err := http.Post(e.srv.URL+path, "", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Fatalf("POST %s: %d, want %d", path, resp.StatusCode, want)
		}
	}
	for _, bad := range []string{"soon", "-5s", "0"} {
		resp, err := http.Post(e.srv.URL+"/api/v1/jobs?timeout="+bad, "application/zip", bytes.NewReader(project(t, 1, 0)))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("timeout=%s: status %d, want 400", bad, resp.StatusCode)
		}
	}
}

func TestAuth(t *testing.T) {
	const token = "s3cret-token-for-tests"
	for _, private := range []bool{false, true} {
		e := newEnvWith(t, func(c *api.Config) { c.Token, c.Private = token, private })
		do := func(method, path, auth string, body []byte) int {
			t.Helper()
			req, _ := http.NewRequest(method, e.srv.URL+path, bytes.NewReader(body))
			if auth != "" {
				req.Header.Set("Authorization", auth)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode == http.StatusUnauthorized {
				var b map[string]string
				json.NewDecoder(resp.Body).Decode(&b)
				if b["code"] != "unauthorized" || resp.Header.Get("WWW-Authenticate") == "" {
					t.Fatalf("401 body %v / header %q, want code unauthorized and WWW-Authenticate", b, resp.Header.Get("WWW-Authenticate"))
				}
			}
			return resp.StatusCode
		}
		zip := project(t, 1, 0)
		if got := do("POST", "/api/v1/jobs", "", zip); got != 401 {
			t.Fatalf("private=%v: submit without token: %d, want 401", private, got)
		}
		if got := do("POST", "/api/v1/jobs", "Bearer wrong-token-xyz", zip); got != 401 {
			t.Fatalf("private=%v: submit with a wrong token: %d, want 401", private, got)
		}
		if got := do("POST", "/api/v1/jobs", "Bearer "+token, zip); got != 201 {
			t.Fatalf("private=%v: submit with the token: %d, want 201", private, got)
		}
		if got := do("POST", "/api/v1/jobs/x/cancel", "", nil); got != 401 {
			t.Fatalf("private=%v: cancel without token: %d, want 401", private, got)
		}
		wantRead := 200
		if private {
			wantRead = 401
		}
		if got := do("GET", "/api/v1/jobs", "", nil); got != wantRead {
			t.Fatalf("private=%v: list without token: %d, want %d", private, got, wantRead)
		}
		if got := do("GET", "/api/v1/jobs", "Bearer "+token, nil); got != 200 {
			t.Fatalf("private=%v: list with token: %d, want 200", private, got)
		}
		for _, path := range []string{"/", "/healthz"} {
			if got := do("GET", path, "", nil); got != 200 {
				t.Fatalf("private=%v: GET %s without token: %d, want 200", private, path, got)
			}
		}
		// The WebSocket feed, from a "browser": the token as a subprotocol.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		wsURL := "ws" + strings.TrimPrefix(e.srv.URL, "http") + "/api/v1/events"
		c0, resp, err := websocket.Dial(ctx, wsURL, nil)
		if c0 != nil {
			c0.CloseNow()
		}
		if private && (err == nil || resp == nil || resp.StatusCode != 401) {
			t.Fatalf("private feed without token: err=%v resp=%v, want 401", err, resp)
		}
		c, _, err := websocket.Dial(ctx, wsURL, &websocket.DialOptions{
			Subprotocols: []string{"ci.v1", "bearer." + base64.RawURLEncoding.EncodeToString([]byte(token))},
		})
		if err != nil {
			t.Fatalf("private=%v: feed with token subprotocol: %v", private, err)
		}
		if c.Subprotocol() != "ci.v1" {
			t.Fatalf("selected subprotocol %q, want ci.v1", c.Subprotocol())
		}
		c.CloseNow()
		cancel()
	}
}

// countingZeros is an endless-looking body that counts what was read.
type countingZeros struct {
	n, limit int64
	read     atomic.Int64
}

func (c *countingZeros) Read(p []byte) (int, error) {
	if c.n >= c.limit {
		return 0, io.EOF
	}
	k := min(int64(len(p)), c.limit-c.n)
	clear(p[:k])
	c.n += k
	c.read.Add(k)
	return int(k), nil
}

// TestUploadTooLargeWhileStreaming sends a body with no Content-Length,
// far over the limit: the server answers 413 without reading it all, and
// keeps nothing of it.
func TestUploadTooLargeWhileStreaming(t *testing.T) {
	e := newEnv(t, 1<<20)
	body := &countingZeros{limit: 256 << 20}
	req, _ := http.NewRequest(http.MethodPost, e.srv.URL+"/api/v1/jobs", body)
	req.Header.Set("Content-Type", "application/zip")
	req.ContentLength = -1 // chunked: the size is not known up front
	resp, err := http.DefaultClient.Do(req)
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestEntityTooLarge {
			t.Fatalf("status %d, want 413", resp.StatusCode)
		}
	}
	// The client may see the connection close before it reads the answer;
	// either way the server stopped reading long before the end.
	if n := body.read.Load(); n > 64<<20 {
		t.Fatalf("the client wrote %d MiB of a 256 MiB body; the server should stop reading at the 1 MiB limit", n>>20)
	}
	waitEmpty(t, e.archDir)
}

// waitEmpty waits until dir holds no file: a refused upload's temporary
// file is removed as the handler returns.
func waitEmpty(t *testing.T, dir string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		entries, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		if len(entries) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still holds %d entries after a refused upload", dir, len(entries))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestQueueFullRetryAfter fills a one-slot queue behind a running job: the
// next upload gets 503 with Retry-After.
func TestQueueFullRetryAfter(t *testing.T) {
	store, arch, archDir := openStore(t)
	svc := jobs.NewService(store, arch, &executor.Fake{}, jobs.Config{Concurrency: 1, MaxQueued: 1})
	if err := svc.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	u := &uploadCounter{rejected: map[string]int{}}
	srv := httptest.NewServer(api.NewHandler(svc, api.Config{Uploads: u}))
	defer srv.Close()
	e := &env{srv: srv, svc: svc, archDir: archDir}

	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	w, _ := zw.Create(executor.FakeScript)
	io.WriteString(w, "block\n")
	zw.Close()
	running := e.submit(t, buf.Bytes(), "")
	waitFor := time.Now().Add(10 * time.Second)
	for {
		j, _ := svc.Job(context.Background(), running.ID)
		if j.Status == jobs.StatusRunning {
			break
		}
		if time.Now().After(waitFor) {
			t.Fatal("the blocking job never ran")
		}
		time.Sleep(5 * time.Millisecond)
	}
	e.submit(t, project(t, 1, 0), "") // takes the one queue slot
	resp, err := http.Post(srv.URL+"/api/v1/jobs", "application/zip", bytes.NewReader(project(t, 1, 0)))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("status %d, Retry-After %q; want 503 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	if _, _, r := u.get(); r[api.RejectQueueFull] != 1 || len(r) != 1 {
		t.Fatalf("rejected %v, want one queue_full", r)
	}
	svc.Cancel(context.Background(), running.ID)
}

// reportExec ends every job with exit code 1 and a per-test report.
type reportExec struct{}

func (reportExec) Run(ctx context.Context, spec jobs.Spec, out jobs.Output) (jobs.Result, error) {
	return jobs.Result{ExitCode: 1, Report: &jobs.TestReport{DurationS: 0.5, Tests: []jobs.TestCase{
		{NodeID: "test_a.py::test_ok", Outcome: "passed", DurationS: 0.1},
		{NodeID: "test_a.py::test_bad", Outcome: "failed", DurationS: 0.2, Message: "assert 1 == 2"},
	}}}, nil
}

func TestTestsEndpoint(t *testing.T) {
	store, arch, _ := openStore(t)
	svc := jobs.NewService(store, arch, reportExec{}, jobs.Config{Concurrency: 1})
	if err := svc.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	srv := httptest.NewServer(api.NewHandler(svc, api.Config{}))
	defer srv.Close()
	e := &env{srv: srv, svc: svc}
	j := e.submit(t, project(t, 1, 0), "")
	e.wait(t, j.ID)
	var got struct {
		Counts jobs.TestCounts `json:"counts"`
		Tests  []jobs.TestCase `json:"tests"`
	}
	getJSON(t, srv.URL+"/api/v1/jobs/"+j.ID+"/tests", http.StatusOK, &got)
	if got.Counts != (jobs.TestCounts{Total: 2, Passed: 1, Failed: 1}) || len(got.Tests) != 2 || got.Tests[1].Message != "assert 1 == 2" || got.Tests[1].DurationS != 0.2 {
		t.Fatalf("tests %+v, want both tests with counts 2/1/1 and the failure message", got)
	}
	var e404 map[string]string
	getJSON(t, srv.URL+"/api/v1/jobs/nope/tests", http.StatusNotFound, &e404)
}
