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
	return nil
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
	m.jobs[job.ID] = cloneJob(job)
	m.events[job.ID] = append(m.events[job.ID], events...)
	if m.onAppend != nil {
		m.onAppend(job.ID, events)
	}
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
	return key, int64(len(b)), os.WriteFile(a.Path(key), b, 0o600)
}

func (a *dirArchives) Path(key string) string { return filepath.Join(a.dir, key+".zip") }

func (a *dirArchives) Remove(key string) error {
	err := os.Remove(a.Path(key))
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
