package jobs

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeMetrics records what the service measures.
type fakeMetrics struct {
	mu              sync.Mutex
	submitted       int
	finished        []Job
	phases          []string // phase names in the order they ended
	phaseTook       []time.Duration
	events, batches int
	followOverflows int
	watchOverflows  int
}

func (m *fakeMetrics) JobSubmitted() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.submitted++
}

func (m *fakeMetrics) JobFinished(job *Job) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.finished = append(m.finished, *job)
}

func (m *fakeMetrics) PhaseEnded(phase string, took time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.phases = append(m.phases, phase)
	m.phaseTook = append(m.phaseTook, took)
}

func (m *fakeMetrics) EventsPersisted(events int, took time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.events += events
	m.batches++
}

func (m *fakeMetrics) FollowOverflowed() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.followOverflows++
}

func (m *fakeMetrics) WatchOverflowed() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.watchOverflows++
}

// snapshot returns a copy of what was measured so far.
func (m *fakeMetrics) snapshot() fakeMetrics {
	m.mu.Lock()
	defer m.mu.Unlock()
	return fakeMetrics{
		submitted: m.submitted, finished: append([]Job(nil), m.finished...),
		phases: append([]string(nil), m.phases...), phaseTook: append([]time.Duration(nil), m.phaseTook...),
		events: m.events, batches: m.batches, followOverflows: m.followOverflows, watchOverflows: m.watchOverflows,
	}
}

// newMeasuredService starts a service on env's store measured by a
// fakeMetrics.
func newMeasuredService(t *testing.T, exec Executor, cfg Config) (*testEnv, *fakeMetrics) {
	t.Helper()
	m := &fakeMetrics{}
	cfg.Metrics = m
	env := &testEnv{store: newMemStore(), arch: &dirArchives{dir: t.TempDir()}}
	env.svc = NewService(env.store, env.arch, exec, cfg)
	if err := env.svc.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { env.svc.Close() })
	return env, m
}

// TestMetricsJobWithPhases checks what a job with dependencies measures:
// one submit, one finish with its times as stored, the install phase then
// the test phase, and every event the recorder committed (all but the
// first, which is stored with the job).
func TestMetricsJobWithPhases(t *testing.T) {
	exec := funcExec(func(ctx context.Context, spec Spec, out Output) (Result, error) {
		out.Phase(PhaseInstall)
		out.Write(StreamStdout, []byte("installing\n"))
		out.Phase(PhaseTest)
		out.Write(StreamStdout, []byte("1 passed\n"))
		return Result{ExitCode: 1}, nil
	})
	env, m := newMeasuredService(t, exec, Config{Concurrency: 1})
	job := env.submit(t)
	evs := collect(t, env.svc, job.ID, 0)

	got := m.snapshot()
	if got.submitted != 1 {
		t.Fatalf("submitted=%d, want 1", got.submitted)
	}
	if len(got.finished) != 1 {
		t.Fatalf("finished %d jobs, want 1 (counted before the terminal event is published)", len(got.finished))
	}
	f := got.finished[0]
	if f.ID != job.ID || f.Status != StatusFailed || f.StartedAt == nil || f.FinishedAt == nil || f.FinishedAt.Before(*f.StartedAt) {
		t.Fatalf("finished job %+v, want %s failed with its start and end", f, job.ID)
	}
	if want := len(evs) - 1; got.events != want || got.batches < 1 || got.batches > want {
		t.Fatalf("events=%d in %d batches, want %d in 1..%d", got.events, got.batches, want, want)
	}
	if len(got.phases) != 2 || got.phases[0] != PhaseInstall || got.phases[1] != PhaseTest {
		t.Fatalf("phases ended %v, want [install test]", got.phases)
	}
	for i, d := range got.phaseTook {
		if d < 0 {
			t.Fatalf("phase %s took %s, want >= 0", got.phases[i], d)
		}
	}
}

// TestMetricsJobWithoutPhases checks that a job that announces no phase
// (no requirements) counts all of its run as its test phase, and that an
// install that fails ends the install phase with the job.
func TestMetricsJobWithoutPhases(t *testing.T) {
	for _, tc := range []struct {
		name   string
		exec   Executor
		phases string
	}{
		{"no phases", funcExec(func(context.Context, Spec, Output) (Result, error) { return Result{}, nil }), "test"},
		{"install fails", funcExec(func(ctx context.Context, spec Spec, out Output) (Result, error) {
			out.Phase(PhaseInstall)
			return Result{}, errors.New("pip failed")
		}), "install"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env, m := newMeasuredService(t, tc.exec, Config{Concurrency: 1})
			job := env.submit(t)
			collect(t, env.svc, job.ID, 0)
			got := m.snapshot()
			if phases := strings.Join(got.phases, " "); phases != tc.phases {
				t.Fatalf("phases ended %q, want %q", phases, tc.phases)
			}
		})
	}
}

