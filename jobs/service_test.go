package jobs

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"
)

// waitFor polls cond until it holds, failing the test after a deadline.
func waitFor(t testing.TB, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met before the deadline")
		}
		time.Sleep(time.Millisecond)
	}
}

type testEnv struct {
	store *memStore
	arch  *dirArchives
	svc   *Service
}

func newTestService(t *testing.T, exec Executor, concurrency int) *testEnv {
	t.Helper()
	env := &testEnv{store: newMemStore(), arch: &dirArchives{dir: t.TempDir()}}
	env.start(t, exec, concurrency)
	return env
}

func (e *testEnv) start(t *testing.T, exec Executor, concurrency int) {
	t.Helper()
	e.svc = NewService(e.store, e.arch, exec, Config{Concurrency: concurrency})
	if err := e.svc.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	svc := e.svc
	t.Cleanup(func() { svc.Close() })
}

func (e *testEnv) submit(t *testing.T, args ...string) *Job {
	t.Helper()
	zip := makeZip(t, map[string]string{"test_a.py": "def test_a(): pass\n"})
	job, err := e.svc.Submit(context.Background(), bytes.NewReader(zip), SubmitOptions{Args: args})
	if err != nil {
		t.Fatal(err)
	}
	return job
}

// collect follows a job from after to its end and returns the events.
func collect(t testing.TB, svc *Service, id string, after int64) []Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var evs []Event
	if err := svc.Follow(ctx, id, after, func(ev Event) error {
		evs = append(evs, ev)
		return nil
	}); err != nil {
		t.Fatalf("follow %s: %v", id, err)
	}
	return evs
}

func TestServiceRunsJobToTheEnd(t *testing.T) {
	exec := funcExec(func(ctx context.Context, spec Spec, out Output) (Result, error) {
		out.Write(StreamStdout, []byte("collected 1 item\n"))
		out.Write(StreamStdout, []byte("."))
		out.Write(StreamStderr, []byte("warning\n"))
		return Result{ExitCode: 0}, nil
	})
	env := newTestService(t, exec, 1)
	job := env.submit(t)
	evs := collect(t, env.svc, job.ID, 0)

	var kinds []string
	for i, ev := range evs {
		if ev.Seq != int64(i+1) {
			t.Fatalf("event %d seq=%d, want %d", i, ev.Seq, i+1)
		}
		kinds = append(kinds, string(ev.Type)+":"+string(ev.Status)+ev.Stream)
	}
	want := "status:queued status:running log:stdout log:stderr status:passed"
	if got := strings.Join(kinds, " "); got != want && got != "status:queued status:running log:stdout log:stdout log:stderr status:passed" {
		t.Fatalf("events %q, want %q", got, want)
	}
	got, _ := env.svc.Job(context.Background(), job.ID)
	if got.Status != StatusPassed || got.ExitCode == nil || *got.ExitCode != 0 || got.FinishedAt == nil || got.StartedAt == nil {
		t.Fatalf("job %+v, want passed with exit code 0 and times", got)
	}
}

func TestServiceOutcomes(t *testing.T) {
	for _, tc := range []struct {
		name   string
		res    Result
		err    error
		status Status
		code   int // -1: none
		reason string
	}{
		{"passed", Result{ExitCode: 0}, nil, StatusPassed, 0, ""},
		{"failed", Result{ExitCode: 1}, nil, StatusFailed, 1, "some tests failed"},
		{"no tests", Result{ExitCode: 5}, nil, StatusFailed, 5, "no tests"},
		{"executor error", Result{}, fmt.Errorf(`image "x" is not available`), StatusError, -1, `image "x" is not available`},
		{"oom", Result{ExitCode: 137, OOMKilled: true, MemoryLimit: 64 << 20}, nil, StatusError, 137, "out of memory): they used more than the limit of 64 MiB"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			exec := funcExec(func(context.Context, Spec, Output) (Result, error) { return tc.res, tc.err })
			env := newTestService(t, exec, 1)
			job := env.submit(t)
			evs := collect(t, env.svc, job.ID, 0)
			last := evs[len(evs)-1]
			if last.Status != tc.status || !strings.Contains(last.Reason, tc.reason) {
				t.Fatalf("terminal event %+v, want %s with reason containing %q", last, tc.status, tc.reason)
			}
			if (tc.code < 0) != (last.ExitCode == nil) || (last.ExitCode != nil && *last.ExitCode != tc.code) {
				t.Fatalf("exit code %v, want %d", last.ExitCode, tc.code)
			}
		})
	}
}

func TestServicePassesSpec(t *testing.T) {
	got := make(chan Spec, 1)
	exec := funcExec(func(ctx context.Context, spec Spec, out Output) (Result, error) {
		got <- spec
		return Result{}, nil
	})
	env := newTestService(t, exec, 1)
	job := env.submit(t, "-k", "test_a")
	spec := <-got
	if spec.JobID != job.ID || strings.Join(spec.Args, " ") != "-k test_a" || spec.Archive != env.arch.path(job.Archive) {
		t.Fatalf("spec %+v, want job %s, args [-k test_a], archive %s", spec, job.ID, env.arch.path(job.Archive))
	}
}

