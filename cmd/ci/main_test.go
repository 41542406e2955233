package main

import (
	"archive/zip"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/coder/websocket/wsjson"

	"ci/client"
)

// fakeServer is a ci-server with one job, J1.
type fakeServer struct {
	t      *testing.T
	srv    *httptest.Server
	job    client.Job
	events []client.Event
	// submitError, when set, is the JSON error body of a 503 answer to
	// uploads.
	submitError string
	// hang makes the event stream stay open after the events are sent;
	// hanging is closed then.
	hang    bool
	hanging chan struct{}

	mu         sync.Mutex
	gotFiles   []string
	gotArgs    []string
	gotAfters  []int64
	gotCancel  bool
	hangClosed bool
}

func newFakeServer(t *testing.T) *fakeServer {
	f := &fakeServer{t: t, hanging: make(chan struct{})}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /api/v1/jobs", f.submit)
	mux.HandleFunc("GET /api/v1/jobs", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(client.JobList{Jobs: []client.Job{f.job}, Next: "J0"})
	})
	mux.HandleFunc("GET /api/v1/jobs/{id}", func(w http.ResponseWriter, r *http.Request) {
		if !f.known(w, r) {
			return
		}
		json.NewEncoder(w).Encode(f.job)
	})
	mux.HandleFunc("GET /api/v1/jobs/{id}/events", f.eventsHandler)
	mux.HandleFunc("POST /api/v1/jobs/{id}/cancel", func(w http.ResponseWriter, r *http.Request) {
		if !f.known(w, r) {
			return
		}
		// The job stops: its stream ends with a canceled status.
		f.mu.Lock()
		f.gotCancel = true
		f.hang = false
		n := int64(len(f.events))
		f.events = append(f.events, client.Event{Seq: n + 1, Type: "status", Status: "canceled", Reason: "canceled by user"})
		job := f.job
		f.mu.Unlock()
		job.Status = "running"
		json.NewEncoder(w).Encode(job)
	})
	f.srv = httptest.NewServer(mux)
	t.Cleanup(f.srv.Close)
	f.job = client.Job{
		ID: "J1", Status: "queued", Args: []string{}, CreatedAt: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC),
		EventsURL: "ws" + strings.TrimPrefix(f.srv.URL, "http") + "/api/v1/jobs/J1/events",
		WebURL:    f.srv.URL + "/jobs/J1",
	}
	return f
}

func (f *fakeServer) known(w http.ResponseWriter, r *http.Request) bool {
	if r.PathValue("id") == "J1" {
		return true
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusNotFound)
	io.WriteString(w, `{"error":"job not found","code":"not_found"}`)
	return false
}

func (f *fakeServer) submit(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		f.t.Errorf("read upload: %v", err)
		return
	}
	if f.submitError != "" {
		w.WriteHeader(http.StatusServiceUnavailable)
		io.WriteString(w, f.submitError)
		return
	}
	zr, err := zip.NewReader(bytes.NewReader(body), int64(len(body)))
	if err != nil {
		f.t.Errorf("upload is not a zip: %v", err)
		return
	}
	f.mu.Lock()
	for _, zf := range zr.File {
		f.gotFiles = append(f.gotFiles, zf.Name)
	}
	f.gotArgs = r.URL.Query()["args"]
	f.mu.Unlock()
	w.WriteHeader(http.StatusCreated)
	json.NewEncoder(w).Encode(f.job)
}

func (f *fakeServer) eventsHandler(w http.ResponseWriter, r *http.Request) {
	if !f.known(w, r) {
		return
	}
	after, _ := strconv.ParseInt(r.URL.Query().Get("after"), 10, 64)
	f.mu.Lock()
	f.gotAfters = append(f.gotAfters, after)
	events, hang := f.events, f.hang
	f.mu.Unlock()
	c, err := websocket.Accept(w, r, nil)
	if err != nil {
		return
	}
	defer c.CloseNow()
	for _, ev := range events {
		if ev.Seq > after {
			if err := wsjson.Write(r.Context(), c, ev); err != nil {
				return
			}
		}
	}
	if hang {
		f.mu.Lock()
		if !f.hangClosed {
			f.hangClosed = true
			close(f.hanging)
		}
		f.mu.Unlock()
		c.Read(r.Context()) // until the client leaves
		return
	}
	c.Close(websocket.StatusNormalClosure, "")
}

