package main

import (
	"archive/zip"
	"bufio"
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"ci/client"
	"ci/executor"
)

// startMain runs the server in-process on a loopback port with the fake
// executor and the given extra flags; it is closed when the test ends.
func startMain(t *testing.T, args ...string) *Main {
	t.Helper()
	m := NewMain()
	args = append([]string{"--addr", "127.0.0.1:0", "--data", t.TempDir()}, args...)
	if err := m.ParseFlags(args, io.Discard); err != nil {
		t.Fatal(err)
	}
	m.Log = slog.New(slog.DiscardHandler)
	m.Executor = &executor.Fake{}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := m.Run(ctx); err != nil {
		m.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// get fetches url with the token, if any, and returns the status and body.
func get(t *testing.T, url, token string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// scrape returns every sample of the server's /metrics by its series, as
// the text format writes it: `name{label="value"}`.
func scrape(t *testing.T, m *Main) map[string]float64 {
	t.Helper()
	status, body := get(t, m.URL()+"/metrics", "")
	if status != http.StatusOK {
		t.Fatalf("GET /metrics: %d %s", status, body)
	}
	samples := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("sample %q: %v", line, err)
		}
		samples[line[:i]] = v
	}
	return samples
}

// waitMetrics scrapes until ok holds for the samples, failing the test
// after a deadline.
func waitMetrics(t *testing.T, m *Main, what string, ok func(map[string]float64) bool) map[string]float64 {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s := scrape(t, m)
		if ok(s) {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics never showed %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestMainMetrics submits a job to the in-process server and checks that
// /metrics shows it: submitted, finished failed with its duration and test
// phase, its events persisted, its upload's bytes, the WebSocket that
// followed it, and an empty queue once it is over.
func TestMainMetrics(t *testing.T) {
	m := startMain(t)
	before := scrape(t, m)
	for _, series := range []string{`ci_jobs_queued`, `ci_jobs_running`, `ci_jobs_finished_total{status="failed"}`, `ci_events_persisted_total`} {
		if v, ok := before[series]; !ok || v != 0 {
			t.Fatalf("before any job: %s = %v (present %v), want 0", series, v, ok)
		}
	}

	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	w, _ := zw.Create(executor.FakeScript)
	io.WriteString(w, "stdout \"hello\\n\"\nstderr \"oops\\n\"\nexit 1\n")
	zw.Close()
	size := buf.Len()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := client.New(m.URL())
	job, err := c.Submit(ctx, &buf, nil)
	if err != nil {
		t.Fatal(err)
	}
	end, err := c.Follow(ctx, job.ID, 0, func(client.Event) error { return nil })
	if err != nil || end.Status != "failed" {
		t.Fatalf("job ended %+v, %v; want failed", end, err)
	}

	s := waitMetrics(t, m, "the job finished, nothing running and no stream open", func(s map[string]float64) bool {
		return s[`ci_jobs_finished_total{status="failed"}`] == 1 && s[`ci_jobs_running`] == 0 &&
			s[`ci_websocket_subscribers{stream="events"}`] == 0
	})
	for series, want := range map[string]float64{
		`ci_jobs_submitted_total`:                                     1,
		`ci_jobs_queued`:                                              0,
		`ci_jobs_finished_total{status="passed"}`:                     0,
		`ci_jobs{status="failed"}`:                                    1, // from the store
		`ci_jobs{status="queued"}`:                                    0,
		`ci_job_duration_seconds_count{status="failed"}`:              1,
		`ci_job_phase_duration_seconds_count{phase="test"}`:           1,
		`ci_job_phase_duration_seconds_count{phase="install"}`:        0,
		`ci_upload_bytes_total`:                                       float64(size),
		`ci_uploads_rejected_total{reason="invalid"}`:                 0,
		`ci_slow_reader_fallbacks_total{stream="events"}`:             0,
		`ci_websocket_subscribers{stream="jobs"}`:                     0,
		`ci_dependency_installs_total{result="installed"}`:            0, // the fake executor measures nothing
		`ci_container_start_duration_seconds_count{container="test"}`: 0,
	} {
		if got, ok := s[series]; !ok || got != want {
			t.Errorf("%s = %v (present %v), want %v", series, got, ok, want)
		}
	}
	// running, stdout, stderr and the terminal status, at least; the
	// queued event is stored with the job.
	if n := s[`ci_events_persisted_total`]; n < 4 {
		t.Errorf("ci_events_persisted_total = %v, want >= 4", n)
	}
	if n := s[`ci_event_batch_size_count`]; n < 1 || n != s[`ci_event_commit_duration_seconds_count`] {
		t.Errorf("%v batches, %v commits timed: want as many, at least one", n, s[`ci_event_commit_duration_seconds_count`])
	}
	if _, ok := s[`go_goroutines`]; !ok {
		t.Error("no go_goroutines: want the Go runtime's metrics too")
	}
}

// TestMainMetricsPrivate checks that with --private, /metrics needs the
// token like every other read.
func TestMainMetricsPrivate(t *testing.T) {
	const token = "metrics-token-0123456789"
	m := startMain(t, "--token", token, "--private")
	if status, _ := get(t, m.URL()+"/metrics", ""); status != http.StatusUnauthorized {
		t.Fatalf("GET /metrics without the token: %d, want 401", status)
	}
	if status, body := get(t, m.URL()+"/metrics", token); status != http.StatusOK || !strings.Contains(body, "ci_jobs_queued 0") {
		t.Fatalf("GET /metrics with the token: %d, want 200 with ci_jobs_queued 0:\n%s", status, body)
	}
}

// TestPprof checks that --pprof serves the profiles on a listener of its
// own, and that the main listener never does.
func TestPprof(t *testing.T) {
	m := startMain(t, "--pprof", "127.0.0.1:0")
	if m.PprofURL() == "" || m.PprofURL() == m.URL() {
		t.Fatalf("pprof URL %q, want a listener apart from %q", m.PprofURL(), m.URL())
	}
	for _, path := range []string{"/debug/pprof/", "/debug/pprof/goroutine?debug=1", "/debug/pprof/cmdline"} {
		if status, body := get(t, m.PprofURL()+path, ""); status != http.StatusOK || body == "" {
			t.Fatalf("GET %s on the pprof listener: %d, want 200 with a body", path, status)
		}
	}
	if _, body := get(t, m.PprofURL()+"/debug/pprof/", ""); !strings.Contains(body, "goroutine") {
		t.Fatalf("pprof index lists no goroutine profile:\n%s", body)
	}
	for _, path := range []string{"/debug/pprof/", "/debug/pprof/goroutine?debug=1", "/debug/pprof/cmdline"} {
		if status, body := get(t, m.URL()+path, ""); status != http.StatusNotFound || strings.Contains(body, "goroutine") {
			t.Fatalf("GET %s on the main listener: %d, want 404 and no profile", path, status)
		}
	}
	if status, _ := get(t, m.PprofURL()+"/metrics", ""); status != http.StatusNotFound {
		t.Fatalf("GET /metrics on the pprof listener: %d, want 404 (pprof only)", status)
	}

	off := startMain(t)
	if off.PprofURL() != "" {
		t.Fatalf("pprof URL %q without --pprof, want none", off.PprofURL())
	}
}

func TestParseFlagsPprof(t *testing.T) {
	m := NewMain()
	if m.Pprof != "" {
		t.Fatalf("pprof %q by default, want off", m.Pprof)
	}
	if err := m.ParseFlags([]string{"--pprof", "127.0.0.1:6060"}, io.Discard); err != nil || m.Pprof != "127.0.0.1:6060" {
		t.Fatalf("--pprof 127.0.0.1:6060: %q, %v", m.Pprof, err)
	}
	if err := NewMain().ParseFlags([]string{"--pprof", "6060"}, io.Discard); err == nil {
		t.Fatal("--pprof 6060 accepted, want host:port")
	}
}