func TestServiceRefusesBadArchives(t *testing.T) {
	env := newTestService(t, funcExec(func(context.Context, Spec, Output) (Result, error) { return Result{}, nil }), 1)
	for name, body := range map[string][]byte{
		"not a zip": []byte("hello, I am not a zip"),
		"empty":     nil,
		"dotdot":    makeZip(t, map[string]string{"../evil.py": "x"}),
		"absolute":  makeZip(t, map[string]string{"/etc/evil": "x"}),
	} {
		_, err := env.svc.Submit(context.Background(), bytes.NewReader(body), SubmitOptions{})
		if ErrorCode(err) != EINVALID {
			t.Errorf("%s: err=%v, want an EINVALID error", name, err)
		}
	}
	if jobs, _ := env.svc.Jobs(context.Background(), ListOptions{}); len(jobs) != 0 {
		t.Fatalf("%d jobs after refused uploads, want 0", len(jobs))
	}
}

// TestServiceFIFOAndConcurrency runs more jobs than workers: each time a
// slot frees up, the oldest queued job starts, and no more than Concurrency
// run at once.
func TestServiceFIFOAndConcurrency(t *testing.T) {
	const concurrency, n = 2, 8
	var live, maxLive atomic.Int32
	started := make(chan string, n)
	var mu sync.Mutex
	release := map[string]chan struct{}{}
	releaseOf := func(id string) chan struct{} {
		mu.Lock()
		defer mu.Unlock()
		if release[id] == nil {
			release[id] = make(chan struct{})
		}
		return release[id]
	}
	exec := funcExec(func(ctx context.Context, spec Spec, out Output) (Result, error) {
		l := live.Add(1)
		for {
			m := maxLive.Load()
			if l <= m || maxLive.CompareAndSwap(m, l) {
				break
			}
		}
		started <- spec.JobID
		<-releaseOf(spec.JobID)
		live.Add(-1)
		return Result{}, nil
	})
	env := newTestService(t, exec, concurrency)
	var ids []string
	for range n {
		ids = append(ids, env.submit(t).ID)
	}
	first := map[string]bool{<-started: true, <-started: true}
	if !first[ids[0]] || !first[ids[1]] {
		t.Fatalf("first started %v, want %s and %s", first, ids[0], ids[1])
	}
	for i := concurrency; i < n; i++ {
		close(releaseOf(ids[i-concurrency]))
		if got := <-started; got != ids[i] {
			t.Fatalf("after job %d ended, %s started, want %s (job %d)", i-concurrency, got, ids[i], i)
		}
	}
	for i := n - concurrency; i < n; i++ {
		close(releaseOf(ids[i]))
	}
	for _, id := range ids {
		collect(t, env.svc, id, 0)
	}
	if m := maxLive.Load(); m != concurrency {
		t.Fatalf("max concurrent runs=%d, want %d", m, concurrency)
	}
}

// TestServiceRestartKeepsQueuedJobs closes a service while jobs are queued
// behind a running one; a new service on the same store runs the queued
// jobs and ends the one that was running as error.
func TestServiceRestartKeepsQueuedJobs(t *testing.T) {
	started := make(chan string, 10)
	blocking := funcExec(func(ctx context.Context, spec Spec, out Output) (Result, error) {
		started <- spec.JobID
		<-ctx.Done()
		return Result{}, ctx.Err()
	})
	env := newTestService(t, blocking, 1)
	running := env.submit(t)
	if id := <-started; id != running.ID {
		t.Fatalf("started %s, want %s", id, running.ID)
	}
	q1, q2 := env.submit(t), env.submit(t)
	env.svc.Close()

	j, _ := env.store.Job(context.Background(), running.ID)
	if j.Status != StatusError || !strings.Contains(j.Reason, "shut down") {
		t.Fatalf("running job after shutdown: %s %q, want error saying the server shut down", j.Status, j.Reason)
	}
	for _, id := range []string{q1.ID, q2.ID} {
		if j, _ := env.store.Job(context.Background(), id); j.Status != StatusQueued {
			t.Fatalf("queued job %s is %s after shutdown, want queued", id, j.Status)
		}
	}

	var mu sync.Mutex
	var ran []string
	env.start(t, funcExec(func(ctx context.Context, spec Spec, out Output) (Result, error) {
		mu.Lock()
		ran = append(ran, spec.JobID)
		mu.Unlock()
		return Result{}, nil
	}), 1)
	for _, id := range []string{q1.ID, q2.ID} {
		evs := collect(t, env.svc, id, 0)
		if last := evs[len(evs)-1]; last.Status != StatusPassed {
			t.Fatalf("requeued job %s ended %s, want passed", id, last.Status)
		}
	}
	if strings.Join(ran, ",") != q1.ID+","+q2.ID {
		t.Fatalf("ran %v, want [%s %s] in order", ran, q1.ID, q2.ID)
	}
}

