package persistence_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sync"
	"testing"
	"time"

	"ci/internal/pgtest"
	"ci/jobs"
	"ci/persistence"
)

// MustOpen opens a Store on a new SQLite database in a temporary directory
// and closes it when the test ends.
func MustOpen(tb testing.TB) *persistence.Store {
	tb.Helper()
	return MustOpenPath(tb, filepath.Join(tb.TempDir(), "ci.db"))
}

// MustOpenPath opens a Store on the database at path (an SQLite file, or a
// PostgreSQL DSN) and closes it when the test ends.
func MustOpenPath(tb testing.TB, path string) *persistence.Store {
	tb.Helper()
	s, err := persistence.Open(context.Background(), path)
	if err != nil {
		tb.Fatalf("open: %v", err)
	}
	tb.Cleanup(func() {
		if err := s.Close(); err != nil {
			tb.Errorf("close: %v", err)
		}
	})
	return s
}

// eachStore runs the contract test f against each kind of database, as
// the subtests "sqlite" and "postgres" (skipped without
// pgtest.EnvDSN), each with a new, empty database: dsn is an SQLite path
// or a PostgreSQL DSN, to open with MustOpenPath as many Stores as the
// test needs (replicas sharing the database).
func eachStore(t *testing.T, f func(t *testing.T, dsn string)) {
	t.Run("sqlite", func(t *testing.T) {
		f(t, filepath.Join(t.TempDir(), "ci.db"))
	})
	t.Run("postgres", func(t *testing.T) {
		f(t, pgtest.DSN(t))
	})
}

// clock returns the current time as every store keeps it: in UTC, to the
// microsecond (PostgreSQL's precision).
func clock() time.Time {
	return time.Now().UTC().Truncate(time.Microsecond)
}

// MustCreateJob creates a queued job with its first status event.
func MustCreateJob(tb testing.TB, s *persistence.Store, args ...string) *jobs.Job {
	tb.Helper()
	job := &jobs.Job{Status: jobs.StatusQueued, Args: args, Archive: "abc", ArchiveSize: 42, LastSeq: 1}
	events := []jobs.Event{{Seq: 1, Time: clock(), Type: jobs.EventStatus, Status: jobs.StatusQueued}}
	if err := s.CreateJob(context.Background(), job, events); err != nil {
		tb.Fatalf("create job: %v", err)
	}
	return job
}

// logEvents returns n log events of job starting at seq from, and advances
// job.LastSeq to the last one.
func logEvents(job *jobs.Job, from int64, n int) []jobs.Event {
	events := make([]jobs.Event, n)
	for i := range events {
		seq := from + int64(i)
		events[i] = jobs.Event{
			JobID: job.ID, Seq: seq, Time: clock(), Type: jobs.EventLog,
			Stream: jobs.StreamStdout, Text: fmt.Sprintf("line %d\n", seq),
		}
	}
	job.LastSeq = from + int64(n) - 1
	return events
}

// ids returns the IDs of js.
func ids(js []*jobs.Job) []string {
	out := make([]string, len(js))
	for i, j := range js {
		out[i] = j.ID
	}
	return out
}

// wantCode fails the test unless err has the given domain error code.
func wantCode(t *testing.T, err error, code string) {
	t.Helper()
	if got := jobs.ErrorCode(err); got != code {
		t.Fatalf("error code=%q (err=%v), want %q", got, err, code)
	}
}

func TestCreateJob(t *testing.T) {
	eachStore(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		s := MustOpenPath(t, dsn)
		created := time.Date(2024, 5, 6, 7, 8, 9, 123456000, time.FixedZone("X", 3600)) // PostgreSQL keeps µs
		job := &jobs.Job{
			Status: jobs.StatusQueued, Args: []string{"-k", "test_x"},
			Archive: "deadbeef", ArchiveSize: 1234, CreatedAt: created, LastSeq: 1,
		}
		events := []jobs.Event{{Seq: 1, Time: created, Type: jobs.EventStatus, Status: jobs.StatusQueued}}
		if err := s.CreateJob(ctx, job, events); err != nil {
			t.Fatal(err)
		}
		if !regexp.MustCompile(`^[0-9a-hjkmnp-tv-z]{26}$`).MatchString(job.ID) {
			t.Fatalf("id=%q, want a lowercase ULID", job.ID)
		}
		if events[0].JobID != job.ID {
			t.Fatalf("event job id=%q, want %q", events[0].JobID, job.ID)
		}

		got, err := s.Job(ctx, job.ID)
		if err != nil {
			t.Fatal(err)
		}
		if !got.CreatedAt.Equal(created) || got.CreatedAt.Location() != time.UTC {
			t.Fatalf("created_at=%v, want %v in UTC", got.CreatedAt, created)
		}
		got.CreatedAt = job.CreatedAt
		if !reflect.DeepEqual(got, job) {
			t.Fatalf("job=%+v, want %+v", got, job)
		}

		evs, err := s.Events(ctx, job.ID, 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(evs) != 1 || evs[0].Seq != 1 || evs[0].Status != jobs.StatusQueued || evs[0].JobID != job.ID {
			t.Fatalf("events=%+v, want the queued status event", evs)
		}
		if !evs[0].Time.Equal(created) {
			t.Fatalf("event time=%v, want %v", evs[0].Time, created)
		}
	})
}

