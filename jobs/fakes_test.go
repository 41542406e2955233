package jobs

import (
	"archive/zip"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"
)

// memStore is an in-memory Store that enforces the same invariants as the
// real one. It lets the domain tests run fast and focus on concurrency.
type memStore struct {
	mu     sync.Mutex
	jobs   map[string]*Job
	events map[string][]Event
	nextID int
	tests  map[string][]TestCase
	// onAppend, when set, runs inside AppendEvents after the events are
	// stored (still under the lock).
	onAppend func(jobID string, events []Event)
	// feed, when set, is told of every commit, as PostgreSQL notifies.
	feed *memFeed
}

func newMemStore() *memStore {
	return &memStore{jobs: map[string]*Job{}, events: map[string][]Event{}}
}

func cloneJob(j *Job) *Job {
	c := *j
	c.Args = append([]string(nil), j.Args...)
	return &c
}

func (m *memStore) CreateJob(ctx context.Context, job *Job, events []Event) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.nextID++
	job.ID = fmt.Sprintf("job%06d", m.nextID)
	m.jobs[job.ID] = cloneJob(job)
	for i := range events {
		events[i].JobID = job.ID
	}
	m.events[job.ID] = append([]Event(nil), events...)
	m.changed(job.ID, events)
	return nil
}

// changed tells the feed of committed events. m.mu is held.
func (m *memStore) changed(jobID string, events []Event) {
	if m.feed == nil || len(events) == 0 {
		return
	}
	c := Change{JobID: jobID, First: events[0].Seq, Last: events[len(events)-1].Seq}
	for _, ev := range events {
		c.Status = c.Status || ev.Type == EventStatus
	}
	m.feed.send(c)
}

func (m *memStore) Job(ctx context.Context, id string) (*Job, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	j, ok := m.jobs[id]
	if !ok {
		return nil, Errorf(ENOTFOUND, "job %q not found", id)
	}
	return cloneJob(j), nil
}

func (m *memStore) Jobs(ctx context.Context, opts ListOptions) ([]*Job, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []*Job
	for _, j := range m.jobs {
		if opts.Before == "" || j.ID < opts.Before {
			out = append(out, cloneJob(j))
		}
	}
	sort.Slice(out, func(a, b int) bool { return out[a].ID > out[b].ID })
	if opts.Limit > 0 && len(out) > opts.Limit {
		out = out[:opts.Limit]
	}
	return out, nil
}

func (m *memStore) JobsByStatus(ctx context.Context, status Status) ([]*Job, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []*Job
	for _, j := range m.jobs {
		if j.Status == status {
			out = append(out, cloneJob(j))
		}
	}
	sort.Slice(out, func(a, b int) bool { return out[a].ID < out[b].ID })
	return out, nil
}

func (m *memStore) AppendEvents(ctx context.Context, job *Job, events []Event) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	cur, ok := m.jobs[job.ID]
	if !ok {
		return Errorf(ENOTFOUND, "job %q not found", job.ID)
	}
	if len(events) == 0 || events[0].Seq != cur.LastSeq+1 || job.LastSeq != events[len(events)-1].Seq {
		return Errorf(ECONFLICT, "events do not continue the log of job %s", job.ID)
	}
	for i, ev := range events {
		if ev.Seq != events[0].Seq+int64(i) {
			return Errorf(ECONFLICT, "gap in batch")
		}
	}
	next := cloneJob(job)
	// Claims are the store's: AppendEvents does not change them.
	next.Replica, next.LeaseUntil, next.CancelRequested = cur.Replica, cur.LeaseUntil, cur.CancelRequested
	m.jobs[job.ID] = next
	m.events[job.ID] = append(m.events[job.ID], events...)
	if m.onAppend != nil {
		m.onAppend(job.ID, events)
	}
	m.changed(job.ID, events)
	return nil
}

func (m *memStore) Events(ctx context.Context, jobID string, after int64, limit int) ([]Event, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Event
	for _, ev := range m.events[jobID] {
		if ev.Seq > after {
			out = append(out, ev)
			if len(out) == limit {
				break
			}
		}
	}
	return out, nil
}

// dirArchives stores archives as files in a temp dir.
type dirArchives struct{ dir string }

func (a *dirArchives) Put(ctx context.Context, r io.Reader) (string, int64, error) {
	b, err := io.ReadAll(r)
	if err != nil {
		return "", 0, err
	}
	sum := sha256.Sum256(b)
	key := hex.EncodeToString(sum[:])
	return key, int64(len(b)), os.WriteFile(a.path(key), b, 0o600)
}

func (a *dirArchives) Local(_ context.Context, key string) (string, error) {
	return a.path(key), nil
}

func (a *dirArchives) path(key string) string { return filepath.Join(a.dir, key+".zip") }

func (a *dirArchives) Remove(key string) error {
	err := os.Remove(a.path(key))
	if os.IsNotExist(err) {
		return nil
	}
	return err
}