func TestServiceStartEndsStaleRunningJobs(t *testing.T) {
	st := newMemStore()
	job := &Job{Status: StatusRunning, LastSeq: 2}
	st.CreateJob(context.Background(), job, []Event{
		{Seq: 1, Type: EventStatus, Status: StatusQueued},
		{Seq: 2, Type: EventStatus, Status: StatusRunning},
	})
	env := &testEnv{store: st, arch: &dirArchives{dir: t.TempDir()}}
	env.start(t, funcExec(func(context.Context, Spec, Output) (Result, error) { return Result{}, nil }), 1)
	evs := collect(t, env.svc, job.ID, 0)
	if len(evs) != 3 || evs[2].Status != StatusError || evs[2].Reason == "" {
		t.Fatalf("events %+v, want queued, running, error with a reason", evs)
	}
}

// TestFollowManyConcurrentSubscribers is the replay-then-follow race: while
// a job writes thousands of events, followers start at random moments from
// random seqs, some of them slow enough to overflow their subscription.
// Each must see exactly after+1 .. last, in order, once.
func TestFollowManyConcurrentSubscribers(t *testing.T) {
	const chunks = 3000
	const followers = 40
	produce := make(chan struct{})
	exec := funcExec(func(ctx context.Context, spec Spec, out Output) (Result, error) {
		<-produce
		for i := range chunks {
			if err := out.Write(StreamStdout, fmt.Appendf(nil, "%d\n", i)); err != nil {
				return Result{}, err
			}
			if i%100 == 0 {
				runtime.Gosched()
			}
		}
		return Result{}, nil
	})
	st := newMemStore()
	env := &testEnv{store: st, arch: &dirArchives{dir: t.TempDir()}}
	env.svc = NewService(st, env.arch, exec, Config{Concurrency: 1, SubscriptionBuffer: 8})
	if err := env.svc.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer env.svc.Close()
	job := env.submit(t)

	var wg sync.WaitGroup
	results := make([][]Event, followers)
	afters := make([]int64, followers)
	startGate := make(chan struct{})
	for f := range followers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-startGate
			// Start at a random point of the job's life, from a random seq
			// that may not exist yet.
			for range rand.IntN(50) {
				runtime.Gosched()
			}
			j, _ := st.Job(context.Background(), job.ID)
			afters[f] = rand.Int64N(j.LastSeq + 1)
			slow := f%4 == 0
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			err := env.svc.Follow(ctx, job.ID, afters[f], func(ev Event) error {
				results[f] = append(results[f], ev)
				if slow && ev.Seq%7 == 0 {
					for range 200 {
						runtime.Gosched() // fall behind the writer
					}
				}
				return nil
			})
			if err != nil {
				t.Errorf("follower %d: %v", f, err)
			}
		}()
	}
	close(startGate)
	close(produce)
	wg.Wait()

	final, _ := st.Job(context.Background(), job.ID)
	if final.Status != StatusPassed {
		t.Fatalf("job ended %s, want passed", final.Status)
	}
	for f, evs := range results {
		want := afters[f] + 1
		for _, ev := range evs {
			if ev.Seq != want {
				t.Fatalf("follower %d (after=%d): got seq %d, want %d", f, afters[f], ev.Seq, want)
			}
			want++
		}
		if want-1 != final.LastSeq {
			t.Fatalf("follower %d (after=%d): ended at seq %d, want %d", f, afters[f], want-1, final.LastSeq)
		}
	}
	// And the stored text is every line exactly once, in order.
	all := collect(t, env.svc, job.ID, 0)
	var text strings.Builder
	for _, ev := range all {
		text.WriteString(ev.Text)
	}
	var want strings.Builder
	for i := range chunks {
		fmt.Fprintf(&want, "%d\n", i)
	}
	if text.String() != want.String() {
		t.Fatal("stored output is not every chunk once, in order")
	}
}

func TestFollowUnknownJob(t *testing.T) {
	env := newTestService(t, funcExec(func(context.Context, Spec, Output) (Result, error) { return Result{}, nil }), 1)
	err := env.svc.Follow(context.Background(), "nope", 0, func(Event) error { return nil })
	if ErrorCode(err) != ENOTFOUND {
		t.Fatalf("err=%v, want ENOTFOUND", err)
	}
}

// TestFollowFromTheEnd starts a follower at and past the terminal event of
// an ended job: it must return at once instead of waiting for more.
func TestFollowFromTheEnd(t *testing.T) {
	env := newTestService(t, funcExec(func(context.Context, Spec, Output) (Result, error) { return Result{}, nil }), 1)
	job := env.submit(t)
	evs := collect(t, env.svc, job.ID, 0)
	last := evs[len(evs)-1].Seq
	for _, after := range []int64{last, last + 5} {
		if got := collect(t, env.svc, job.ID, after); len(got) != 0 {
			t.Fatalf("after=%d: got %d events, want none", after, len(got))
		}
	}
}