func TestCreateJob_NilArgsAndNoEvents(t *testing.T) {
	eachStore(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		s := MustOpenPath(t, dsn)
		job := &jobs.Job{Status: jobs.StatusQueued}
		if err := s.CreateJob(ctx, job, nil); err != nil {
			t.Fatal(err)
		}
		if job.CreatedAt.IsZero() {
			t.Fatal("created_at not set")
		}
		got, err := s.Job(ctx, job.ID)
		if err != nil {
			t.Fatal(err)
		}
		if len(got.Args) != 0 || got.LastSeq != 0 {
			t.Fatalf("args=%q last_seq=%d, want none and 0", got.Args, got.LastSeq)
		}
	})
}

func TestCreateJob_Invalid(t *testing.T) {
	eachStore(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		s := MustOpenPath(t, dsn)
		ev := func(seq int64) jobs.Event {
			return jobs.Event{Seq: seq, Time: time.Now(), Type: jobs.EventStatus, Status: jobs.StatusQueued}
		}
		tests := []struct {
			name   string
			job    jobs.Job
			events []jobs.Event
			code   string
		}{
			{"bad status", jobs.Job{Status: "bogus", LastSeq: 1}, []jobs.Event{ev(1)}, jobs.EINVALID},
			{"wrong last seq", jobs.Job{Status: jobs.StatusQueued, LastSeq: 2}, []jobs.Event{ev(1)}, jobs.ECONFLICT},
			{"no events but last seq", jobs.Job{Status: jobs.StatusQueued, LastSeq: 1}, nil, jobs.ECONFLICT},
			{"not starting at 1", jobs.Job{Status: jobs.StatusQueued, LastSeq: 2}, []jobs.Event{ev(2)}, jobs.ECONFLICT},
			{"gap", jobs.Job{Status: jobs.StatusQueued, LastSeq: 3}, []jobs.Event{ev(1), ev(3)}, jobs.ECONFLICT},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				job := tt.job
				wantCode(t, s.CreateJob(ctx, &job, tt.events), tt.code)
				if job.ID != "" {
					t.Fatalf("id=%q, want none", job.ID)
				}
			})
		}
		js, err := s.Jobs(ctx, jobs.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(js) != 0 {
			t.Fatalf("%d jobs stored, want 0", len(js))
		}
	})
}

func TestCreateJob_IDsSortByCreation(t *testing.T) {
	eachStore(t, func(t *testing.T, dsn string) {
		s := MustOpenPath(t, dsn)
		prev := ""
		for i := range 200 {
			id := MustCreateJob(t, s).ID
			if id <= prev {
				t.Fatalf("job %d: id %q <= previous %q", i, id, prev)
			}
			prev = id
		}
	})
}

func TestJob_NotFound(t *testing.T) {
	eachStore(t, func(t *testing.T, dsn string) {
		s := MustOpenPath(t, dsn)
		_, err := s.Job(context.Background(), "x")
		wantCode(t, err, jobs.ENOTFOUND)
		if got, want := jobs.ErrorMessage(err), `job "x" not found`; got != want {
			t.Fatalf("message=%q, want %q", got, want)
		}
	})
}