// funcExec is an Executor made of a function.
type funcExec func(ctx context.Context, spec Spec, out Output) (Result, error)

func (f funcExec) Run(ctx context.Context, spec Spec, out Output) (Result, error) {
	return f(ctx, spec, out)
}

// makeZip returns a zip holding the given files.
func makeZip(t testing.TB, files map[string]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for name, body := range files {
		w, err := zw.Create(name)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(w, body); err != nil {
			t.Fatal(err)
		}
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func (m *memStore) SaveTests(ctx context.Context, jobID string, tests []TestCase) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.tests == nil {
		m.tests = map[string][]TestCase{}
	}
	m.tests[jobID] = append([]TestCase(nil), tests...)
	return nil
}

func (m *memStore) Tests(ctx context.Context, jobID string) ([]TestCase, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]TestCase(nil), m.tests[jobID]...), nil
}

func (m *memStore) CountJobs(ctx context.Context, status Status) (int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var n int64
	for _, j := range m.jobs {
		if j.Status == status {
			n++
		}
	}
	return n, nil
}

func (m *memStore) ClaimJob(ctx context.Context, replica string, now, leaseUntil time.Time) (*Job, *Event, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var oldest *Job
	for _, j := range m.jobs {
		if j.Status == StatusQueued && (oldest == nil || j.ID < oldest.ID) {
			oldest = j
		}
	}
	if oldest == nil {
		return nil, nil, nil
	}
	start, until := now, leaseUntil
	oldest.Status, oldest.StartedAt, oldest.Replica, oldest.LeaseUntil = StatusRunning, &start, replica, &until
	oldest.CancelRequested = false
	oldest.LastSeq++
	ev := Event{JobID: oldest.ID, Seq: oldest.LastSeq, Time: now, Type: EventStatus, Status: StatusRunning}
	m.events[oldest.ID] = append(m.events[oldest.ID], ev)
	if m.onAppend != nil {
		m.onAppend(oldest.ID, []Event{ev})
	}
	m.changed(oldest.ID, []Event{ev})
	return cloneJob(oldest), &ev, nil
}

func (m *memStore) RenewLeases(ctx context.Context, replica string, ids []string, until time.Time) ([]Lease, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Lease
	for _, id := range ids {
		j, ok := m.jobs[id]
		if !ok {
			continue
		}
		held := j.Status == StatusRunning && j.Replica == replica
		if held {
			u := until
			j.LeaseUntil = &u
		}
		out = append(out, Lease{ID: id, Held: held, CancelRequested: j.CancelRequested})
	}
	return out, nil
}

func (m *memStore) ExpiredJobs(ctx context.Context, replica string, now time.Time) ([]*Job, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []*Job
	for _, j := range m.jobs {
		if j.Status == StatusRunning && j.Replica != replica && j.LeaseUntil != nil && j.LeaseUntil.Before(now) {
			out = append(out, cloneJob(j))
		}
	}
	sort.Slice(out, func(a, b int) bool { return out[a].ID < out[b].ID })
	return out, nil
}

func (m *memStore) RequestCancel(ctx context.Context, id string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	j, ok := m.jobs[id]
	if !ok {
		return Errorf(ENOTFOUND, "job %q not found", id)
	}
	if j.Status == StatusRunning {
		j.CancelRequested = true
		if m.feed != nil {
			m.feed.send(Change{JobID: id, Cancel: true})
		}
	}
	return nil
}

// memFeed is a ChangeFeed for servers sharing a memStore: every listener
// gets every change, in order, from a queue of its own (send never
// blocks, since the store calls it under its lock).
type memFeed struct {
	mu        sync.Mutex
	listeners []*feedQueue
	// drop, when set, makes send lose changes (a feed that missed them).
	drop bool
}

type feedQueue struct {
	mu   sync.Mutex
	cond *sync.Cond
	q    []Change
}

func (f *memFeed) send(c Change) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.drop {
		return
	}
	for _, l := range f.listeners {
		l.mu.Lock()
		l.q = append(l.q, c)
		l.cond.Signal()
		l.mu.Unlock()
	}
}

func (f *memFeed) WatchChanges(ctx context.Context, fn func(Change)) error {
	l := &feedQueue{}
	l.cond = sync.NewCond(&l.mu)
	f.mu.Lock()
	f.listeners = append(f.listeners, l)
	f.mu.Unlock()
	stop := context.AfterFunc(ctx, func() {
		l.mu.Lock()
		l.cond.Broadcast()
		l.mu.Unlock()
	})
	defer stop()
	for {
		l.mu.Lock()
		for len(l.q) == 0 && ctx.Err() == nil {
			l.cond.Wait()
		}
		if ctx.Err() != nil {
			l.mu.Unlock()
			return ctx.Err()
		}
		c := l.q[0]
		l.q = l.q[1:]
		l.mu.Unlock()
		fn(c)
	}
}