// TestWatchJobs checks the job-list feed: a snapshot, then every status
// change of every job, persisted before it is announced.
func TestWatchJobs(t *testing.T) {
	env := newTestService(t, funcExec(func(ctx context.Context, spec Spec, out Output) (Result, error) {
		out.Write(StreamStdout, []byte("x"))
		return Result{ExitCode: 1}, nil
	}), 1)
	old := env.submit(t)
	collect(t, env.svc, old.ID, 0)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type msg struct {
		snapshot []*Job
		change   *Job
	}
	msgs := make(chan msg, 100)
	done := make(chan error, 1)
	go func() {
		done <- env.svc.WatchJobs(ctx, 10, func(snapshot []*Job, change *Job) error {
			msgs <- msg{snapshot, change}
			return nil
		})
	}()
	first := <-msgs
	if len(first.snapshot) != 1 || first.snapshot[0].ID != old.ID || first.snapshot[0].Status != StatusFailed {
		t.Fatalf("snapshot %+v, want the one failed job", first.snapshot)
	}
	job := env.submit(t)
	var statuses []Status
	for len(statuses) == 0 || !statuses[len(statuses)-1].Terminal() {
		m := <-msgs
		if m.change == nil || m.change.ID != job.ID {
			t.Fatalf("got %+v, want a change of %s", m, job.ID)
		}
		stored, _ := env.store.Job(context.Background(), job.ID)
		if stored.LastSeq < m.change.LastSeq {
			t.Fatalf("announced last_seq %d before it was stored (%d)", m.change.LastSeq, stored.LastSeq)
		}
		statuses = append(statuses, m.change.Status)
	}
	if got := fmt.Sprint(statuses); got != "[queued running failed]" {
		t.Fatalf("changes %s, want [queued running failed]", got)
	}
	cancel()
	if err := <-done; err != context.Canceled {
		t.Fatalf("WatchJobs returned %v, want context.Canceled", err)
	}
}

// TestWatchJobsSlowWatcherGetsSnapshot checks the overflow policy: a
// watcher that falls behind gets a fresh snapshot, not unbounded memory.
func TestWatchJobsSlowWatcherGetsSnapshot(t *testing.T) {
	st := newMemStore()
	env := &testEnv{store: st, arch: &dirArchives{dir: t.TempDir()}}
	env.svc = NewService(st, env.arch, funcExec(func(context.Context, Spec, Output) (Result, error) { return Result{}, nil }), Config{Concurrency: 1, SubscriptionBuffer: 1})
	if err := env.svc.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer env.svc.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	gate := make(chan struct{})
	snapshots := make(chan []*Job, 10)
	n := 0
	go env.svc.WatchJobs(ctx, 100, func(snapshot []*Job, change *Job) error {
		if snapshot != nil {
			snapshots <- snapshot
			n++
			if n == 1 {
				<-gate // stall after the first snapshot while jobs change
			}
		}
		return nil
	})
	if s := <-snapshots; len(s) != 0 {
		t.Fatalf("first snapshot has %d jobs, want 0", len(s))
	}
	var ids []string
	for range 3 {
		j := env.submit(t)
		ids = append(ids, j.ID)
		collect(t, env.svc, j.ID, 0)
	}
	close(gate)
	newest := ids[len(ids)-1]
	deadline := time.After(10 * time.Second)
	for {
		select {
		case s := <-snapshots:
			if len(s) == 3 && s[0].ID == newest && s[0].Status == StatusPassed && s[2].Status == StatusPassed {
				return // a fresh snapshot with every job in its final state
			}
		case <-deadline:
			t.Fatal("no fresh snapshot after the watcher fell behind")
		}
	}
}

// blockingExec runs until its context ends, and reports each start.
func blockingExec(started chan<- string) Executor {
	return funcExec(func(ctx context.Context, spec Spec, out Output) (Result, error) {
		if started != nil {
			started <- spec.JobID
		}
		<-ctx.Done()
		return Result{}, ctx.Err()
	})
}

func lastEvent(t *testing.T, svc *Service, id string) Event {
	t.Helper()
	evs := collect(t, svc, id, 0)
	return evs[len(evs)-1]
}

func TestCancelQueuedJob(t *testing.T) {
	started := make(chan string, 10)
	env := newTestService(t, blockingExec(started), 1)
	first := env.submit(t)
	<-started
	queued := env.submit(t)
	job, err := env.svc.Cancel(context.Background(), queued.ID)
	if err != nil {
		t.Fatal(err)
	}
	if job.Status != StatusCanceled {
		t.Fatalf("queued job after cancel: %s, want canceled at once", job.Status)
	}
	if ev := lastEvent(t, env.svc, queued.ID); ev.Status != StatusCanceled || ev.Reason == "" {
		t.Fatalf("terminal event %+v, want canceled with a reason", ev)
	}
	// The canceled job never runs: after the first ends, nothing starts.
	env.svc.Cancel(context.Background(), first.ID)
	if ev := lastEvent(t, env.svc, first.ID); ev.Status != StatusCanceled {
		t.Fatalf("running job ended %s, want canceled", ev.Status)
	}
	third := env.submit(t)
	if id := <-started; id != third.ID {
		t.Fatalf("started %s, want %s: the canceled job must not run", id, third.ID)
	}
}

