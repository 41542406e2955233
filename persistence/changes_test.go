package persistence_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"ci/internal/pgtest"
	"ci/jobs"
	"ci/persistence"
)

// feedTimeout bounds the wait for the change feed.
const feedTimeout = 10 * time.Second

// feed is a running change feed of a Store, for tests.
type feed struct {
	changes   chan jobs.Change
	listening chan uint32 // the backend PID of each connection it listens on
	pid       uint32      // the first one's
}

// watch starts s's change feed, stopped when the test ends, and waits
// until it listens.
func watch(t *testing.T, s *persistence.Store) *feed {
	t.Helper()
	f := &feed{changes: make(chan jobs.Change, 100), listening: make(chan uint32, 10)}
	s.OnListen(func(pid uint32) { f.listening <- pid })
	cf := s.ChangeFeed()
	if cf == nil {
		t.Fatal("no change feed on PostgreSQL")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- cf.WatchChanges(ctx, func(c jobs.Change) { f.changes <- c })
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("WatchChanges returned %v, want context.Canceled", err)
		}
	})
	f.pid = f.waitListening(t)
	return f
}

// waitListening waits until the feed listens on a new connection and
// returns its backend's PID.
func (f *feed) waitListening(t *testing.T) uint32 {
	t.Helper()
	select {
	case pid := <-f.listening:
		return pid
	case <-time.After(feedTimeout):
		t.Fatalf("change feed not listening after %v", feedTimeout)
		return 0
	}
}

// want fails the test unless the next change is want.
func (f *feed) want(t *testing.T, want jobs.Change) {
	t.Helper()
	select {
	case got := <-f.changes:
		if got != want {
			t.Fatalf("change %+v, want %+v", got, want)
		}
	case <-time.After(feedTimeout):
		t.Fatalf("no change within %v, want %+v", feedTimeout, want)
	}
}

func TestChangeFeed_Dialects(t *testing.T) {
	eachStore(t, func(t *testing.T, dsn string) {
		s := MustOpenPath(t, dsn)
		switch d := s.Dialect(); d {
		case "sqlite":
			if s.ChangeFeed() != nil {
				t.Fatal("SQLite store has a change feed")
			}
		case "postgres":
			if s.ChangeFeed() == nil {
				t.Fatal("PostgreSQL store has no change feed")
			}
		default:
			t.Fatalf("dialect %q", d)
		}
	})
}

// TestChangeFeed checks that what one Store commits, another Store's feed
// tells, in commit order, and that what is not committed it does not.
func TestChangeFeed(t *testing.T) {
	dsn := pgtest.DSN(t)
	ctx := context.Background()
	a, b := MustOpenPath(t, dsn), MustOpenPath(t, dsn)
	f := watch(t, b)

	job := MustCreateJob(t, a)
	f.want(t, jobs.Change{JobID: job.ID, First: 1, Last: 1, Status: true})
	now := clock()
	job = mustClaim(t, a, "r1", now, now.Add(time.Minute))
	f.want(t, jobs.Change{JobID: job.ID, First: 2, Last: 2, Status: true})
	if err := a.AppendEvents(ctx, job, logEvents(job, 3, 3)); err != nil {
		t.Fatal(err)
	}
	f.want(t, jobs.Change{JobID: job.ID, First: 3, Last: 5})

	// Refused and rolled back batches send nothing: the next change is the
	// cancel request.
	stale := *job
	wantCode(t, a.AppendEvents(ctx, &stale, logEvents(&stale, 4, 2)), jobs.ECONFLICT)
	if err := a.Exec(ctx, "UPDATE jobs SET last_seq = 4 WHERE id = ?", job.ID); err != nil {
		t.Fatal(err)
	}
	lying := *job
	lying.LastSeq = 4
	wantCode(t, a.AppendEvents(ctx, &lying, logEvents(&lying, 5, 1)), jobs.ECONFLICT) // seq 5 exists
	if err := a.Exec(ctx, "UPDATE jobs SET last_seq = 5 WHERE id = ?", job.ID); err != nil {
		t.Fatal(err)
	}
	if err := a.RequestCancel(ctx, job.ID); err != nil {
		t.Fatal(err)
	}
	f.want(t, jobs.Change{JobID: job.ID, Cancel: true})

	// A second request changes nothing and sends nothing; nor does one of
	// an unknown job.
	if err := a.RequestCancel(ctx, job.ID); err != nil {
		t.Fatal(err)
	}
	wantCode(t, a.RequestCancel(ctx, "unknown"), jobs.ENOTFOUND)
	mustEnd(t, a, job, jobs.StatusCanceled)
	f.want(t, jobs.Change{JobID: job.ID, First: 6, Last: 6, Status: true})

	// A batch with a status event among others is a status change; the
	// feed's own store's commits are there too.
	other := MustCreateJob(t, b)
	f.want(t, jobs.Change{JobID: other.ID, First: 1, Last: 1, Status: true})
	evs := logEvents(other, 2, 2)
	other.Status, other.StartedAt, other.LastSeq = jobs.StatusRunning, &now, 4
	evs = append(evs, jobs.Event{JobID: other.ID, Seq: 4, Time: now, Type: jobs.EventStatus, Status: jobs.StatusRunning})
	if err := b.AppendEvents(ctx, other, evs); err != nil {
		t.Fatal(err)
	}
	f.want(t, jobs.Change{JobID: other.ID, First: 2, Last: 4, Status: true})

	select {
	case c := <-f.changes:
		t.Fatalf("unexpected change %+v", c)
	default:
	}
}

// TestChangeFeed_SchemasApart checks that stores in different schemas of
// one database do not hear each other.
func TestChangeFeed_SchemasApart(t *testing.T) {
	s1, s2 := MustOpenPath(t, pgtest.DSN(t)), MustOpenPath(t, pgtest.DSN(t))
	f := watch(t, s1)
	MustCreateJob(t, s2)
	job := MustCreateJob(t, s1)
	f.want(t, jobs.Change{JobID: job.ID, First: 1, Last: 1, Status: true})
}

// TestChangeFeed_Reconnects checks that the feed reconnects when its
// connection is lost, says so with a Resync change, and goes on.
func TestChangeFeed_Reconnects(t *testing.T) {
	ctx := context.Background()
	s := MustOpenPath(t, pgtest.DSN(t))
	f := watch(t, s)
	pid := f.pid
	for range 2 {
		if err := s.Exec(ctx, "SELECT pg_terminate_backend(?)", int64(pid)); err != nil {
			t.Fatal(err)
		}
		f.want(t, jobs.Change{Resync: true})
		if pid = f.waitListening(t); pid == f.pid {
			t.Fatalf("listening on backend %d again, want a new one", pid)
		}
		job := MustCreateJob(t, s)
		f.want(t, jobs.Change{JobID: job.ID, First: 1, Last: 1, Status: true})
	}
}
