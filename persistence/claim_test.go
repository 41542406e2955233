package persistence_test

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"ci/jobs"
	"ci/persistence"
)

// mustClaim claims a job for replica with a lease until leaseUntil and
// fails the test if there is none.
func mustClaim(t *testing.T, s *persistence.Store, replica string, now, leaseUntil time.Time) *jobs.Job {
	t.Helper()
	job, _, err := s.ClaimJob(context.Background(), replica, now, leaseUntil)
	if err != nil {
		t.Fatal(err)
	}
	if job == nil {
		t.Fatal("no job claimed, want one")
	}
	return job
}

// mustEnd ends job with status, as the replica running it (or another)
// would, with AppendEvents.
func mustEnd(t *testing.T, s *persistence.Store, job *jobs.Job, status jobs.Status) {
	t.Helper()
	j := *job
	now := clock()
	j.Status, j.FinishedAt, j.LastSeq = status, &now, job.LastSeq+1
	ev := jobs.Event{JobID: j.ID, Seq: j.LastSeq, Time: now, Type: jobs.EventStatus, Status: status}
	if err := s.AppendEvents(context.Background(), &j, []jobs.Event{ev}); err != nil {
		t.Fatal(err)
	}
	*job = j
}

func TestClaimJob(t *testing.T) {
	eachStore(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		s := MustOpenPath(t, dsn)
		first := MustCreateJob(t, s, "-x")
		second := MustCreateJob(t, s)

		now := clock()
		lease := now.Add(time.Minute)
		job, ev, err := s.ClaimJob(ctx, "r1", now, lease)
		if err != nil {
			t.Fatal(err)
		}
		if job == nil || job.ID != first.ID {
			t.Fatalf("claimed %+v, want the oldest job %s", job, first.ID)
		}
		if job.Status != jobs.StatusRunning || job.Replica != "r1" || job.LastSeq != 2 || job.CancelRequested ||
			!reflect.DeepEqual(job.Args, []string{"-x"}) {
			t.Fatalf("claimed job %+v, want running, replica r1, last seq 2, args [-x]", job)
		}
		if job.StartedAt == nil || !job.StartedAt.Equal(now) || job.LeaseUntil == nil || !job.LeaseUntil.Equal(lease) {
			t.Fatalf("started_at=%v lease_until=%v, want %v and %v", job.StartedAt, job.LeaseUntil, now, lease)
		}
		want := jobs.Event{JobID: first.ID, Seq: 2, Time: now, Type: jobs.EventStatus, Status: jobs.StatusRunning}
		if ev == nil || !reflect.DeepEqual(*ev, want) {
			t.Fatalf("event %+v, want %+v", ev, want)
		}
		// The job and its event as returned are as stored.
		stored, err := s.Job(ctx, first.ID)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(stored, job) {
			t.Fatalf("stored job %+v, want %+v", stored, job)
		}
		evs, err := s.Events(ctx, first.ID, 1, 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(evs) != 1 || !reflect.DeepEqual(evs[0], want) {
			t.Fatalf("stored events %+v, want [%+v]", evs, want)
		}
		b, err := json.Marshal(stored)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), `"replica":"r1"`) || !strings.Contains(string(b), `"started_at":"`) {
			t.Fatalf("job JSON %s, want replica and started_at", b)
		}

		// The next claim takes the next job; then none is left.
		if job := mustClaim(t, s, "r2", now, lease); job.ID != second.ID || job.Replica != "r2" {
			t.Fatalf("second claim took %s for %q, want %s for r2", job.ID, job.Replica, second.ID)
		}
		job2, ev2, err := s.ClaimJob(ctx, "r1", now, lease)
		if job2 != nil || ev2 != nil || err != nil {
			t.Fatalf("claim with nothing queued: %+v, %+v, %v, want nil, nil, nil", job2, ev2, err)
		}

		// Ending a claimed job leaves its claim as it is.
		mustEnd(t, s, job, jobs.StatusPassed)
		if stored, err = s.Job(ctx, first.ID); err != nil {
			t.Fatal(err)
		}
		if stored.Status != jobs.StatusPassed || stored.Replica != "r1" || stored.LeaseUntil == nil || !stored.LeaseUntil.Equal(lease) {
			t.Fatalf("ended job %+v, want passed, replica r1, lease %v", stored, lease)
		}
	})
}