func TestCancelRunningJob(t *testing.T) {
	started := make(chan string, 1)
	env := newTestService(t, blockingExec(started), 1)
	job := env.submit(t)
	<-started
	if _, err := env.svc.Cancel(context.Background(), job.ID); err != nil {
		t.Fatal(err)
	}
	ev := lastEvent(t, env.svc, job.ID)
	if ev.Status != StatusCanceled || ev.Reason != "canceled by user" || ev.ExitCode != nil {
		t.Fatalf("terminal event %+v, want canceled by user without exit code", ev)
	}
	// Once the worker has let go of it, a second cancel is a conflict.
	waitFor(t, func() bool {
		env.svc.mu.Lock()
		defer env.svc.mu.Unlock()
		return env.svc.running[job.ID] == nil
	})
	if _, err := env.svc.Cancel(context.Background(), job.ID); ErrorCode(err) != ECONFLICT {
		t.Fatalf("cancel of an ended job: %v, want ECONFLICT", err)
	}
	if _, err := env.svc.Cancel(context.Background(), "nope"); ErrorCode(err) != ENOTFOUND {
		t.Fatalf("cancel of an unknown job: %v, want ENOTFOUND", err)
	}
}

func TestTimeout(t *testing.T) {
	env := newTestService(t, blockingExec(nil), 1)
	job, err := env.svc.Submit(context.Background(), bytes.NewReader(makeZip(t, map[string]string{"t.py": ""})), SubmitOptions{Timeout: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ev := lastEvent(t, env.svc, job.ID)
	if ev.Status != StatusTimedOut || !strings.Contains(ev.Reason, "50ms") {
		t.Fatalf("terminal event %+v, want timed_out naming the 50ms limit", ev)
	}
}

func TestTimeoutCappedByServer(t *testing.T) {
	st := newMemStore()
	env := &testEnv{store: st, arch: &dirArchives{dir: t.TempDir()}}
	env.svc = NewService(st, env.arch, blockingExec(nil), Config{Concurrency: 1, MaxTimeout: time.Hour})
	for _, tc := range []struct{ asked, want time.Duration }{{0, time.Hour}, {2 * time.Hour, time.Hour}, {time.Minute, time.Minute}} {
		job, err := env.svc.Submit(context.Background(), bytes.NewReader(makeZip(t, map[string]string{"t.py": ""})), SubmitOptions{Timeout: tc.asked})
		if err != nil {
			t.Fatal(err)
		}
		if job.Timeout != tc.want {
			t.Fatalf("asked %s: timeout %s, want %s", tc.asked, job.Timeout, tc.want)
		}
	}
	if _, err := env.svc.Submit(context.Background(), bytes.NewReader(makeZip(t, map[string]string{"t.py": ""})), SubmitOptions{Timeout: -time.Second}); ErrorCode(err) != EINVALID {
		t.Fatalf("negative timeout: %v, want EINVALID", err)
	}
}

func TestQueueFull(t *testing.T) {
	started := make(chan string, 1)
	st := newMemStore()
	env := &testEnv{store: st, arch: &dirArchives{dir: t.TempDir()}}
	env.svc = NewService(st, env.arch, blockingExec(started), Config{Concurrency: 1, MaxQueued: 1})
	if err := env.svc.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer env.svc.Close()
	env.submit(t)
	<-started
	env.submit(t) // waits in the queue
	_, err := env.svc.Submit(context.Background(), bytes.NewReader(makeZip(t, map[string]string{"t.py": ""})), SubmitOptions{})
	if ErrorCode(err) != EUNAVAILABLE || !strings.Contains(ErrorMessage(err), "queue is full") {
		t.Fatalf("third submit: %v, want EUNAVAILABLE saying the queue is full", err)
	}
}

// TestOutputCap floods past the per-job output limit: the stored log is
// the head up to the limit, one marker saying how much was dropped, and
// the exact last bytes (pytest's summary).
func TestOutputCap(t *testing.T) {
	const chunk, chunks = 1000, 100
	var all strings.Builder
	exec := funcExec(func(ctx context.Context, spec Spec, out Output) (Result, error) {
		for i := range chunks {
			text := fmt.Sprintf("%04d%s\n", i, strings.Repeat("é", (chunk-6)/2)) // multi-byte runes
			text += strings.Repeat("x", chunk-len(text))
			all.WriteString(text)
			if err := out.Write(StreamStdout, []byte(text)); err != nil {
				return Result{}, err
			}
		}
		out.Write(StreamStdout, []byte("== 3 passed ==\n"))
		return Result{}, nil
	})
	st := newMemStore()
	env := &testEnv{store: st, arch: &dirArchives{dir: t.TempDir()}}
	env.svc = NewService(st, env.arch, exec, Config{Concurrency: 1, MaxOutput: 10_000, OutputTail: 2_500})
	if err := env.svc.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer env.svc.Close()
	job := env.submit(t)
	var text strings.Builder
	var markers int
	for _, ev := range collect(t, env.svc, job.ID, 0) {
		if strings.Contains(ev.Text, "[ci: output passed the limit") {
			markers++
			if !strings.Contains(ev.Text, "limit of 9.8 KiB") || !strings.Contains(ev.Text, "dropped") {
				t.Fatalf("marker %q, want the limit and the amount dropped", ev.Text)
			}
			continue
		}
		text.WriteString(ev.Text)
	}
	if markers != 1 {
		t.Fatalf("%d markers, want 1", markers)
	}
	full := all.String() + "== 3 passed ==\n"
	got := text.String()
	if !strings.HasPrefix(full, got[:10_000]) {
		t.Fatal("stored head is not the start of the output")
	}
	if len(got) > 10_000+2_500 || !strings.HasSuffix(full, got[len(got)-2_400:]) || !strings.HasSuffix(got, "== 3 passed ==\n") {
		t.Fatalf("stored %d bytes; want at most the head and a 2500-byte tail ending with the summary", len(got))
	}
	if !utf8.ValidString(got) {
		t.Fatal("stored text is not valid UTF-8 after the cut")
	}
}

func TestMaskerHidesSecretsAcrossChunks(t *testing.T) {
	const secret = "tok-123456789"
	text := "before tok-123456789 middle tok-123456789 after . . ."
	for cut1 := 0; cut1 <= len(text); cut1 += 3 {
		for cut2 := cut1; cut2 <= len(text); cut2 += 5 {
			m := masker{secrets: []string{secret}}
			got := m.Next(text[:cut1]) + m.Next(text[cut1:cut2])
			got = m.Flush(got + m.Next(text[cut2:]))
			if want := "before *** middle *** after . . ."; got != want {
				t.Fatalf("cuts %d,%d: %q, want %q", cut1, cut2, got, want)
			}
		}
	}
	// Output that can't start a secret is not held back.
	m := masker{secrets: []string{secret}}
	if got := m.Next("collected 3 items\ntest_a.py ."); got != "collected 3 items\ntest_a.py ." {
		t.Fatalf("held back %q", got)
	}
}

// replayExec is an executor whose Reattach replays the whole output from
// the first byte, as Docker's logs do, and then the rest.
type replayExec struct {
	first, rest []chunkOut // output before the detach, and after it
	detached    chan struct{}
	code        int
}

type chunkOut struct{ stream, text string }

func (e *replayExec) Run(ctx context.Context, spec Spec, out Output) (Result, error) {
	for _, c := range e.first {
		out.Write(c.stream, []byte(c.text))
	}
	close(e.detached)
	<-ctx.Done()
	return Result{}, context.Cause(ctx)
}

func (e *replayExec) Reattach(ctx context.Context, spec Spec, out Output) (Result, error) {
	for _, c := range append(append([]chunkOut{}, e.first...), e.rest...) {
		if err := out.Write(c.stream, []byte(c.text)); err != nil {
			return Result{}, err
		}
	}
	return Result{ExitCode: e.code}, nil
}

// TestReattachOffsets is the offset bookkeeping across a restart: the
// server detaches mid-job (output held back for an incomplete rune and a
// possible secret included), a new server re-attaches, the executor
// replays everything from byte 0, and the stored log holds every byte of
// each stream exactly once, with a gapless seq.
func TestReattachOffsets(t *testing.T) {
	const secret = "s3cret-value-42"
	euro := "€" // 3 bytes, cut across chunks below
	exec := &replayExec{
		first: []chunkOut{
			{StreamStdout, "line 1\nline 2\n"},
			{StreamStderr, "warn 1\n"},
			{StreamStdout, "price: " + euro[:1]},  // incomplete rune held back
			{StreamStderr, "token " + secret[:6]}, // possible secret held back
		},
		rest: []chunkOut{
			{StreamStdout, euro[1:] + "\nline 3\n"},
			{StreamStderr, secret[6:] + " end\n"},
			{StreamStdout, "== 1 passed ==\n"},
		},
		detached: make(chan struct{}),
	}
	st := newMemStore()
	arch := &dirArchives{dir: t.TempDir()}
	cfg := Config{Concurrency: 1, Secrets: []string{secret}}
	svc := NewService(st, arch, exec, cfg)
	if err := svc.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	env := &testEnv{store: st, arch: arch, svc: svc}
	job := env.submit(t)
	<-exec.detached
	waitFor(t, func() bool { // what was not held back is stored
		j, _ := st.Job(context.Background(), job.ID)
		return j.Offsets.Stdout == int64(len("line 1\nline 2\nprice: ")) && j.Offsets.Stderr == int64(len("warn 1\ntoken "))
	})
	svc.Close()
	if j, _ := st.Job(context.Background(), job.ID); j.Status != StatusRunning {
		t.Fatalf("after a shutdown the job is %s, want still running (to re-attach)", j.Status)
	}

	svc2 := NewService(st, arch, exec, cfg)
	if err := svc2.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer svc2.Close()
	evs := collect(t, svc2, job.ID, 0)
	var stdout, stderr strings.Builder
	for i, ev := range evs {
		if ev.Seq != int64(i+1) {
			t.Fatalf("event %d has seq %d, want gapless", i, ev.Seq)
		}
		switch ev.Stream {
		case StreamStdout:
			stdout.WriteString(ev.Text)
		case StreamStderr:
			stderr.WriteString(ev.Text)
		}
	}
	if want := "line 1\nline 2\nprice: €\nline 3\n== 1 passed ==\n"; stdout.String() != want {
		t.Fatalf("stdout %q, want %q (every byte once)", stdout.String(), want)
	}
	if want := "warn 1\ntoken *** end\n"; stderr.String() != want {
		t.Fatalf("stderr %q, want %q (every byte once, secret masked)", stderr.String(), want)
	}
	last := evs[len(evs)-1]
	if last.Status != StatusPassed {
		t.Fatalf("job ended %s, want passed", last.Status)
	}
	statuses := 0
	for _, ev := range evs {
		if ev.Type == EventStatus && ev.Status == StatusRunning {
			statuses++
		}
	}
	if statuses != 1 {
		t.Fatalf("%d running events, want 1 (a re-attach is not a new start)", statuses)
	}
}

// TestResultEvent checks that pytest's per-test report becomes a result
// event before the terminal status, and is stored with the job.
func TestResultEvent(t *testing.T) {
	report := &TestReport{DurationS: 0.8, Tests: []TestCase{
		{NodeID: "tests/test_x.py::test_a", Outcome: "passed"},
		{NodeID: "tests/test_x.py::test_b", Outcome: "passed"},
		{NodeID: "tests/test_x.py::test_y", Outcome: "failed", Message: "assert 1 == 2"},
		{NodeID: "tests/test_x.py::test_z", Outcome: "error", Message: "fixture 'db' not found"},
		{NodeID: "tests/test_x.py::test_s", Outcome: "skipped", Message: "later"},
	}}
	env := newTestService(t, funcExec(func(context.Context, Spec, Output) (Result, error) {
		return Result{ExitCode: 1, Report: report}, nil
	}), 1)
	job := env.submit(t)
	evs := collect(t, env.svc, job.ID, 0)
	res, end := evs[len(evs)-2], evs[len(evs)-1]
	if res.Type != EventResult || !end.Terminal() {
		t.Fatalf("last events %+v, %+v; want a result event, then the terminal status", res, end)
	}
	want := TestCounts{Total: 5, Passed: 2, Failed: 1, Errors: 1, Skipped: 1}
	if res.Tests == nil || *res.Tests != want || res.DurationS != 0.8 || res.ExitCode == nil || *res.ExitCode != 1 {
		t.Fatalf("result %+v, want counts %+v, 0.8 s and exit code 1", res, want)
	}
	if len(res.Failures) != 2 || res.Failures[0].NodeID != "tests/test_x.py::test_y" || res.Failures[1].Message != "fixture 'db' not found" {
		t.Fatalf("failures %+v, want test_y and test_z with messages", res.Failures)
	}
	tests, err := env.svc.Tests(context.Background(), job.ID)
	if err != nil || len(tests) != 5 || tests[2].Message != "assert 1 == 2" {
		t.Fatalf("stored tests %+v (%v), want all 5 in order", tests, err)
	}
	if _, err := env.svc.Tests(context.Background(), "nope"); ErrorCode(err) != ENOTFOUND {
		t.Fatalf("tests of an unknown job: %v, want ENOTFOUND", err)
	}
}

// TestPhases checks that an executor's phases become phase events between
// the output they separate, that the job shows its phase, and that the
// output offsets count only the test phase's bytes (what Reattach
// replays).
func TestPhases(t *testing.T) {
	exec := funcExec(func(ctx context.Context, spec Spec, out Output) (Result, error) {
		out.Phase(PhaseInstall)
		out.Write(StreamStdout, []byte("Processing ./wheels/x.whl\n"))
		out.Write(StreamStderr, []byte("half a rune: \xe2\x82")) // held back, then flushed by Phase
		out.Phase(PhaseTest)
		out.Write(StreamStdout, []byte("collected 1 item\n"))
		return Result{}, nil
	})
	env := newTestService(t, exec, 1)
	job := env.submit(t)
	evs := collect(t, env.svc, job.ID, 0)
	var kinds []string
	for _, ev := range evs {
		k := string(ev.Type) + ":" + string(ev.Status) + ev.Phase + ev.Stream
		if len(kinds) == 0 || kinds[len(kinds)-1] != k {
			kinds = append(kinds, k)
		}
	}
	want := "status:queued status:running phase:install log:stdout log:stderr phase:test log:stdout status:passed"
	if got := strings.Join(kinds, " "); got != want {
		t.Fatalf("events %q, want %q", got, want)
	}
	// Chunks merge or not depending on commit timing: compare the text.
	var stderr strings.Builder
	for _, ev := range evs {
		if ev.Type == EventLog && ev.Stream == StreamStderr {
			stderr.WriteString(ev.Text)
		}
	}
	if !strings.HasPrefix(stderr.String(), "half a rune: \ufffd") {
		t.Fatalf("install stderr %q: want what was held back flushed as U+FFFD before the test phase", stderr.String())
	}
	got, _ := env.svc.Job(context.Background(), job.ID)
	if got.Phase != PhaseTest {
		t.Fatalf("job phase %q, want %q", got.Phase, PhaseTest)
	}
	if want := (Offsets{Stdout: int64(len("collected 1 item\n"))}); got.Offsets != want {
		t.Fatalf("offsets %+v, want %+v (the test phase's bytes only)", got.Offsets, want)
	}
}

// installExec installs (announcing PhaseInstall) and then, on its first
// Run, waits for a detach; later Runs go on to the tests. Reattach must not
// be called: the tests never started.
type installExec struct {
	runs      atomic.Int32
	installed chan struct{}
	reattach  atomic.Int32
	retries   atomic.Int32 // Runs with Spec.Retry set
}

func (e *installExec) Run(ctx context.Context, spec Spec, out Output) (Result, error) {
	n := e.runs.Add(1)
	if spec.Retry {
		e.retries.Add(1)
	}
	out.Phase(PhaseInstall)
	out.Write(StreamStdout, []byte(fmt.Sprintf("installing, run %d\n", n)))
	if n == 1 {
		close(e.installed)
		<-ctx.Done()
		return Result{}, context.Cause(ctx)
	}
	out.Phase(PhaseTest)
	out.Write(StreamStdout, []byte("1 passed\n"))
	return Result{}, nil
}

func (e *installExec) Reattach(ctx context.Context, spec Spec, out Output) (Result, error) {
	e.reattach.Add(1)
	return Result{}, fmt.Errorf("reattach called: %w", ErrGone)
}

// TestRestartDuringInstallRunsAgain checks that a job whose server went
// away while it was still installing runs again from the start under the
// next server (its tests never started, so there is nothing to re-attach
// to), with one note in the log and the same gapless seq.
func TestRestartDuringInstallRunsAgain(t *testing.T) {
	exec := &installExec{installed: make(chan struct{})}
	env := newTestService(t, exec, 1)
	job := env.submit(t)
	<-exec.installed
	waitFor(t, func() bool {
		j, _ := env.store.Job(context.Background(), job.ID)
		return j.Phase == PhaseInstall
	})
	env.svc.Close()

	env.start(t, exec, 1)
	evs := collect(t, env.svc, job.ID, 0)
	var text strings.Builder
	for i, ev := range evs {
		if ev.Seq != int64(i+1) {
			t.Fatalf("event %d has seq %d, want gapless", i, ev.Seq)
		}
		text.WriteString(ev.Text)
	}
	if n := exec.reattach.Load(); n != 0 {
		t.Fatalf("Reattach called %d times, want 0 for a job still installing", n)
	}
	if n := exec.retries.Load(); n != 1 {
		t.Fatalf("%d Runs with Spec.Retry, want 1 (the second: the executor must clean up the first's leftovers)", n)
	}
	want := "installing, run 1\n\n[ci: ci-server restarted while the job was installing its dependencies; installing again]\ninstalling, run 2\n1 passed\n"
	if text.String() != want {
		t.Fatalf("output %q, want %q", text.String(), want)
	}
	if last := evs[len(evs)-1]; last.Status != StatusPassed {
		t.Fatalf("job ended %s, want passed", last.Status)
	}
}

// TestTimeoutDuringInstall checks that a job that reaches its time limit
// while installing says so, rather than blaming tests that never ran.
func TestTimeoutDuringInstall(t *testing.T) {
	exec := funcExec(func(ctx context.Context, spec Spec, out Output) (Result, error) {
		out.Phase(PhaseInstall)
		<-ctx.Done()
		return Result{}, context.Cause(ctx)
	})
	env := newTestService(t, exec, 1)
	job, err := env.svc.Submit(context.Background(), bytes.NewReader(makeZip(t, map[string]string{"t.py": ""})), SubmitOptions{Timeout: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ev := lastEvent(t, env.svc, job.ID)
	if ev.Status != StatusTimedOut || !strings.Contains(ev.Reason, "while installing its dependencies") {
		t.Fatalf("terminal event %+v, want timed_out during the install", ev)
	}
}