func TestJobs_Pagination(t *testing.T) {
	eachStore(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		s := MustOpenPath(t, dsn)
		var all []string // newest first
		for range 7 {
			all = append([]string{MustCreateJob(t, s).ID}, all...)
		}
		var got []string
		before := ""
		for page := 0; ; page++ {
			js, err := s.Jobs(ctx, jobs.ListOptions{Limit: 3, Before: before})
			if err != nil {
				t.Fatal(err)
			}
			if len(js) == 0 {
				break
			}
			if len(js) > 3 {
				t.Fatalf("page %d has %d jobs, want at most 3", page, len(js))
			}
			got = append(got, ids(js)...)
			before = js[len(js)-1].ID
		}
		if !reflect.DeepEqual(got, all) {
			t.Fatalf("ids=%q, want %q", got, all)
		}
	})
}

func TestJobs_Limits(t *testing.T) {
	eachStore(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		s := MustOpenPath(t, dsn)
		for range 55 {
			MustCreateJob(t, s)
		}
		for _, tt := range []struct{ limit, want int }{{0, 50}, {-1, 50}, {10, 10}, {5000, 55}} {
			js, err := s.Jobs(ctx, jobs.ListOptions{Limit: tt.limit})
			if err != nil {
				t.Fatal(err)
			}
			if len(js) != tt.want {
				t.Fatalf("limit %d: %d jobs, want %d", tt.limit, len(js), tt.want)
			}
		}
	})
}

func TestJobsByStatus(t *testing.T) {
	eachStore(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		s := MustOpenPath(t, dsn)
		var running []string
		for i := range 6 {
			job := MustCreateJob(t, s)
			if i%2 == 0 {
				continue
			}
			now := time.Now()
			job.Status, job.StartedAt, job.LastSeq = jobs.StatusRunning, &now, 2
			ev := jobs.Event{JobID: job.ID, Seq: 2, Time: now, Type: jobs.EventStatus, Status: jobs.StatusRunning}
			if err := s.AppendEvents(ctx, job, []jobs.Event{ev}); err != nil {
				t.Fatal(err)
			}
			running = append(running, job.ID)
		}
		js, err := s.JobsByStatus(ctx, jobs.StatusRunning)
		if err != nil {
			t.Fatal(err)
		}
		if got := ids(js); !reflect.DeepEqual(got, running) {
			t.Fatalf("running=%q, want %q (oldest first)", got, running)
		}
		js, err = s.JobsByStatus(ctx, jobs.StatusPassed)
		if err != nil {
			t.Fatal(err)
		}
		if len(js) != 0 {
			t.Fatalf("passed=%q, want none", ids(js))
		}
	})
}

func TestAppendEvents(t *testing.T) {
	eachStore(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		s := MustOpenPath(t, dsn)
		job := MustCreateJob(t, s)

		started := time.Date(2025, 1, 2, 3, 4, 5, 987654000, time.Local)
		job.Status, job.StartedAt = jobs.StatusRunning, &started
		events := []jobs.Event{{JobID: job.ID, Seq: 2, Time: started, Type: jobs.EventStatus, Status: jobs.StatusRunning}}
		events = append(events, logEvents(job, 3, 3)...)
		if err := s.AppendEvents(ctx, job, events); err != nil {
			t.Fatal(err)
		}

		finished := started.Add(1500 * time.Millisecond)
		code := 1
		job.Status, job.FinishedAt, job.ExitCode, job.Reason, job.LastSeq = jobs.StatusFailed, &finished, &code, "tests failed", 6
		last := jobs.Event{
			JobID: job.ID, Seq: 6, Time: finished, Type: jobs.EventStatus, Status: jobs.StatusFailed,
			ExitCode: &code, Reason: "tests failed",
		}
		if err := s.AppendEvents(ctx, job, []jobs.Event{last}); err != nil {
			t.Fatal(err)
		}

		got, err := s.Job(ctx, job.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.Status != jobs.StatusFailed || got.LastSeq != 6 || got.Reason != "tests failed" {
			t.Fatalf("job status=%q last_seq=%d reason=%q, want failed, 6, tests failed", got.Status, got.LastSeq, got.Reason)
		}
		if got.ExitCode == nil || *got.ExitCode != 1 {
			t.Fatalf("exit code=%v, want 1", got.ExitCode)
		}
		if got.StartedAt == nil || !got.StartedAt.Equal(started) || got.FinishedAt == nil || !got.FinishedAt.Equal(finished) {
			t.Fatalf("started=%v finished=%v, want %v and %v", got.StartedAt, got.FinishedAt, started, finished)
		}

		evs, err := s.Events(ctx, job.ID, 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		want := append(events, last)
		if len(evs) != 1+len(want) {
			t.Fatalf("%d events, want %d", len(evs), 1+len(want))
		}
		for i, w := range want {
			g := evs[i+1]
			if !g.Time.Equal(w.Time) {
				t.Fatalf("event %d: time=%v, want %v", w.Seq, g.Time, w.Time)
			}
			g.Time = w.Time
			if !reflect.DeepEqual(g, w) {
				t.Fatalf("event=%+v, want %+v", g, w)
			}
		}
		if !evs[len(evs)-1].Terminal() {
			t.Fatalf("last event %+v is not terminal", evs[len(evs)-1])
		}
	})
}

func TestAppendEvents_ManyInOneCall(t *testing.T) {
	eachStore(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		s := MustOpenPath(t, dsn)
		job := MustCreateJob(t, s)
		if err := s.AppendEvents(ctx, job, logEvents(job, 2, 2500)); err != nil {
			t.Fatal(err)
		}
		evs, err := s.Events(ctx, job.ID, 0, 5000)
		if err != nil {
			t.Fatal(err)
		}
		if len(evs) != 2501 {
			t.Fatalf("%d events, want 2501", len(evs))
		}
		for i, e := range evs {
			if e.Seq != int64(i+1) {
				t.Fatalf("events[%d].seq=%d, want %d", i, e.Seq, i+1)
			}
		}
	})
}

