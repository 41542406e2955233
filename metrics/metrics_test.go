package metrics_test

import (
	"bufio"
	"context"
	"errors"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"ci/api"
	"ci/executor"
	"ci/jobs"
	"ci/metrics"
	"ci/ws"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// Metrics implements every measurement hook ci-server wires it to.
var (
	_ jobs.Metrics      = (*metrics.Metrics)(nil)
	_ ws.Metrics        = (*metrics.Metrics)(nil)
	_ api.UploadMetrics = (*metrics.Metrics)(nil)
	_ executor.Metrics  = (*metrics.Metrics)(nil)
)

// scrape serves m's metrics and returns every sample by its series, as
// written in the text format: `name{label="value"}`.
func scrape(t *testing.T, m *metrics.Metrics) map[string]float64 {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != 200 || !strings.HasPrefix(rec.Header().Get("Content-Type"), "text/plain") {
		t.Fatalf("scrape: %d %q, want 200 text/plain", rec.Code, rec.Header().Get("Content-Type"))
	}
	samples := map[string]float64{}
	sc := bufio.NewScanner(rec.Body)
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

// want checks samples against the expected values of some series.
func want(t *testing.T, samples map[string]float64, want map[string]float64) {
	t.Helper()
	for series, v := range want {
		got, ok := samples[series]
		if !ok {
			t.Errorf("no sample %s", series)
		} else if got != v {
			t.Errorf("%s = %v, want %v", series, got, v)
		}
	}
}

// TestHooksMoveMetrics calls every hook and checks what a scrape shows.
func TestHooksMoveMetrics(t *testing.T) {
	m := metrics.New()
	m.ObserveLoad(func() jobs.Load { return jobs.Load{Queued: 2, Running: 1} })
	start := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	end := start.Add(3 * time.Second)

	m.JobSubmitted()
	m.JobSubmitted()
	m.JobFinished(&jobs.Job{Status: jobs.StatusPassed, StartedAt: &start, FinishedAt: &end})
	m.JobFinished(&jobs.Job{Status: jobs.StatusCanceled, FinishedAt: &end}) // canceled while queued
	m.PhaseEnded(jobs.PhaseInstall, 2*time.Second)
	m.PhaseEnded(jobs.PhaseTest, time.Second)
	m.PhaseEnded(jobs.PhaseTest, 500*time.Millisecond)
	m.EventsPersisted(10, 3*time.Millisecond)
	m.EventsPersisted(5, time.Millisecond)
	m.FollowOverflowed()
	m.WatchOverflowed()
	m.WatchOverflowed()
	m.StreamOpened(ws.StreamEvents)
	m.StreamOpened(ws.StreamEvents)
	m.StreamClosed(ws.StreamEvents)
	m.StreamOpened(ws.StreamJobs)
	m.UploadReceived(100)
	m.UploadReceived(20)
	m.UploadRejected(api.RejectTooLarge)
	m.ContainerStarted(executor.ContainerTest, 200*time.Millisecond)
	m.DepsResolved(executor.DepsCached)

	want(t, scrape(t, m), map[string]float64{
		`ci_jobs_submitted_total`:                                        2,
		`ci_jobs_finished_total{status="passed"}`:                        1,
		`ci_jobs_finished_total{status="canceled"}`:                      1,
		`ci_jobs_finished_total{status="failed"}`:                        0,
		`ci_job_duration_seconds_count{status="passed"}`:                 1,
		`ci_job_duration_seconds_sum{status="passed"}`:                   3,
		`ci_job_duration_seconds_bucket{status="passed",le="2"}`:         0,
		`ci_job_duration_seconds_bucket{status="passed",le="5"}`:         1,
		`ci_job_duration_seconds_count{status="canceled"}`:               0,
		`ci_job_phase_duration_seconds_count{phase="install"}`:           1,
		`ci_job_phase_duration_seconds_sum{phase="install"}`:             2,
		`ci_job_phase_duration_seconds_count{phase="test"}`:              2,
		`ci_job_phase_duration_seconds_sum{phase="test"}`:                1.5,
		`ci_events_persisted_total`:                                      15,
		`ci_event_batch_size_count`:                                      2,
		`ci_event_batch_size_sum`:                                        15,
		`ci_event_commit_duration_seconds_count`:                         2,
		`ci_event_commit_duration_seconds_sum`:                           0.004,
		`ci_slow_reader_fallbacks_total{stream="events"}`:                1,
		`ci_slow_reader_fallbacks_total{stream="jobs"}`:                  2,
		`ci_websocket_subscribers{stream="events"}`:                      1,
		`ci_websocket_subscribers{stream="jobs"}`:                        1,
		`ci_upload_bytes_total`:                                          120,
		`ci_uploads_rejected_total{reason="too_large"}`:                  1,
		`ci_uploads_rejected_total{reason="invalid"}`:                    0,
		`ci_container_start_duration_seconds_count{container="test"}`:    1,
		`ci_container_start_duration_seconds_sum{container="test"}`:      0.2,
		`ci_container_start_duration_seconds_count{container="install"}`: 0,
		`ci_dependency_installs_total{result="cached"}`:                  1,
		`ci_dependency_installs_total{result="installed"}`:               0,
		`ci_jobs_queued`:  2,
		`ci_jobs_running`: 1,
	})
}

// TestEveryLabelValueAtZero checks that a fresh server shows every series
// the hooks can move, at zero, with the label values of the packages that
// measure.
func TestEveryLabelValueAtZero(t *testing.T) {
	m := metrics.New()
	samples := scrape(t, m)
	series := []string{`ci_jobs_submitted_total`, `ci_events_persisted_total`, `ci_upload_bytes_total`}
	for _, s := range []jobs.Status{jobs.StatusPassed, jobs.StatusFailed, jobs.StatusError, jobs.StatusTimedOut, jobs.StatusCanceled} {
		series = append(series, `ci_jobs_finished_total{status="`+string(s)+`"}`, `ci_job_duration_seconds_count{status="`+string(s)+`"}`)
	}
	for _, p := range []string{jobs.PhaseInstall, jobs.PhaseTest} {
		series = append(series, `ci_job_phase_duration_seconds_count{phase="`+p+`"}`)
	}
	for _, s := range []string{ws.StreamEvents, ws.StreamJobs} {
		series = append(series, `ci_websocket_subscribers{stream="`+s+`"}`, `ci_slow_reader_fallbacks_total{stream="`+s+`"}`)
	}
	for _, r := range []string{api.RejectUnsupportedType, api.RejectTooLarge, api.RejectInvalid, api.RejectQueueFull} {
		series = append(series, `ci_uploads_rejected_total{reason="`+r+`"}`)
	}
	for _, k := range []string{executor.ContainerTest, executor.ContainerInstall} {
		series = append(series, `ci_container_start_duration_seconds_count{container="`+k+`"}`)
	}
	for _, r := range []string{executor.DepsInstalled, executor.DepsCached, executor.DepsFailed} {
		series = append(series, `ci_dependency_installs_total{result="`+r+`"}`)
	}
	zero := map[string]float64{}
	for _, s := range series {
		zero[s] = 0
	}
	want(t, samples, zero)
	if _, ok := samples[`go_goroutines`]; !ok {
		t.Error("no go_goroutines: want the Go runtime's metrics too")
	}
}

// TestNamingConventions runs Prometheus's own linter over ci's metrics.
func TestNamingConventions(t *testing.T) {
	m := metrics.New()
	m.ObserveLoad(func() jobs.Load { return jobs.Load{} })
	families, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range families {
		if strings.HasPrefix(f.GetName(), "ci_") {
			names = append(names, f.GetName())
		}
	}
	if len(names) < 15 {
		t.Fatalf("only %d ci_ metrics: %v", len(names), names)
	}
	problems, err := testutil.GatherAndLint(m.Registry(), names...)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
}

// TestBatchHooksDoNotAllocate checks that what the recorders call per
// committed batch, and the services per job, costs no allocation.
func TestBatchHooksDoNotAllocate(t *testing.T) {
	m := metrics.New()
	start := time.Now()
	end := start.Add(time.Second)
	job := &jobs.Job{Status: jobs.StatusPassed, StartedAt: &start, FinishedAt: &end}
	if n := testing.AllocsPerRun(100, func() {
		m.EventsPersisted(7, time.Millisecond)
		m.JobFinished(job)
		m.PhaseEnded(jobs.PhaseTest, time.Second)
		m.FollowOverflowed()
	}); n != 0 {
		t.Fatalf("%v allocations per call, want 0", n)
	}
}

// TestObserveStatuses checks ci_jobs{status}: every status present, from
// the count at each scrape, and left out when the count fails.
func TestObserveStatuses(t *testing.T) {
	m := metrics.New()
	var fail bool
	m.ObserveStatuses(func(context.Context) (map[jobs.Status]int64, error) {
		if fail {
			return nil, errors.New("database is locked")
		}
		return map[jobs.Status]int64{jobs.StatusPassed: 7, jobs.StatusQueued: 2}, nil
	})
	s := scrape(t, m)
	for series, want := range map[string]float64{
		`ci_jobs{status="passed"}`: 7, `ci_jobs{status="queued"}`: 2, `ci_jobs{status="timed_out"}`: 0,
	} {
		if got, ok := s[series]; !ok || got != want {
			t.Errorf("%s = %v (present %v), want %v", series, got, ok, want)
		}
	}
	fail = true
	if _, ok := scrape(t, m)[`ci_jobs{status="passed"}`]; ok {
		t.Error("ci_jobs present although the count failed")
	}
}