// TestMetricsCanceledWhileQueued checks that a job canceled before it
// started is counted as finished canceled, without a start, and has no
// phase.
func TestMetricsCanceledWhileQueued(t *testing.T) {
	started := make(chan string, 10)
	env, m := newMeasuredService(t, blockingExec(started), Config{Concurrency: 1})
	env.submit(t)
	<-started
	queued := env.submit(t)
	if _, err := env.svc.Cancel(context.Background(), queued.ID); err != nil {
		t.Fatal(err)
	}
	got := m.snapshot()
	if len(got.finished) != 1 || got.finished[0].ID != queued.ID || got.finished[0].Status != StatusCanceled || got.finished[0].StartedAt != nil {
		t.Fatalf("finished %+v, want only %s canceled without a start", got.finished, queued.ID)
	}
	if len(got.phases) != 0 {
		t.Fatalf("phases %v, want none for a job that never ran", got.phases)
	}
}

// holdExec runs and re-attaches jobs that last until their context ends.
type holdExec struct{ started chan string }

func (e *holdExec) Run(ctx context.Context, spec Spec, out Output) (Result, error) {
	e.started <- spec.JobID
	<-ctx.Done()
	return Result{}, context.Cause(ctx)
}

func (e *holdExec) Reattach(ctx context.Context, spec Spec, out Output) (Result, error) {
	return e.Run(ctx, spec, out)
}

// TestLoadAcrossRestart checks the queued and running counts, also after a
// restart, when they come from the store.
func TestLoadAcrossRestart(t *testing.T) {
	exec := &holdExec{started: make(chan string, 10)}
	env := newTestService(t, exec, 1)
	if got := env.svc.Load(); got != (Load{}) {
		t.Fatalf("load %+v, want none", got)
	}
	env.submit(t)
	<-exec.started
	env.submit(t)
	env.submit(t)
	if got, want := env.svc.Load(), (Load{Queued: 2, Running: 1}); got != want {
		t.Fatalf("load %+v, want %+v", got, want)
	}
	env.svc.Close() // the running job is left running, to re-attach

	env.start(t, exec, 1)
	if got, want := env.svc.Load(), (Load{Queued: 2, Running: 1}); got != want {
		t.Fatalf("load after a restart %+v, want %+v", got, want)
	}
	<-exec.started // re-attached: still one running
	if got, want := env.svc.Load(), (Load{Queued: 2, Running: 1}); got != want {
		t.Fatalf("load after the re-attach %+v, want %+v", got, want)
	}
}

// TestMetricsFollowOverflow checks that a follower too slow for its
// subscription is counted when it falls back to the store.
func TestMetricsFollowOverflow(t *testing.T) {
	gate := make(chan struct{})
	exec := funcExec(func(ctx context.Context, spec Spec, out Output) (Result, error) {
		<-gate
		out.Write(StreamStdout, []byte("a\n"))
		out.Write(StreamStderr, []byte("b\n"))
		return Result{}, nil
	})
	env, m := newMeasuredService(t, exec, Config{Concurrency: 1, SubscriptionBuffer: 1})
	job := env.submit(t)
	blocked, release := make(chan struct{}), make(chan struct{})
	done := make(chan error, 1)
	var seen []int64
	go func() {
		done <- env.svc.Follow(context.Background(), job.ID, 0, func(ev Event) error {
			if ev.Seq == 1 {
				close(blocked)
				<-release // stall while the job writes more than the buffer holds
			}
			seen = append(seen, ev.Seq)
			return nil
		})
	}()
	<-blocked
	close(gate)
	// The overflow drops the subscription from the broker.
	waitFor(t, func() bool { return env.svc.Broker().Subscribers(job.ID) == 0 })
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for i, seq := range seen {
		if seq != int64(i+1) {
			t.Fatalf("follower got seq %d at %d, want every event once", seq, i)
		}
	}
	if got := m.snapshot(); got.followOverflows < 1 || got.watchOverflows != 0 {
		t.Fatalf("follow overflows %d, watch overflows %d, want >= 1 and 0", got.followOverflows, got.watchOverflows)
	}
}

// TestMetricsWatchOverflow checks that a job-list watcher too slow for
// its subscription is counted when it gets a fresh snapshot.
func TestMetricsWatchOverflow(t *testing.T) {
	env, m := newMeasuredService(t, funcExec(func(context.Context, Spec, Output) (Result, error) { return Result{}, nil }),
		Config{Concurrency: 1, SubscriptionBuffer: 1})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	blocked, release := make(chan struct{}), make(chan struct{})
	snapshots := make(chan int, 10)
	n := 0
	go env.svc.WatchJobs(ctx, 10, func(snapshot []*Job, change *Job) error {
		if snapshot == nil {
			return nil
		}
		n++
		if n == 1 {
			close(blocked)
			<-release
		}
		snapshots <- n
		return nil
	})
	<-blocked
	job := env.submit(t)
	collect(t, env.svc, job.ID, 0) // queued, running, passed: more than the buffer
	close(release)
	<-snapshots
	if n := <-snapshots; n != 2 {
		t.Fatalf("snapshot %d, want the second", n)
	}
	if got := m.snapshot(); got.watchOverflows != 1 {
		t.Fatalf("watch overflows %d, want 1", got.watchOverflows)
	}
}
