package jobs_test

import (
	"archive/zip"
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"ci/executor"
	"ci/jobs"
	"ci/persistence"
)

// TestFollowRaceOnSQLite is the replay-then-follow race on the real store:
// a job writes thousands of lines through the real service, group-commit
// recorder and SQLite, while followers join at random moments from random
// seqs, some slow enough to overflow their subscription. Every follower
// must get exactly after+1..last, in order.
func TestFollowRaceOnSQLite(t *testing.T) {
	dir := t.TempDir()
	store, err := persistence.Open(context.Background(), filepath.Join(dir, "ci.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	arch, err := persistence.NewArchives(filepath.Join(dir, "archives"))
	if err != nil {
		t.Fatal(err)
	}
	svc := jobs.NewService(store, arch, &executor.Fake{}, jobs.Config{Concurrency: 1, SubscriptionBuffer: 4})
	if err := svc.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer svc.Close()

	const lines = 3000
	var script, want strings.Builder
	for i := range lines {
		line := fmt.Sprintf("line %d\n", i)
		want.WriteString(line)
		fmt.Fprintf(&script, "stdout %q\n", line)
		if i%500 == 0 {
			script.WriteString("sleep 5ms\n") // let followers join mid-run
		}
	}
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	w, _ := zw.Create(executor.FakeScript)
	w.Write([]byte(script.String()))
	zw.Close()
	job, err := svc.Submit(context.Background(), &buf, jobs.SubmitOptions{})
	if err != nil {
		t.Fatal(err)
	}

	const followers = 30
	var wg sync.WaitGroup
	type result struct {
		after int64
		seqs  []int64
		text  strings.Builder
		err   error
	}
	results := make([]*result, followers)
	for f := range followers {
		results[f] = &result{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := results[f]
			// Join at staggered points of the job's life.
			var j *jobs.Job
			for {
				var err error
				if j, err = store.Job(context.Background(), job.ID); err != nil {
					r.err = err
					return
				}
				if j.LastSeq >= int64(f*4) || j.Status.Terminal() {
					break
				}
				time.Sleep(time.Millisecond)
			}
			r.after = rand.Int64N(j.LastSeq + 1)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			r.err = svc.Follow(ctx, job.ID, r.after, func(ev jobs.Event) error {
				r.seqs = append(r.seqs, ev.Seq)
				if r.after == 0 {
					r.text.WriteString(ev.Text)
				}
				if f%3 == 0 && ev.Seq%5 == 0 {
					// A slow reader: block on the store a little.
					store.Events(context.Background(), job.ID, 0, 50)
				}
				return nil
			})
		}()
	}
	wg.Wait()

	final, err := store.Job(context.Background(), job.ID)
	if err != nil {
		t.Fatal(err)
	}
	if final.Status != jobs.StatusPassed {
		t.Fatalf("job ended %s (%s), want passed", final.Status, final.Reason)
	}
	for f, r := range results {
		if r.err != nil {
			t.Fatalf("follower %d: %v", f, r.err)
		}
		for i, seq := range r.seqs {
			if seq != r.after+int64(i)+1 {
				t.Fatalf("follower %d (after=%d): event %d has seq %d, want %d", f, r.after, i, seq, r.after+int64(i)+1)
			}
		}
		if n := int64(len(r.seqs)); r.after+n != final.LastSeq {
			t.Fatalf("follower %d (after=%d): got %d events, want up to seq %d", f, r.after, n, final.LastSeq)
		}
		if r.after == 0 && r.text.String() != want.String() {
			t.Fatalf("follower %d from 0: text is not every line once, in order", f)
		}
	}
}