// TestClaimJob_Concurrent checks that of replicas racing for jobs, each
// job is claimed exactly once: on PostgreSQL by separate Stores, as
// replicas are; on SQLite by one Store, as one server's workers are.
func TestClaimJob_Concurrent(t *testing.T) {
	eachStore(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		const nJobs, nClaimers = 20, 8
		base := MustOpenPath(t, dsn)
		created := make(map[string]bool)
		for range nJobs {
			created[MustCreateJob(t, base).ID] = true
		}
		stores := make([]*persistence.Store, nClaimers)
		for i := range stores {
			stores[i] = base
			if base.Dialect() == "postgres" {
				stores[i] = MustOpenPath(t, dsn)
			}
		}

		var (
			mu      sync.Mutex
			claimed = map[string]string{} // job ID -> replica
			wg      sync.WaitGroup
		)
		for i, s := range stores {
			replica := fmt.Sprintf("r%d", i)
			wg.Go(func() {
				for {
					now := clock()
					job, ev, err := s.ClaimJob(ctx, replica, now, now.Add(time.Minute))
					if err != nil {
						t.Error(err)
						return
					}
					if job == nil {
						return
					}
					if ev.Seq != 2 || job.LastSeq != 2 || job.Replica != replica {
						t.Errorf("claim of %s: seq %d, last seq %d, replica %q; want 2, 2, %q", job.ID, ev.Seq, job.LastSeq, job.Replica, replica)
					}
					mu.Lock()
					if other, ok := claimed[job.ID]; ok {
						t.Errorf("job %s claimed by %s and %s", job.ID, other, replica)
					}
					claimed[job.ID] = replica
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		if len(claimed) != nJobs {
			t.Fatalf("%d jobs claimed, want %d", len(claimed), nJobs)
		}
		for id, replica := range claimed {
			if !created[id] {
				t.Fatalf("claimed unknown job %s", id)
			}
			job, err := base.Job(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			if job.Status != jobs.StatusRunning || job.Replica != replica || job.LastSeq != 2 {
				t.Fatalf("job %+v, want running, held by %s, last seq 2", job, replica)
			}
			evs, err := base.Events(ctx, id, 0, 0)
			if err != nil {
				t.Fatal(err)
			}
			if len(evs) != 2 || evs[1].Status != jobs.StatusRunning {
				t.Fatalf("job %s: events %+v, want queued and running", id, evs)
			}
		}
	})
}

func TestRenewLeases(t *testing.T) {
	eachStore(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		s := MustOpenPath(t, dsn)
		now := clock()
		lease := now.Add(time.Minute)
		var held [3]*jobs.Job
		for i := range held {
			MustCreateJob(t, s)
			held[i] = mustClaim(t, s, "r1", now, lease)
		}
		a, b, c := held[0], held[1], held[2]
		queued := MustCreateJob(t, s)
		if err := s.RequestCancel(ctx, b.ID); err != nil {
			t.Fatal(err)
		}
		mustEnd(t, s, c, jobs.StatusError) // by another replica: r1's lease had expired

		until := lease.Add(time.Minute)
		leases, err := s.RenewLeases(ctx, "r1", []string{a.ID, b.ID, c.ID, queued.ID, "unknown"}, until)
		if err != nil {
			t.Fatal(err)
		}
		slices.SortFunc(leases, func(x, y jobs.Lease) int { return strings.Compare(x.ID, y.ID) })
		want := []jobs.Lease{
			{ID: a.ID, Held: true},
			{ID: b.ID, Held: true, CancelRequested: true},
			{ID: c.ID},
			{ID: queued.ID},
		}
		if !reflect.DeepEqual(leases, want) {
			t.Fatalf("leases %+v, want %+v", leases, want)
		}
		for _, tt := range []struct {
			id   string
			want time.Time
		}{{a.ID, until}, {b.ID, until}, {c.ID, lease}} {
			job, err := s.Job(ctx, tt.id)
			if err != nil {
				t.Fatal(err)
			}
			if job.LeaseUntil == nil || !job.LeaseUntil.Equal(tt.want) {
				t.Fatalf("job %s: lease until %v, want %v", tt.id, job.LeaseUntil, tt.want)
			}
		}

		// Another replica renews nothing it does not hold.
		leases, err = s.RenewLeases(ctx, "r2", []string{a.ID}, until.Add(time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		if want := []jobs.Lease{{ID: a.ID}}; !reflect.DeepEqual(leases, want) {
			t.Fatalf("leases of r2 %+v, want %+v", leases, want)
		}
		if job, err := s.Job(ctx, a.ID); err != nil || !job.LeaseUntil.Equal(until) {
			t.Fatalf("job %+v (%v), want lease until %v", job, err, until)
		}

		if leases, err := s.RenewLeases(ctx, "r1", nil, until); leases != nil || err != nil {
			t.Fatalf("renew no leases: %+v, %v, want nil, nil", leases, err)
		}
	})
}

func TestExpiredJobs(t *testing.T) {
	eachStore(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		s := MustOpenPath(t, dsn)
		now := clock()
		claim := func(replica string, lease time.Duration) *jobs.Job {
			MustCreateJob(t, s)
			return mustClaim(t, s, replica, now.Add(-time.Hour), now.Add(lease))
		}
		live := claim("r1", time.Minute)
		expired2 := claim("r2", -time.Minute)
		expired1 := claim("r1", -2*time.Minute)
		ended := claim("r2", -time.Minute)
		mustEnd(t, s, ended, jobs.StatusPassed)
		MustCreateJob(t, s) // queued
		// A job running since before leases: it has none, and never
		// expires.
		legacy := MustCreateJob(t, s)
		legacy.Status, legacy.StartedAt, legacy.LastSeq = jobs.StatusRunning, &now, 2
		ev := jobs.Event{JobID: legacy.ID, Seq: 2, Time: now, Type: jobs.EventStatus, Status: jobs.StatusRunning}
		if err := s.AppendEvents(ctx, legacy, []jobs.Event{ev}); err != nil {
			t.Fatal(err)
		}

		for _, tt := range []struct {
			replica string
			want    []string
		}{
			{"r1", []string{expired2.ID}},
			{"r2", []string{expired1.ID}},
			{"r3", []string{expired2.ID, expired1.ID}}, // oldest first
		} {
			js, err := s.ExpiredJobs(ctx, tt.replica, now)
			if err != nil {
				t.Fatal(err)
			}
			if got := ids(js); !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("expired for %s: %q, want %q (live %s)", tt.replica, got, tt.want, live.ID)
			}
		}
		js, err := s.ExpiredJobs(ctx, "r3", now.Add(-3*time.Minute))
		if err != nil {
			t.Fatal(err)
		}
		if len(js) != 0 {
			t.Fatalf("expired 3 minutes ago: %q, want none", ids(js))
		}
		js, err = s.ExpiredJobs(ctx, "r3", now.Add(2*time.Minute))
		if err != nil {
			t.Fatal(err)
		}
		if got, want := ids(js), []string{live.ID, expired2.ID, expired1.ID}; !reflect.DeepEqual(got, want) {
			t.Fatalf("expired in 2 minutes: %q, want %q", got, want)
		}
		if js[0].Replica != "r1" || js[0].LeaseUntil == nil || !js[0].LeaseUntil.Equal(now.Add(time.Minute)) {
			t.Fatalf("expired job %+v, want replica r1 and its lease", js[0])
		}
	})
}

func TestRequestCancel(t *testing.T) {
	eachStore(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		s := MustOpenPath(t, dsn)
		now := clock()
		MustCreateJob(t, s)
		running := mustClaim(t, s, "r1", now, now.Add(time.Minute))
		queued := MustCreateJob(t, s)
		MustCreateJob(t, s)
		ended := mustClaim(t, s, "r1", now, now.Add(time.Minute))
		mustEnd(t, s, ended, jobs.StatusFailed)

		for range 2 { // twice is the same as once
			for _, id := range []string{running.ID, queued.ID, ended.ID} {
				if err := s.RequestCancel(ctx, id); err != nil {
					t.Fatal(err)
				}
			}
		}
		for id, want := range map[string]bool{running.ID: true, queued.ID: false, ended.ID: false} {
			job, err := s.Job(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			if job.CancelRequested != want {
				t.Fatalf("job %s (%s): cancel requested %t, want %t", id, job.Status, job.CancelRequested, want)
			}
		}
		// The job goes on as it was.
		if job, _ := s.Job(ctx, running.ID); job.Status != jobs.StatusRunning || job.LastSeq != running.LastSeq {
			t.Fatalf("job %+v, want it running as before", job)
		}
		wantCode(t, s.RequestCancel(ctx, "unknown"), jobs.ENOTFOUND)

		// A new claim starts without a cancel request.
		if err := s.Exec(ctx, "UPDATE jobs SET status = 'queued', cancel_requested = ? WHERE id = ?", true, queued.ID); err != nil {
			t.Fatal(err)
		}
		if job := mustClaim(t, s, "r2", now, now.Add(time.Minute)); job.ID != queued.ID || job.CancelRequested {
			t.Fatalf("claimed %+v, want %s without a cancel request", job, queued.ID)
		}
	})
}

// TestOpen_AddsColumns checks that a database made before claims and
// leases (without their columns) opens, and its jobs can be claimed.
func TestOpen_AddsColumns(t *testing.T) {
	eachStore(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		s, err := persistence.Open(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		job := MustCreateJob(t, s, "-x")
		for _, col := range []string{"replica", "lease_until", "cancel_requested"} {
			if err := s.Exec(ctx, "ALTER TABLE jobs DROP COLUMN "+col); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}

		s = MustOpenPath(t, dsn)
		got, err := s.Job(ctx, job.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.Replica != "" || got.LeaseUntil != nil || got.CancelRequested || !reflect.DeepEqual(got.Args, []string{"-x"}) {
			t.Fatalf("old job read back as %+v", got)
		}
		now := clock()
		if claimed := mustClaim(t, s, "r1", now, now.Add(time.Minute)); claimed.ID != job.ID || claimed.Replica != "r1" {
			t.Fatalf("claimed %+v, want %s for r1", claimed, job.ID)
		}
	})
}