// setEnd sets a job's events: queued, running, the given output, and a
// terminal status, numbered from 1.
func (f *fakeServer) setEvents(output []client.Event, status string, exitCode *int, reason string) {
	evs := []client.Event{{Type: "status", Status: "queued"}, {Type: "status", Status: "running"}}
	evs = append(evs, output...)
	if status != "" {
		evs = append(evs, client.Event{Type: "status", Status: status, ExitCode: exitCode, Reason: reason})
	}
	for i := range evs {
		evs[i].Seq = int64(i + 1)
	}
	f.events = evs
}

var testOutput = []client.Event{
	{Type: "log", Stream: "stdout", Text: "test_a.py .."},
	{Type: "log", Stream: "stderr", Text: "warn"},
	{Type: "log", Stream: "stdout", Text: "F"},
	{Type: "log", Stream: "stderr", Text: "ing\n"},
	{Type: "log", Stream: "stdout", Text: "   [100%]\n"},
}

func intp(i int) *int { return &i }

func runCLI(t *testing.T, ctx context.Context, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = run(ctx, args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func projectDir(t *testing.T) string {
	dir := t.TempDir()
	for name, content := range map[string]string{
		"test_a.py":             "def test_a(): pass\n",
		"pkg/__init__.py":       "",
		".gitignore":            "*.log\n",
		"debug.log":             "x",
		".git/HEAD":             "ref",
		"pkg/__pycache__/x.pyc": "",
	} {
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestSubmitAsync(t *testing.T) {
	f := newFakeServer(t)
	code, stdout, stderr := runCLI(t, testContext(t), "submit", "test", "--async", "--dir", projectDir(t),
		"--server", f.srv.URL, "--", "-k", "test_a", "--tb=short")
	if code != 0 || stdout != "Job submitted: J1\n" || stderr != "" {
		t.Fatalf("exit %d, stdout %q, stderr %q; want 0, %q, nothing", code, stdout, "Job submitted: J1\n", stderr)
	}
	if want := []string{"pkg/__init__.py", "test_a.py"}; !reflect.DeepEqual(f.gotFiles, want) {
		t.Fatalf("uploaded %q, want %q", f.gotFiles, want)
	}
	if want := []string{"-k", "test_a", "--tb=short"}; !reflect.DeepEqual(f.gotArgs, want) {
		t.Fatalf("args %q, want %q", f.gotArgs, want)
	}
}

func TestSubmitFollows(t *testing.T) {
	tests := []struct {
		status     string
		exitCode   *int
		reason     string
		wantCode   int
		wantFinal  string // a line at the end of stderr, if any
		wantOutput bool
	}{
		{"passed", intp(0), "", 0, "", true},
		{"failed", intp(1), "", 1, "", true},
		{"failed", intp(5), "no tests ran", 5, "ci: job J1 failed: no tests ran\n", true},
		{"error", nil, "image python:3.12-slim not found", 125, "ci: job J1 error: image python:3.12-slim not found\n", false},
		{"timed_out", nil, "ran past 10m0s", 124, "ci: job J1 timed out: ran past 10m0s\n", true},
		{"canceled", nil, "canceled by a user", 130, "ci: job J1 canceled: canceled by a user\n", true},
	}
	for _, tt := range tests {
		t.Run(tt.status+strconv.Itoa(tt.wantCode), func(t *testing.T) {
			f := newFakeServer(t)
			var output []client.Event
			if tt.wantOutput {
				output = testOutput
			}
			f.setEvents(output, tt.status, tt.exitCode, tt.reason)
			code, stdout, stderr := runCLI(t, testContext(t), "submit", "test", "--dir", projectDir(t), "--server", f.srv.URL)
			if code != tt.wantCode {
				t.Fatalf("exit %d, want %d; stderr %q", code, tt.wantCode, stderr)
			}
			wantOut, wantErr := "", "Job J1 submitted: "+f.srv.URL+"/jobs/J1\n"
			if tt.wantOutput {
				wantOut, wantErr = "test_a.py ..F   [100%]\n", wantErr+"warning\n"
			}
			wantErr += tt.wantFinal
			if stdout != wantOut || stderr != wantErr {
				t.Fatalf("stdout %q, stderr %q; want %q, %q", stdout, stderr, wantOut, wantErr)
			}
			if !reflect.DeepEqual(f.gotAfters, []int64{0}) {
				t.Fatalf("followed with after=%v, want [0]", f.gotAfters)
			}
		})
	}
}

func TestSubmitRejected(t *testing.T) {
	f := newFakeServer(t)
	f.submitError = `{"error":"queue full, try again later","code":"unavailable"}`
	code, stdout, stderr := runCLI(t, testContext(t), "submit", "test", "--dir", projectDir(t), "--server", f.srv.URL)
	if code != 125 || stdout != "" || stderr != "ci: submit: queue full, try again later\n" {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
}

func TestUnreachable(t *testing.T) {
	f := newFakeServer(t)
	f.srv.Close()
	for _, args := range [][]string{
		{"submit", "test", "--dir", projectDir(t)},
		{"submit", "test", "--async", "--dir", projectDir(t)},
		{"wait", "J1"},
		{"status", "J1"},
		{"list"},
	} {
		code, _, stderr := runCLI(t, testContext(t), append(args, "--server", f.srv.URL)...)
		want := "ci: cannot reach ci-server at " + f.srv.URL + ": "
		if code != 125 || !strings.HasPrefix(stderr, want) || !strings.HasSuffix(stderr, "; is it running? (make run)\n") {
			t.Errorf("%q: exit %d, stderr %q; want 125, %q…", args, code, stderr, want)
		}
	}
}

func TestWait(t *testing.T) {
	f := newFakeServer(t)
	f.setEvents(testOutput, "failed", intp(1), "")
	code, stdout, stderr := runCLI(t, testContext(t), "wait", "J1", "--after", "4", "--server", f.srv.URL)
	// Events 1-4 are queued, running, "test_a.py .." and "warn".
	if code != 1 || stdout != "F   [100%]\n" || stderr != "ing\n" {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	if !reflect.DeepEqual(f.gotAfters, []int64{4}) {
		t.Fatalf("after=%v, want [4]", f.gotAfters)
	}

	code, _, stderr = runCLI(t, testContext(t), "wait", "nope", "--server", f.srv.URL)
	if code != 1 || stderr != "ci: job nope: job not found\n" {
		t.Fatalf("unknown job: exit %d, stderr %q", code, stderr)
	}
}

func TestInterruptDetaches(t *testing.T) {
	f := newFakeServer(t)
	r := interrupted(t, f, "wait", "J1", "--server", f.srv.URL)
	if r.code != 130 || !strings.Contains(r.stderr, "ci: detached from job J1") {
		t.Fatalf("exit %d, stderr %q; want 130 and a detach notice", r.code, r.stderr)
	}
}

func TestStatus(t *testing.T) {
	f := newFakeServer(t)
	start, end := f.job.CreatedAt.Add(time.Second), f.job.CreatedAt.Add(3500*time.Millisecond)
	f.job.Status, f.job.ExitCode, f.job.Reason = "failed", intp(1), "1 test failed"
	f.job.StartedAt, f.job.FinishedAt, f.job.Args = &start, &end, []string{"-k", "x"}

	code, stdout, stderr := runCLI(t, testContext(t), "status", "J1", "--server", f.srv.URL)
	if code != 0 || stderr != "" {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	for _, want := range []string{"job:      J1\n", "status:   failed (exit code 1)\n", "reason:   1 test failed\n",
		"args:     -k x\n", "duration: 2.5s\n", "web:      " + f.srv.URL + "/jobs/J1\n"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("status output lacks %q:\n%s", want, stdout)
		}
	}

	if strings.Contains(stdout, "phase:") {
		t.Errorf("status output of an ended job shows a phase:\n%s", stdout)
	}

	// A running job shows its phase.
	f.job.Status, f.job.ExitCode, f.job.FinishedAt, f.job.Phase = "running", nil, nil, "install"
	code, stdout, _ = runCLI(t, testContext(t), "status", "J1", "--server", f.srv.URL)
	if code != 0 || !regexp.MustCompile(`\nstatus: +running\nphase: +install\n`).MatchString(stdout) {
		t.Errorf("running job: exit %d, output:\n%s", code, stdout)
	}
	f.job.Status, f.job.ExitCode, f.job.FinishedAt, f.job.Phase = "failed", intp(1), &end, "test"

	code, stdout, _ = runCLI(t, testContext(t), "status", "--json", "J1", "--server", f.srv.URL)
	var j client.Job
	if err := json.Unmarshal([]byte(stdout), &j); code != 0 || err != nil || j.ID != "J1" || *j.ExitCode != 1 {
		t.Fatalf("--json: exit %d, err %v, output %s", code, err, stdout)
	}

	code, stdout, stderr = runCLI(t, testContext(t), "status", "nope", "--server", f.srv.URL)
	if code != 1 || stdout != "" || stderr != "ci: job nope: job not found\n" {
		t.Fatalf("not found: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
}

func TestServerFromEnv(t *testing.T) {
	f := newFakeServer(t)
	t.Setenv("CI_SERVER", f.srv.URL)
	if code, _, stderr := runCLI(t, testContext(t), "status", "J1"); code != 0 {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	// --server wins, before or after the command.
	t.Setenv("CI_SERVER", "http://127.0.0.1:1")
	if code, _, stderr := runCLI(t, testContext(t), "--server", f.srv.URL, "status", "J1"); code != 0 {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
}

func TestList(t *testing.T) {
	f := newFakeServer(t)
	start, end := f.job.CreatedAt, f.job.CreatedAt.Add(90*time.Second)
	f.job.Status, f.job.ExitCode, f.job.StartedAt, f.job.FinishedAt = "timed_out", nil, &start, &end
	code, stdout, stderr := runCLI(t, testContext(t), "list", "--limit", "1", "--server", f.srv.URL)
	if code != 0 {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	lines := strings.Split(strings.TrimSuffix(stdout, "\n"), "\n")
	if len(lines) != 2 || strings.Fields(lines[0])[0] != "ID" {
		t.Fatalf("table:\n%s", stdout)
	}
	fields := strings.Fields(lines[1])
	if len(fields) != 7 || fields[0] != "J1" || fields[1] != "timed" || fields[5] != "1m30s" || fields[6] != "-" {
		t.Fatalf("row %q", lines[1])
	}
	if stderr != "More: ci list --limit 1 --before J0\n" {
		t.Fatalf("stderr %q", stderr)
	}
}

func TestUsageErrors(t *testing.T) {
	tests := []struct {
		args []string
		want string // in stderr
	}{
		{nil, "missing command"},
		{[]string{"bogus"}, `unknown command "bogus"`},
		{[]string{"--bogus"}, "unknown flag: --bogus"},
		{[]string{"submit"}, "usage: ci submit test"},
		{[]string{"submit", "tests"}, `cannot submit "tests"`},
		{[]string{"submit", "test", "-k", "x"}, "pytest arguments go after --"},
		{[]string{"submit", "test", "extra"}, "ci submit test -- extra"},
		{[]string{"submit", "test", "--dir", "/nonexistent"}, "--dir /nonexistent: not a directory"},
		{[]string{"submit", "test", "--server", "localhost:8000"}, "invalid server URL"},
		{[]string{"wait"}, "missing job id"},
		{[]string{"wait", "a", "b"}, `unexpected argument "b"`},
		{[]string{"wait", "a", "--after", "x"}, "usage: ci wait <id> [--after N]"},
		{[]string{"wait", "a", "--after", "-1"}, "must be 0 or more"},
		{[]string{"status"}, "usage: ci status <id>"},
		{[]string{"list", "--limit", "0"}, "usage: ci list"},
		{[]string{"help", "bogus"}, "unknown command"},
	}
	for _, tt := range tests {
		code, stdout, stderr := runCLI(t, testContext(t), tt.args...)
		if code != 64 || stdout != "" || !strings.Contains(stderr, tt.want) || !strings.Contains(stderr, "usage: ci") {
			t.Errorf("ci %q: exit %d, stdout %q, stderr %q; want 64 and %q", tt.args, code, stdout, stderr, tt.want)
		}
	}
}

func TestHelp(t *testing.T) {
	for _, args := range [][]string{{"help"}, {"--help"}, {"-h"}, {"help", "submit"}, {"submit", "--help"}, {"wait", "-h"}} {
		code, stdout, stderr := runCLI(t, testContext(t), args...)
		if code != 0 || stderr != "" || !strings.Contains(stdout, "ci submit test [--async]") && !strings.Contains(stdout, "usage: ci wait") {
			t.Errorf("ci %q: exit %d, stdout %q, stderr %q", args, code, stdout, stderr)
		}
	}
}

// TestColourOnPipes checks that colour codes (split across events) are
// stripped when output is not a terminal, and kept with CI_COLOR=always.
func TestColourOnPipes(t *testing.T) {
	f := newFakeServer(t)
	f.setEvents([]client.Event{
		{Type: "log", Stream: "stdout", Text: "\x1b[3"},
		{Type: "log", Stream: "stdout", Text: "2mPASSED\x1b[0m\n"},
	}, "passed", intp(0), "")
	code, stdout, _ := runCLI(t, testContext(t), "wait", "J1", "--server", f.srv.URL)
	if code != 0 || stdout != "PASSED\n" {
		t.Fatalf("piped: exit %d, stdout %q, want 0 and \"PASSED\\n\"", code, stdout)
	}
	t.Setenv("CI_COLOR", "always")
	code, stdout, _ = runCLI(t, testContext(t), "wait", "J1", "--server", f.srv.URL)
	if code != 0 || stdout != "\x1b[32mPASSED\x1b[0m\n" {
		t.Fatalf("CI_COLOR=always: exit %d, stdout %q, want the colour codes kept", code, stdout)
	}
}

// TestInterruptSubmitCancels checks Ctrl-C during a synchronous submit:
// the job is canceled, ci follows it to its end and exits 130.
func TestInterruptSubmitCancels(t *testing.T) {
	f := newFakeServer(t)
	r := interrupted(t, f, "submit", "test", "--dir", projectDir(t), "--server", f.srv.URL)
	f.mu.Lock()
	gotCancel, afters := f.gotCancel, f.gotAfters
	f.mu.Unlock()
	if !gotCancel {
		t.Fatal("Ctrl-C during submit did not cancel the job")
	}
	if r.code != 130 || !strings.Contains(r.stderr, "canceling job J1") || !strings.Contains(r.stderr, "canceled by user") {
		t.Fatalf("exit %d, stderr %q; want 130, a canceling notice and the reason", r.code, r.stderr)
	}
	// The second stream resumed after what was printed: all output, once.
	if len(afters) != 2 || afters[0] != 0 {
		t.Fatalf("afters %v, want two streams, the first from 0", afters)
	}
	if want := "test_a.py ..F   [100%]\n"; r.stdout != want {
		t.Fatalf("stdout %q, want %q (every chunk once)", r.stdout, want)
	}
}

func TestCancelCommand(t *testing.T) {
	f := newFakeServer(t)
	code, stdout, _ := runCLI(t, testContext(t), "cancel", "J1", "--server", f.srv.URL)
	if code != 0 || !strings.Contains(stdout, "J1") {
		t.Fatalf("cancel: exit %d, stdout %q", code, stdout)
	}
	code, _, stderr := runCLI(t, testContext(t), "cancel", "nope", "--server", f.srv.URL)
	if code != 1 || !strings.Contains(stderr, "not found") {
		t.Fatalf("cancel unknown: exit %d, stderr %q; want 1 and not found", code, stderr)
	}
	if code, _, _ := runCLI(t, testContext(t), "cancel"); code != 64 {
		t.Fatalf("cancel without id: exit %d, want 64", code)
	}
}

// cliResult is how a ci run ended.
type cliResult struct {
	code           int
	stdout, stderr string
}

// interrupted runs ci with args against f, whose event stream hangs after
// testOutput, and cancels ci's context (Ctrl-C) once the events are out.
func interrupted(t *testing.T, f *fakeServer, args ...string) cliResult {
	t.Helper()
	f.setEvents(testOutput, "", nil, "")
	f.hang = true
	ctx, cancel := context.WithCancel(testContext(t))
	defer cancel()
	done := make(chan cliResult, 1)
	go func() {
		code, stdout, stderr := runCLI(t, ctx, args...)
		done <- cliResult{code, stdout, stderr}
	}()
	select {
	case <-f.hanging:
	case <-ctx.Done():
		t.Fatal("the server never sent the events")
	}
	cancel() // Ctrl-C
	return <-done
}

// installOutput is a job's output with a dependency install: pip's output,
// then pytest's.
var installOutput = []client.Event{
	{Type: "phase", Phase: "install"},
	{Type: "log", Stream: "stdout", Text: "Collecting attrs\n"},
	{Type: "log", Stream: "stderr", Text: "WARNING: pip is old\n"},
	{Type: "log", Stream: "stdout", Text: "Successfully installed attrs\n"},
	{Type: "phase", Phase: "test"},
	{Type: "log", Stream: "stdout", Text: "test_a.py .\n"},
}

// runCLIOneWriter runs ci with stdout and stderr on one writer, as on a
// terminal, to see the order of what it prints.
func runCLIOneWriter(t *testing.T, args ...string) (code int, out string) {
	t.Helper()
	var b bytes.Buffer
	code = run(testContext(t), args, &b, &b)
	return code, b.String()
}

// TestPhaseHeadings checks that following a job prints a heading on stderr
// where each phase begins, in order with the output around it.
func TestPhaseHeadings(t *testing.T) {
	f := newFakeServer(t)
	f.setEvents(installOutput, "passed", intp(0), "")
	const want = "==> install\nCollecting attrs\nWARNING: pip is old\nSuccessfully installed attrs\n==> test\ntest_a.py .\n"
	for _, args := range [][]string{
		{"wait", "J1"},
		{"submit", "test", "--dir", projectDir(t)},
	} {
		code, out := runCLIOneWriter(t, append(args, "--server", f.srv.URL)...)
		out = strings.TrimPrefix(out, "Job J1 submitted: "+f.srv.URL+"/jobs/J1\n")
		if code != 0 || out != want {
			t.Errorf("ci %q: exit %d, output\n%q\nwant 0 and\n%q", args, code, out, want)
		}
	}

	// Apart: the headings are ci's own messages, on stderr.
	code, stdout, stderr := runCLI(t, testContext(t), "wait", "J1", "--server", f.srv.URL)
	wantOut, wantErr := "Collecting attrs\nSuccessfully installed attrs\ntest_a.py .\n", "==> install\nWARNING: pip is old\n==> test\n"
	if code != 0 || stdout != wantOut || stderr != wantErr {
		t.Fatalf("exit %d, stdout %q, stderr %q; want 0, %q, %q", code, stdout, stderr, wantOut, wantErr)
	}
}

// TestPhaseHeadingColour checks that headings are bold when colour is on
// and plain when it is off.
func TestPhaseHeadingColour(t *testing.T) {
	f := newFakeServer(t)
	f.setEvents(installOutput, "passed", intp(0), "")
	for _, tt := range []struct {
		noColor, ciColor string
		want             string
	}{
		{"", "", "==> install\nWARNING: pip is old\n==> test\n"}, // a pipe
		{"", "always", "\x1b[1m==> install\x1b[0m\nWARNING: pip is old\n\x1b[1m==> test\x1b[0m\n"},
		{"1", "", "==> install\nWARNING: pip is old\n==> test\n"},
		{"", "never", "==> install\nWARNING: pip is old\n==> test\n"},
	} {
		t.Setenv("NO_COLOR", tt.noColor)
		t.Setenv("CI_COLOR", tt.ciColor)
		code, _, stderr := runCLI(t, testContext(t), "wait", "J1", "--server", f.srv.URL)
		if code != 0 || stderr != tt.want {
			t.Errorf("NO_COLOR=%q CI_COLOR=%q: exit %d, stderr %q, want 0 and %q", tt.noColor, tt.ciColor, code, stderr, tt.want)
		}
	}
}

// TestPhaseHeadingOwnLine checks that a heading after output that did not
// end its line starts a line of its own.
func TestPhaseHeadingOwnLine(t *testing.T) {
	f := newFakeServer(t)
	f.setEvents([]client.Event{
		{Type: "phase", Phase: "install"},
		{Type: "log", Stream: "stderr", Text: "no newline"},
		{Type: "phase", Phase: "test"},
		{Type: "log", Stream: "stdout", Text: "test_a.py ."},
	}, "passed", intp(0), "")
	code, out := runCLIOneWriter(t, "wait", "J1", "--server", f.srv.URL)
	if want := "==> install\nno newline\n==> test\ntest_a.py ."; code != 0 || out != want {
		t.Fatalf("exit %d, output %q; want 0 and %q", code, out, want)
	}

	// So does the reason after it, and a colour code after the last
	// newline does not count as text.
	f.setEvents([]client.Event{
		{Type: "log", Stream: "stdout", Text: "\x1b[32mtest_a.py .\n\x1b[0m"},
		{Type: "log", Stream: "stdout", Text: "test_b.py ."},
	}, "timed_out", nil, "ran past 10m0s")
	code, out = runCLIOneWriter(t, "wait", "J1", "--server", f.srv.URL)
	if want := "test_a.py .\ntest_b.py .\nci: job J1 timed out: ran past 10m0s\n"; code != 124 || out != want {
		t.Fatalf("exit %d, output %q; want 124 and %q", code, out, want)
	}
	f.setEvents([]client.Event{
		{Type: "log", Stream: "stdout", Text: "test_a.py .\n\x1b[0m"},
	}, "timed_out", nil, "ran past 10m0s")
	code, out = runCLIOneWriter(t, "wait", "J1", "--server", f.srv.URL)
	if want := "test_a.py .\nci: job J1 timed out: ran past 10m0s\n"; code != 124 || out != want {
		t.Fatalf("exit %d, output %q; want 124 and %q", code, out, want)
	}
}

// TestInstallFailed checks a job whose dependencies could not be
// installed: pip's output under its heading, the reason, exit 125.
func TestInstallFailed(t *testing.T) {
	f := newFakeServer(t)
	f.setEvents([]client.Event{
		{Type: "phase", Phase: "install"},
		{Type: "log", Stream: "stderr", Text: "ERROR: No matching distribution found for nope\n"},
	}, "error", nil, "installing the dependencies failed (pip exited 1)")
	code, stdout, stderr := runCLI(t, testContext(t), "submit", "test", "--dir", projectDir(t), "--server", f.srv.URL)
	want := "Job J1 submitted: " + f.srv.URL + "/jobs/J1\n==> install\nERROR: No matching distribution found for nope\n" +
		"ci: job J1 error: installing the dependencies failed (pip exited 1)\n"
	if code != 125 || stdout != "" || stderr != want {
		t.Fatalf("exit %d, stdout %q, stderr %q; want 125, nothing, %q", code, stdout, stderr, want)
	}
}