func TestAppendEvents_Conflicts(t *testing.T) {
	eachStore(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		s := MustOpenPath(t, dsn)
		job := MustCreateJob(t, s)
		if err := s.AppendEvents(ctx, job, logEvents(job, 2, 4)); err != nil { // seq 1..5 stored
			t.Fatal(err)
		}
		stored := *job

		tests := []struct {
			name string
			mod  func(j *jobs.Job) []jobs.Event
			code string
		}{
			{"empty", func(j *jobs.Job) []jobs.Event { return nil }, jobs.ECONFLICT},
			{"gap within batch", func(j *jobs.Job) []jobs.Event {
				evs := logEvents(j, 6, 3)
				evs[2].Seq = 9
				j.LastSeq = 9
				return evs
			}, jobs.ECONFLICT},
			{"wrong start", func(j *jobs.Job) []jobs.Event { return logEvents(j, 7, 2) }, jobs.ECONFLICT},
			{"duplicate", func(j *jobs.Job) []jobs.Event { return logEvents(j, 5, 2) }, jobs.ECONFLICT},
			{"replay of all", func(j *jobs.Job) []jobs.Event { return logEvents(j, 1, 5) }, jobs.ECONFLICT},
			{"wrong last seq", func(j *jobs.Job) []jobs.Event {
				evs := logEvents(j, 6, 2)
				j.LastSeq = 8
				return evs
			}, jobs.ECONFLICT},
			{"other job", func(j *jobs.Job) []jobs.Event {
				evs := logEvents(j, 6, 2)
				evs[1].JobID = "other"
				return evs
			}, jobs.ECONFLICT},
			{"unknown job", func(j *jobs.Job) []jobs.Event {
				j.ID = "unknown"
				return logEvents(j, 6, 2)
			}, jobs.ENOTFOUND},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				j := stored
				j.Status, j.Reason = jobs.StatusError, "must not be saved"
				wantCode(t, s.AppendEvents(ctx, &j, tt.mod(&j)), tt.code)

				got, err := s.Job(ctx, stored.ID)
				if err != nil {
					t.Fatal(err)
				}
				if got.Status != stored.Status || got.LastSeq != 5 || got.Reason != "" {
					t.Fatalf("job status=%q last_seq=%d reason=%q, want unchanged", got.Status, got.LastSeq, got.Reason)
				}
				evs, err := s.Events(ctx, stored.ID, 0, 0)
				if err != nil {
					t.Fatal(err)
				}
				if len(evs) != 5 {
					t.Fatalf("%d events, want 5", len(evs))
				}
			})
		}

		// The log continues where it stopped.
		if err := s.AppendEvents(ctx, job, logEvents(job, 6, 1)); err != nil {
			t.Fatal(err)
		}
	})
}

