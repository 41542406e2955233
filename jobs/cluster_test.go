package jobs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// cluster is replicas sharing one store, archives and change feed.
type cluster struct {
	store *memStore
	arch  *dirArchives
	feed  *memFeed
}

func newCluster(t *testing.T) *cluster {
	store := newMemStore()
	feed := &memFeed{}
	store.feed = feed
	return &cluster{store: store, arch: &dirArchives{dir: t.TempDir()}, feed: feed}
}

// replica starts a replica named name.
func (c *cluster) replica(t *testing.T, name string, exec Executor, cfg Config) *Service {
	t.Helper()
	cfg.Replica, cfg.Changes = name, c.feed
	if cfg.Concurrency == 0 {
		cfg.Concurrency = 1
	}
	svc := NewService(c.store, c.arch, exec, cfg)
	if err := svc.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Close() })
	return svc
}

func submitTo(t *testing.T, svc *Service) *Job {
	t.Helper()
	zip := makeZip(t, map[string]string{"test_a.py": "def test_a(): pass\n"})
	job, err := svc.Submit(context.Background(), bytes.NewReader(zip), SubmitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return job
}

// checkGapless fails unless evs are seqs after+1, after+2, ... ending
// with the terminal event.
func checkGapless(t *testing.T, evs []Event, after int64) {
	t.Helper()
	for i, ev := range evs {
		if ev.Seq != after+1+int64(i) {
			t.Fatalf("event %d has seq %d, want %d", i, ev.Seq, after+1+int64(i))
		}
	}
	if len(evs) == 0 || !evs[len(evs)-1].Terminal() {
		t.Fatalf("events do not end with the terminal one: %+v", evs)
	}
}

// TestReplicasRunEachJobOnce submits jobs alternately to two replicas,
// each with a concurrency of 2: every job runs exactly once, on the
// replica its record names, and neither replica runs more than 2 at once.
func TestReplicasRunEachJobOnce(t *testing.T) {
	c := newCluster(t)
	var mu sync.Mutex
	runs := map[string][]string{} // job -> replicas that ran it
	live := map[string]int{}      // replica -> jobs running now
	exec := func(name string) Executor {
		return funcExec(func(ctx context.Context, spec Spec, out Output) (Result, error) {
			mu.Lock()
			runs[spec.JobID] = append(runs[spec.JobID], name)
			live[name]++
			if live[name] > 2 {
				t.Errorf("replica %s runs %d jobs at once, more than its concurrency of 2", name, live[name])
			}
			mu.Unlock()
			out.Write(StreamStdout, []byte("ran on "+name+"\n"))
			time.Sleep(time.Millisecond) // not a synchronisation: keeps jobs overlapping, so that the concurrency check bites
			mu.Lock()
			live[name]--
			mu.Unlock()
			return Result{}, nil
		})
	}
	a := c.replica(t, "a", exec("a"), Config{Concurrency: 2})
	b := c.replica(t, "b", exec("b"), Config{Concurrency: 2})
	var ids []string
	for i := range 20 {
		svc := a
		if i%2 == 1 {
			svc = b
		}
		ids = append(ids, submitTo(t, svc).ID)
	}
	for i, id := range ids {
		// Followed through the replica it was not submitted to.
		other := b
		if i%2 == 1 {
			other = a
		}
		evs := collect(t, other, id, 0)
		checkGapless(t, evs, 0)
		job, err := c.store.Job(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		ran := runs[id]
		mu.Unlock()
		if len(ran) != 1 || job.Replica != ran[0] || job.Status != StatusPassed {
			t.Fatalf("job %s ran on %v, record says replica %q, status %s: want once, on the recorded replica, passed",
				id, ran, job.Replica, job.Status)
		}
		var text strings.Builder
		for _, ev := range evs {
			text.WriteString(ev.Text)
		}
		if text.String() != "ran on "+job.Replica+"\n" {
			t.Fatalf("job %s: log does not say it ran on %s: %+v", id, job.Replica, evs)
		}
	}
}

// busyReplica starts a replica with a concurrency of 1 kept busy by a job
// that runs until the test ends: it claims nothing else. Start it before
// any other replica, which would take the job otherwise.
func (c *cluster) busyReplica(t *testing.T, name string, cfg Config) *Service {
	t.Helper()
	hold := make(chan struct{})
	cfg.Concurrency = 1
	svc := c.replica(t, name, funcExec(func(ctx context.Context, spec Spec, out Output) (Result, error) {
		select {
		case <-hold:
		case <-ctx.Done():
		}
		return Result{}, ctx.Err()
	}), cfg)
	t.Cleanup(func() { close(hold) }) // runs before svc.Close
	blocker := submitTo(t, svc)
	waitFor(t, func() bool {
		j, _ := c.store.Job(context.Background(), blocker.ID)
		return j.Status == StatusRunning && j.Replica == name
	})
	return svc
}

// TestFollowThroughOtherReplica streams a live job from the replica that
// does not run it: each line arrives while the job still runs, and the
// stream is gapless and exactly once.
func TestFollowThroughOtherReplica(t *testing.T) {
	c := newCluster(t)
	const lines = 50
	step := make(chan struct{})
	b := c.busyReplica(t, "b", Config{Poll: time.Hour}) // no polling: live events come through the feed
	a := c.replica(t, "a", funcExec(func(ctx context.Context, spec Spec, out Output) (Result, error) {
		for i := range lines {
			select {
			case <-step:
			case <-ctx.Done(): // the test failed
				return Result{}, ctx.Err()
			}
			out.Write(StreamStdout, []byte(fmt.Sprintf("line %d\n", i)))
		}
		return Result{}, nil
	}), Config{})
	job := submitTo(t, a)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	got := make(chan Event, 1000)
	errc := make(chan error, 1)
	go func() {
		errc <- b.Follow(ctx, job.ID, 0, func(ev Event) error { got <- ev; return nil })
	}()
	var evs []Event
	next := func() Event {
		select {
		case ev := <-got:
			evs = append(evs, ev)
			return ev
		case <-ctx.Done():
			t.Fatalf("no event after %+v", evs)
			return Event{}
		}
	}
	// queued, running, then each line while the job waits for the next.
	for next().Status != StatusRunning {
	}
	for i := range lines {
		select {
		case step <- struct{}{}:
		case <-ctx.Done():
			t.Fatalf("the job did not take line %d; events so far %+v", i, evs)
		}
		want := fmt.Sprintf("line %d\n", i)
		var text string
		for text != want {
			if ev := next(); ev.Type == EventLog {
				text += ev.Text
			}
		}
	}
	for {
		if ev := next(); ev.Terminal() {
			break
		}
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	checkGapless(t, evs, 0)
}

// TestFollowThroughReplicaThatMissedNotifications: when the feed loses
// changes, a follower on the other replica still gets every event, from
// the store, within a poll interval.
func TestFollowThroughReplicaThatMissedNotifications(t *testing.T) {
	c := newCluster(t)
	b := c.busyReplica(t, "b", Config{Poll: 20 * time.Millisecond})
	release := make(chan struct{})
	a := c.replica(t, "a", funcExec(func(ctx context.Context, spec Spec, out Output) (Result, error) {
		out.Write(StreamStdout, []byte("before\n"))
		select {
		case <-release:
		case <-ctx.Done(): // the test failed
			return Result{}, ctx.Err()
		}
		out.Write(StreamStdout, []byte("after\n"))
		return Result{}, nil
	}), Config{})
	c.feed.mu.Lock()
	c.feed.drop = true
	c.feed.mu.Unlock()
	job := submitTo(t, a)
	waitFor(t, func() bool { j, _ := c.store.Job(context.Background(), job.ID); return j.Status == StatusRunning })
	close(release)
	evs := collect(t, b, job.ID, 0)
	checkGapless(t, evs, 0)
	var text string
	for _, ev := range evs {
		text += ev.Text
	}
	if text != "before\nafter\n" || evs[len(evs)-1].Status != StatusPassed {
		t.Fatalf("got %q ending %s, want both lines and passed", text, evs[len(evs)-1].Status)
	}
}

// TestCancelThroughOtherReplica cancels a running job through the replica
// that does not run it: the running replica stops it.
func TestCancelThroughOtherReplica(t *testing.T) {
	c := newCluster(t)
	started := make(chan string, 1)
	exec := func(ctx context.Context, spec Spec, out Output) (Result, error) {
		started <- spec.JobID
		<-ctx.Done()
		return Result{}, context.Cause(ctx)
	}
	b := c.busyReplica(t, "b", Config{})
	a := c.replica(t, "a", funcExec(exec), Config{Lease: time.Hour}) // no renewal in time: the feed carries the request
	job := submitTo(t, a)
	<-started
	if _, err := b.Cancel(context.Background(), job.ID); err != nil {
		t.Fatal(err)
	}
	evs := collect(t, b, job.ID, 0)
	checkGapless(t, evs, 0)
	if last := evs[len(evs)-1]; last.Status != StatusCanceled {
		t.Fatalf("job ended %s (%s), want canceled", last.Status, last.Reason)
	}
}

// TestDeadReplicasJobsEndAfterLease: a job claimed by a replica that then
// died (it never renews its lease) ends error, with a reason naming the
// replica, once the lease has expired; its queued jobs run elsewhere.
func TestDeadReplicasJobsEndAfterLease(t *testing.T) {
	c := newCluster(t)
	ctx := context.Background()
	// The dead replica: it claimed a job and is gone.
	dead := NewService(c.store, c.arch, funcExec(nil), Config{Replica: "dead", Changes: c.feed})
	stuck := submitTo(t, dead)
	queued := submitTo(t, dead)
	now := time.Now().UTC()
	if claimed, _, err := c.store.ClaimJob(ctx, "dead", now, now.Add(100*time.Millisecond)); err != nil || claimed.ID != stuck.ID {
		t.Fatalf("claim: %v, %v", claimed, err)
	}

	b := c.replica(t, "b", funcExec(func(ctx context.Context, spec Spec, out Output) (Result, error) {
		return Result{}, nil
	}), Config{Lease: 150 * time.Millisecond})
	evs := collect(t, b, stuck.ID, 0)
	checkGapless(t, evs, 0)
	last := evs[len(evs)-1]
	if last.Status != StatusError || !strings.Contains(last.Reason, `"dead"`) || !strings.Contains(last.Reason, "lease") {
		t.Fatalf("stuck job ended %s (%q), want error naming the dead replica's lease", last.Status, last.Reason)
	}
	if evs := collect(t, b, queued.ID, 0); evs[len(evs)-1].Status != StatusPassed {
		t.Fatalf("the dead replica's queued job ended %+v, want passed on b", evs[len(evs)-1])
	}
	if j, _ := c.store.Job(ctx, queued.ID); j.Replica != "b" {
		t.Fatalf("queued job ran on %q, want b", j.Replica)
	}
}

// TestLostLeaseStopsTheJob: a replica whose job was ended by another
// (its lease had expired: it was cut off from the database for a while)
// stops the job's process when it learns of it.
func TestLostLeaseStopsTheJob(t *testing.T) {
	c := newCluster(t)
	stopped := make(chan error, 1)
	started := make(chan string, 1)
	a := c.replica(t, "a", funcExec(func(ctx context.Context, spec Spec, out Output) (Result, error) {
		started <- spec.JobID
		<-ctx.Done()
		stopped <- context.Cause(ctx)
		return Result{}, ctx.Err()
	}), Config{Lease: 60 * time.Millisecond})
	job := submitTo(t, a)
	id := <-started
	if id != job.ID {
		t.Fatalf("started %s, want %s", id, job.ID)
	}
	// Another replica ends it, as the reaper does.
	stored, err := c.store.Job(context.Background(), job.ID)
	if err != nil {
		t.Fatal(err)
	}
	other := NewService(c.store, c.arch, funcExec(nil), Config{Replica: "other"})
	if err := other.end(context.Background(), stored, StatusError, "reaped"); err != nil {
		t.Fatal(err)
	}
	select {
	case cause := <-stopped:
		if !errors.Is(cause, errLost) {
			t.Fatalf("job stopped with %v, want errLost", cause)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the job was not stopped after its lease was lost")
	}
	evs := collect(t, a, job.ID, 0)
	if last := evs[len(evs)-1]; last.Reason != "reaped" {
		t.Fatalf("job ended with %q, want the reaper's end kept", last.Reason)
	}
}

// TestCancelRacesClaims cancels queued jobs while two replicas' workers
// claim them: each job ends exactly once, canceled or passed, with a
// gapless log, and Cancel fails only for jobs that had already ended.
func TestCancelRacesClaims(t *testing.T) {
	c := newCluster(t)
	exec := funcExec(func(ctx context.Context, spec Spec, out Output) (Result, error) {
		return Result{}, nil
	})
	a := c.replica(t, "a", exec, Config{Concurrency: 2})
	b := c.replica(t, "b", exec, Config{Concurrency: 2})
	var ids []string
	for range 40 {
		ids = append(ids, submitTo(t, a).ID)
	}
	var wg sync.WaitGroup
	for i, id := range ids {
		svc := a
		if i%2 == 1 {
			svc = b
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := svc.Cancel(context.Background(), id); err != nil && ErrorCode(err) != ECONFLICT {
				t.Errorf("cancel %s: %v", id, err)
			}
		}()
	}
	wg.Wait()
	for _, id := range ids {
		evs := collect(t, a, id, 0)
		checkGapless(t, evs, 0)
		terminal := 0
		for _, ev := range evs {
			if ev.Terminal() {
				terminal++
			}
		}
		if last := evs[len(evs)-1]; terminal != 1 || (last.Status != StatusCanceled && last.Status != StatusPassed) {
			t.Fatalf("job %s: %d terminal events, last %s: want one, canceled or passed", id, terminal, last.Status)
		}
	}
}

// TestWatchJobsOnOtherReplica: a job list watcher on the replica that
// neither took nor runs a job sees it end, with the replica that ran it.
// (It may miss intermediate states: a change is announced with the job as
// read from the store when the notification arrives, which may be later.)
func TestWatchJobsOnOtherReplica(t *testing.T) {
	c := newCluster(t)
	b := c.busyReplica(t, "b", Config{Poll: time.Hour})
	a := c.replica(t, "a", funcExec(func(ctx context.Context, spec Spec, out Output) (Result, error) {
		return Result{ExitCode: 1}, nil
	}), Config{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	changes := make(chan Job, 100)
	go b.WatchJobs(ctx, 10, func(_ []*Job, change *Job) error {
		if change != nil {
			changes <- *change
		}
		return nil
	})
	// The snapshot is taken after the subscription: wait for it to be
	// there before the job exists.
	waitFor(t, func() bool { return b.broker.jobSubscribers() > 0 })
	job := submitTo(t, a)
	seen := map[Status]bool{}
	deadline := time.After(10 * time.Second)
	for !seen[StatusFailed] {
		select {
		case ch := <-changes:
			if ch.ID == job.ID {
				seen[ch.Status] = true
				if ch.Status == StatusFailed && ch.Replica != "a" {
					t.Fatalf("ended job announced with replica %q, want a", ch.Replica)
				}
			}
		case <-deadline:
			t.Fatalf("replica b's job list saw only %v of job %s", seen, job.ID)
		}
	}
}

// sweepExec is an executor that holds things of the given jobs, and
// records which of them Sweep was told had ended.
type sweepExec struct {
	funcExec
	held  []string
	ended map[string]bool
}

func (e *sweepExec) Sweep(ctx context.Context, ended func(string) bool) (int, error) {
	e.ended = map[string]bool{}
	n := 0
	for _, id := range e.held {
		if e.ended[id] = ended(id); e.ended[id] {
			n++
		}
	}
	return n, nil
}

// TestReplicaSweepsJobsEndedElsewhere: a replica that starts removes what
// its executor holds of jobs that have ended (another replica ended them
// while it was away), and nothing of running or unknown jobs.
func TestReplicaSweepsJobsEndedElsewhere(t *testing.T) {
	c := newCluster(t)
	ctx := context.Background()
	idle := NewService(c.store, c.arch, funcExec(nil), Config{Replica: "x"})
	ended, running := submitTo(t, idle), submitTo(t, idle)
	now := time.Now().UTC()
	for _, replica := range []string{"gone", "other"} { // ended, then running (elsewhere)
		if _, _, err := c.store.ClaimJob(ctx, replica, now, now.Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	stored, _ := c.store.Job(ctx, ended.ID)
	if err := idle.end(ctx, stored, StatusError, "reaped"); err != nil {
		t.Fatal(err)
	}
	exec := &sweepExec{held: []string{ended.ID, running.ID, "unknown"}}
	c.replica(t, "gone", exec, Config{})
	if !exec.ended[ended.ID] || exec.ended[running.ID] || exec.ended["unknown"] {
		t.Fatalf("sweep was told %v: want only %s ended", exec.ended, ended.ID)
	}
}

// TestResyncRefreshesJobLists: after the change feed lost its connection
// (a Resync), a job list watcher gets a fresh snapshot from the store,
// with what it may have missed.
func TestResyncRefreshesJobLists(t *testing.T) {
	c := newCluster(t)
	b := c.busyReplica(t, "b", Config{Poll: time.Hour})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	snapshots := make(chan []*Job, 10)
	go b.WatchJobs(ctx, 10, func(snapshot []*Job, _ *Job) error {
		if snapshot != nil {
			snapshots <- snapshot
		}
		return nil
	})
	<-snapshots
	// A job b was not told of: the feed lost it.
	c.feed.mu.Lock()
	c.feed.drop = true
	c.feed.mu.Unlock()
	idle := NewService(c.store, c.arch, funcExec(nil), Config{Replica: "x"})
	missed := submitTo(t, idle)
	b.onChange(Change{Resync: true})
	select {
	case snap := <-snapshots:
		found := false
		for _, j := range snap {
			found = found || j.ID == missed.ID
		}
		if !found {
			t.Fatalf("the fresh snapshot lacks the missed job %s", missed.ID)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no fresh snapshot after a resync")
	}
}
