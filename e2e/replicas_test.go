package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"ci/client"
	"ci/internal/pgtest"

	"github.com/docker/docker/api/types/container"
)

// Two ci-server replicas sharing one PostgreSQL database and the real
// engine (each replica has a data dir of its own: nothing but the
// database is shared).

// replicaLease is the replicas' lease in these tests: short, so that a
// dead replica's jobs end soon.
const replicaLease = "2s"

// startReplica starts a replica named name on the database dsn.
func startReplica(t *testing.T, dsn, name string, args ...string) *server {
	t.Helper()
	return startServer(t, t.TempDir(), append([]string{"--db", dsn, "--replica", name,
		"--lease", replicaLease, "--warm", "0"}, args...)...)
}

// followAll follows a job from seq 0 to its end through s and returns
// its events, checking that their seqs are gapless.
func followAll(t *testing.T, s *server, id string, each func(client.Event)) []client.Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var evs []client.Event
	_, err := client.New(s.url).Follow(ctx, id, 0, func(ev client.Event) error {
		if ev.Seq != int64(len(evs)+1) {
			return fmt.Errorf("seq %d after %d: not gapless", ev.Seq, len(evs))
		}
		evs = append(evs, ev)
		if each != nil {
			each(ev)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("follow %s through %s: %v", id, s.url, err)
	}
	return evs
}

// TestReplicasRunJobsOnce submits jobs alternately to two replicas and
// follows each to its end through the other one: each runs exactly once
// (one running event, one pytest summary), on the replica its record
// names.
func TestReplicasRunJobsOnce(t *testing.T) {
	needEngine(t)
	dsn := pgtest.DSN(t)
	replicas := []*server{startReplica(t, dsn, "replica-a"), startReplica(t, dsn, "replica-b")}
	names := []string{"replica-a", "replica-b"}
	var ids []string
	for i := range 6 {
		r := replicas[i%2].ci(t, fixture(t, "passing"), "submit", "test", "--async")
		ids = append(ids, jobIDFromAsync(t, r))
	}
	ran := map[string]int{}
	for i, id := range ids {
		other := replicas[(i+1)%2]
		w := other.ci(t, t.TempDir(), "wait", id)
		if w.code != 0 || strings.Count(w.stdout, "2 passed") != 1 {
			t.Fatalf("wait %s through the other replica: exit %d, want 0 and one summary:\n%s%s", id, w.code, w.stdout, w.stderr)
		}
		running := 0
		for _, ev := range followAll(t, other, id, nil) {
			if ev.Type == "status" && ev.Status == "running" {
				running++
			}
		}
		job, err := client.New(other.url).Job(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		if running != 1 || job.Status != "passed" || (job.Replica != names[0] && job.Replica != names[1]) {
			t.Fatalf("job %s: %d running events, status %s, replica %q: want 1, passed, one of %v",
				id, running, job.Status, job.Replica, names)
		}
		ran[job.Replica]++
	}
	t.Logf("jobs per replica: %v", ran)
	st := replicas[0].ci(t, t.TempDir(), "status", ids[1], "--json")
	if !strings.Contains(st.stdout, `"replica": "replica-`) {
		t.Fatalf("status --json does not show the replica:\n%s%s", st.stdout, st.stderr)
	}
}

// TestLiveStreamFromOtherReplica streams a running job through the
// replica that does not run it: lines arrive while the job still runs
// (the job is seen running when the fifth line arrives), every line once,
// in order, gapless.
func TestLiveStreamFromOtherReplica(t *testing.T) {
	needEngine(t)
	dsn := pgtest.DSN(t)
	a := startReplica(t, dsn, "replica-a")
	id := jobIDFromAsync(t, a.ci(t, fixture(t, "ticker"), "submit", "test", "--async", "--", "-s"))
	waitStatus(t, a, id, "running")
	b := startReplica(t, dsn, "replica-b")
	cb := client.New(b.url)
	var statusAtFifth string
	var text strings.Builder
	evs := followAll(t, b, id, func(ev client.Event) {
		text.WriteString(ev.Text)
		if statusAtFifth == "" && strings.Contains(text.String(), "tick 005\n") {
			j, err := cb.Job(context.Background(), id)
			if err != nil {
				t.Errorf("job: %v", err)
				return
			}
			statusAtFifth = j.Status
		}
	})
	if statusAtFifth != "running" {
		t.Fatalf("the job was %q when replica-b streamed its fifth line, want running: not live", statusAtFifth)
	}
	if last := evs[len(evs)-1]; last.Status != "passed" {
		t.Fatalf("job ended %s (%s), want passed", last.Status, last.Reason)
	}
	pos := 0
	for i := 1; i <= 30; i++ {
		line := fmt.Sprintf("tick %03d\n", i)
		at := strings.Index(text.String(), line)
		if strings.Count(text.String(), line) != 1 || at < pos {
			t.Fatalf("%q not exactly once and in order:\n%s", line, text.String())
		}
		pos = at
	}
	if j, _ := cb.Job(context.Background(), id); j.Replica != "replica-a" {
		t.Fatalf("job ran on %q, want replica-a", j.Replica)
	}
	// The web page, served by replica-b, says where the job ran.
	needBrowser(t)
	br := newBrowser(t)
	br.open(b.url + "/jobs/" + id)
	br.wait("the replica shown", `!document.getElementById("replica-item").hidden && `+
		`document.getElementById("replica").textContent === "replica-a"`, 30*time.Second)
	br.checkErrors()
}

// TestReplicaKilledMidJob kills a replica (SIGKILL) while it runs a job
// and holds another queued: once its lease has expired, the other replica
// ends the running job error, naming the dead replica, and runs the
// queued one. No job stays running. When the dead replica comes back, it
// removes the container the ended job left on its engine.
func TestReplicaKilledMidJob(t *testing.T) {
	needEngine(t)
	dsn := pgtest.DSN(t)
	a := startReplica(t, dsn, "replica-a", "--concurrency", "1")
	running := jobIDFromAsync(t, a.ci(t, fixture(t, "ticker"), "submit", "test", "--async"))
	waitStatus(t, a, running, "running")
	queued := jobIDFromAsync(t, a.ci(t, fixture(t, "passing"), "submit", "test", "--async"))
	t.Cleanup(func() { removeJobContainers(t, running) }) // the dead replica's container runs on
	a.kill()

	b := startReplica(t, dsn, "replica-b")
	waitStatus(t, b, running, "error")
	job, err := client.New(b.url).Job(context.Background(), running)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(job.Reason, `"replica-a"`) || !strings.Contains(job.Reason, "lease") {
		t.Fatalf("reason %q, want it to name replica-a and its lease", job.Reason)
	}
	if w := b.ci(t, t.TempDir(), "wait", queued); w.code != 0 {
		t.Fatalf("the dead replica's queued job: exit %d, want 0 on the other replica:\n%s%s", w.code, w.stdout, w.stderr)
	}
	if j, _ := client.New(b.url).Job(context.Background(), queued); j.Replica != "replica-b" {
		t.Fatalf("the queued job ran on %q, want replica-b", j.Replica)
	}
	for _, id := range []string{running, queued} {
		if j, _ := client.New(b.url).Job(context.Background(), id); j.Status == "running" || j.Status == "queued" {
			t.Fatalf("job %s is still %s", id, j.Status)
		}
	}
	// replica-a comes back: the job it lost was ended by replica-b, and
	// the container it left running on its engine is removed as it starts.
	if n := containersOf(t, running); n == 0 {
		t.Fatal("the dead replica's job has no container left to sweep: the test proves nothing")
	}
	a.start()
	if n := containersOf(t, running); n != 0 {
		t.Fatalf("%d containers of the job ended elsewhere left after replica-a restarted", n)
	}
}

// removeJobContainers removes the containers of a job, for a job whose
// replica died and left it running.
func removeJobContainers(t *testing.T, id string) {
	cs, err := jobContainers(t, id)
	if err != nil {
		t.Logf("list containers of %s: %v", id, err)
		return
	}
	cli := dockerClient(t)
	for _, c := range cs {
		if err := cli.ContainerRemove(context.Background(), c.ID, container.RemoveOptions{Force: true, RemoveVolumes: true}); err != nil {
			t.Logf("remove container %s: %v", c.ID, err)
		}
	}
}

// TestCancelThroughOtherReplica cancels, through replica-b, a job that
// replica-a runs: replica-a stops it, and it ends canceled (exit 130).
func TestCancelThroughOtherReplica(t *testing.T) {
	needEngine(t)
	dsn := pgtest.DSN(t)
	a := startReplica(t, dsn, "replica-a")
	id := jobIDFromAsync(t, a.ci(t, fixture(t, "slow"), "submit", "test", "--async"))
	waitStatus(t, a, id, "running")
	b := startReplica(t, dsn, "replica-b")
	if r := b.ci(t, t.TempDir(), "cancel", id); r.code != 0 {
		t.Fatalf("cancel through replica-b: exit %d:\n%s%s", r.code, r.stdout, r.stderr)
	}
	if r := b.ci(t, t.TempDir(), "wait", id); r.code != 130 || !strings.Contains(r.stderr, "canceled by user") {
		t.Fatalf("wait after the cancel: exit %d, want 130:\n%s%s", r.code, r.stdout, r.stderr)
	}
	if n := containersOf(t, id); n != 0 {
		t.Fatalf("%d containers of the canceled job left", n)
	}
}