func TestAppendEvents_CanceledContext(t *testing.T) {
	eachStore(t, func(t *testing.T, dsn string) {
		s := MustOpenPath(t, dsn)
		job := MustCreateJob(t, s)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if err := s.AppendEvents(ctx, job, logEvents(job, 2, 10)); !errors.Is(err, context.Canceled) {
			t.Fatalf("err=%v, want context.Canceled", err)
		}
		got, err := s.Job(context.Background(), job.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.LastSeq != 1 {
			t.Fatalf("last_seq=%d, want 1", got.LastSeq)
		}
	})
}

func TestEvents_Paging(t *testing.T) {
	eachStore(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		s := MustOpenPath(t, dsn)
		job := MustCreateJob(t, s)
		if err := s.AppendEvents(ctx, job, logEvents(job, 2, 24)); err != nil {
			t.Fatal(err)
		}
		var after int64
		var sizes []int
		for {
			evs, err := s.Events(ctx, job.ID, after, 10)
			if err != nil {
				t.Fatal(err)
			}
			if len(evs) == 0 {
				break
			}
			for _, e := range evs {
				if e.Seq != after+1 {
					t.Fatalf("seq=%d, want %d", e.Seq, after+1)
				}
				after = e.Seq
			}
			sizes = append(sizes, len(evs))
		}
		if want := []int{10, 10, 5}; !reflect.DeepEqual(sizes, want) {
			t.Fatalf("page sizes=%v, want %v", sizes, want)
		}
		evs, err := s.Events(ctx, "unknown", 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(evs) != 0 {
			t.Fatalf("unknown job has %d events, want 0", len(evs))
		}
	})
}

func TestAppendEvents_Concurrent(t *testing.T) {
	eachStore(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		s := MustOpenPath(t, dsn)
		const nJobs, nBatches, batch = 24, 40, 7
		js := make([]*jobs.Job, nJobs)
		for i := range js {
			js[i] = MustCreateJob(t, s)
		}

		var wg sync.WaitGroup
		errs := make(chan error, 2*nJobs)
		for _, job := range js {
			// One writer per job, as the service does.
			wg.Go(func() {
				for b := range nBatches {
					if err := s.AppendEvents(ctx, job, logEvents(job, 2+int64(b*batch), batch)); err != nil {
						errs <- err
						return
					}
				}
			})
			// And a reader following it.
			wg.Go(func() {
				var after int64
				for after < 1+nBatches*batch {
					evs, err := s.Events(ctx, job.ID, after, 0)
					if err != nil {
						errs <- err
						return
					}
					for _, e := range evs {
						if e.Seq != after+1 {
							errs <- fmt.Errorf("job %s: seq=%d, want %d", job.ID, e.Seq, after+1)
							return
						}
						after = e.Seq
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}

		for _, job := range js {
			got, err := s.Job(ctx, job.ID)
			if err != nil {
				t.Fatal(err)
			}
			if want := int64(1 + nBatches*batch); got.LastSeq != want {
				t.Fatalf("job %s: last_seq=%d, want %d", job.ID, got.LastSeq, want)
			}
		}
	})
}

func TestStore_Reopen(t *testing.T) {
	eachStore(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		s, err := persistence.Open(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		job := MustCreateJob(t, s, "-x")
		if err := s.AppendEvents(ctx, job, logEvents(job, 2, 3)); err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}

		s = MustOpenPath(t, dsn)
		got, err := s.Job(ctx, job.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.LastSeq != 4 || !reflect.DeepEqual(got.Args, []string{"-x"}) {
			t.Fatalf("last_seq=%d args=%q, want 4 and [-x]", got.LastSeq, got.Args)
		}
		evs, err := s.Events(ctx, job.ID, 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(evs) != 4 {
			t.Fatalf("%d events, want 4", len(evs))
		}
		// IDs of new jobs still sort after the old ones.
		if id := MustCreateJob(t, s).ID; id <= job.ID {
			t.Fatalf("new id %q <= old id %q", id, job.ID)
		}
	})
}

func TestStore_Pragmas(t *testing.T) {
	ctx := context.Background()
	s := MustOpen(t)
	for name, want := range map[string]string{
		"journal_mode":       "wal",
		"synchronous":        "1", // NORMAL
		"foreign_keys":       "1",
		"busy_timeout":       "5000",
		"wal_autocheckpoint": "65536", // a backstop: the checkpointer does it
		"journal_size_limit": "67108864",
	} {
		got, err := s.Pragma(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("%s=%q, want %q", name, got, want)
		}
	}
}

func TestOpen_PathWithSpecialCharacters(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a b?c#d%20.db")
	s := MustOpenPath(t, path)
	MustCreateJob(t, s)
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("database not at %q: %v", path, err)
	}
}

func TestAppendEvents_InsertFailureRollsBackJobUpdate(t *testing.T) {
	eachStore(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		s := MustOpenPath(t, dsn)
		job := MustCreateJob(t, s)
		if err := s.AppendEvents(ctx, job, logEvents(job, 2, 4)); err != nil { // seq 1..5 stored
			t.Fatal(err)
		}
		// Make the job row lie about its log, so that the guarded update
		// passes and the insert of the events then fails.
		if err := s.Exec(ctx, "UPDATE jobs SET last_seq = 2 WHERE id = ?", job.ID); err != nil {
			t.Fatal(err)
		}
		j := *job
		j.Status = jobs.StatusError
		wantCode(t, s.AppendEvents(ctx, &j, logEvents(&j, 3, 2)), jobs.ECONFLICT)

		got, err := s.Job(ctx, job.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.Status != jobs.StatusQueued || got.LastSeq != 2 {
			t.Fatalf("status=%q last_seq=%d, want queued and 2 (update rolled back)", got.Status, got.LastSeq)
		}
	})
}

func TestCreateJob_Concurrent(t *testing.T) {
	eachStore(t, func(t *testing.T, dsn string) {
		s := MustOpenPath(t, dsn)
		const n = 50
		var mu sync.Mutex
		seen := map[string]bool{}
		var wg sync.WaitGroup
		for range n {
			wg.Go(func() {
				job := &jobs.Job{Status: jobs.StatusQueued}
				if err := s.CreateJob(context.Background(), job, nil); err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				seen[job.ID] = true
				mu.Unlock()
			})
		}
		wg.Wait()
		if len(seen) != n {
			t.Fatalf("%d distinct ids, want %d", len(seen), n)
		}
	})
}

// TestOffsetsSavedWithEvents checks that a job's output offsets are saved
// by AppendEvents, in the same transaction, and read back.
func TestOffsetsSavedWithEvents(t *testing.T) {
	eachStore(t, func(t *testing.T, dsn string) {
		s := MustOpenPath(t, dsn)
		ctx := context.Background()
		job := &jobs.Job{Status: jobs.StatusRunning, CreatedAt: time.Now(), LastSeq: 1}
		if err := s.CreateJob(ctx, job, []jobs.Event{{Seq: 1, Type: jobs.EventStatus, Status: jobs.StatusQueued, Time: time.Now()}}); err != nil {
			t.Fatal(err)
		}
		job.LastSeq = 2
		job.Offsets = jobs.Offsets{Stdout: 1234, Stderr: 56}
		if err := s.AppendEvents(ctx, job, []jobs.Event{{JobID: job.ID, Seq: 2, Type: jobs.EventLog, Stream: "stdout", Text: "x", Time: time.Now()}}); err != nil {
			t.Fatal(err)
		}
		got, err := s.Job(ctx, job.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.Offsets != job.Offsets {
			t.Fatalf("offsets %+v, want %+v", got.Offsets, job.Offsets)
		}
		// A refused batch changes nothing, offsets included.
		job.Offsets = jobs.Offsets{Stdout: 9999}
		job.LastSeq = 5
		s.AppendEvents(ctx, job, []jobs.Event{{JobID: job.ID, Seq: 5, Type: jobs.EventLog, Text: "y", Time: time.Now()}})
		if got, _ := s.Job(ctx, job.ID); got.Offsets.Stdout != 1234 {
			t.Fatalf("offsets %+v after a refused batch, want them unchanged", got.Offsets)
		}
	})
}

// TestResultEventsAndTests round-trips a result event's summary and a
// job's per-test results.
func TestResultEventsAndTests(t *testing.T) {
	eachStore(t, func(t *testing.T, dsn string) {
		s := MustOpenPath(t, dsn)
		ctx := context.Background()
		job := &jobs.Job{Status: jobs.StatusRunning, CreatedAt: time.Now(), LastSeq: 1}
		if err := s.CreateJob(ctx, job, []jobs.Event{{Seq: 1, Type: jobs.EventStatus, Status: jobs.StatusQueued, Time: time.Now()}}); err != nil {
			t.Fatal(err)
		}
		code := 1
		counts := jobs.TestCounts{Total: 2, Passed: 1, Failed: 1}
		ev := jobs.Event{JobID: job.ID, Seq: 2, Type: jobs.EventResult, Time: time.Now(), ExitCode: &code,
			Tests: &counts, DurationS: 0.25, Failures: []jobs.Failure{{NodeID: "t.py::test_b", Message: "boom"}}}
		job.LastSeq = 2
		if err := s.AppendEvents(ctx, job, []jobs.Event{ev}); err != nil {
			t.Fatal(err)
		}
		got, err := s.Events(ctx, job.ID, 1, 10)
		if err != nil || len(got) != 1 {
			t.Fatalf("events %+v, %v", got, err)
		}
		g := got[0]
		if g.Tests == nil || *g.Tests != counts || g.DurationS != 0.25 || len(g.Failures) != 1 || g.Failures[0].Message != "boom" {
			t.Fatalf("result event read back as %+v", g)
		}
		tests := []jobs.TestCase{{NodeID: "t.py::test_a", Outcome: "passed", DurationS: 0.1}, {NodeID: "t.py::test_b", Outcome: "failed", Message: "boom"}}
		if err := s.SaveTests(ctx, job.ID, tests); err != nil {
			t.Fatal(err)
		}
		back, err := s.Tests(ctx, job.ID)
		if err != nil || len(back) != 2 || back[0] != tests[0] || back[1] != tests[1] {
			t.Fatalf("tests %+v (%v), want %+v", back, err, tests)
		}
	})
}

// TestPhaseSavedWithEvents checks that a phase event keeps its phase and
// that the job's phase is saved with it, across a reopen.
func TestPhaseSavedWithEvents(t *testing.T) {
	eachStore(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		s, err := persistence.Open(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		job := &jobs.Job{Status: jobs.StatusRunning, CreatedAt: time.Now(), LastSeq: 1}
		if err := s.CreateJob(ctx, job, []jobs.Event{{Seq: 1, Type: jobs.EventStatus, Status: jobs.StatusQueued, Time: time.Now()}}); err != nil {
			t.Fatal(err)
		}
		job.Phase, job.LastSeq = jobs.PhaseInstall, 2
		if err := s.AppendEvents(ctx, job, []jobs.Event{{JobID: job.ID, Seq: 2, Type: jobs.EventPhase, Phase: jobs.PhaseInstall, Time: time.Now()}}); err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		s = MustOpenPath(t, dsn)
		got, err := s.Job(ctx, job.ID)
		if err != nil || got.Phase != jobs.PhaseInstall {
			t.Fatalf("job %+v (%v), want phase %q", got, err, jobs.PhaseInstall)
		}
		evs, err := s.Events(ctx, job.ID, 1, 10)
		if err != nil || len(evs) != 1 || evs[0].Type != jobs.EventPhase || evs[0].Phase != jobs.PhaseInstall {
			t.Fatalf("events %+v (%v), want one install phase event", evs, err)
		}
	})
}

// TestCheckpointerMovesTheWAL checks that committed events are
// checkpointed into the database by the background checkpointer (the
// writer's own automatic checkpoints are only a far backstop).
func TestCheckpointerMovesTheWAL(t *testing.T) {
	s := MustOpen(t)
	job := MustCreateJob(t, s)
	if err := s.AppendEvents(context.Background(), job, logEvents(job, 2, 50)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for s.Checkpoints() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no checkpoint within 10s of a commit")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestCountJobs(t *testing.T) {
	eachStore(t, func(t *testing.T, dsn string) {
		s := MustOpenPath(t, dsn)
		ctx := context.Background()
		for range 3 {
			MustCreateJob(t, s)
		}
		done := MustCreateJob(t, s)
		done.Status, done.LastSeq = jobs.StatusPassed, done.LastSeq+1
		if err := s.AppendEvents(ctx, done, []jobs.Event{{JobID: done.ID, Seq: done.LastSeq, Type: jobs.EventStatus,
			Status: jobs.StatusPassed, Time: time.Now()}}); err != nil {
			t.Fatal(err)
		}
		got, err := s.CountJobsByStatus(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if want := map[jobs.Status]int64{jobs.StatusQueued: 3, jobs.StatusPassed: 1}; !reflect.DeepEqual(got, want) {
			t.Fatalf("counts %v, want %v", got, want)
		}
		for status, want := range map[jobs.Status]int64{jobs.StatusQueued: 3, jobs.StatusPassed: 1, jobs.StatusRunning: 0} {
			if n, err := s.CountJobs(ctx, status); err != nil || n != want {
				t.Fatalf("CountJobs(%s) = %d, %v; want %d", status, n, err, want)
			}
		}
	})
}
