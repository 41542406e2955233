package e2e

import (
	"context"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"ci/client"

	"github.com/docker/docker/api/types/container"
)

// kill ends the server with SIGKILL: no shutdown code runs.
func (s *server) kill() {
	s.t.Helper()
	s.cmd.Process.Signal(syscall.SIGKILL)
	s.cmd.Wait()
	s.cmd = nil
}

// storedTicks returns how many tick lines the job's stored log holds.
func storedTicks(t *testing.T, s *server, id string) int {
	t.Helper()
	rc, err := client.New(s.url).Log(context.Background(), id)
	if err != nil {
		return 0
	}
	defer rc.Close()
	b, _ := io.ReadAll(rc)
	return strings.Count(string(b), "tick ")
}

// checkTicks asserts the job passed, its stored log holds every tick line
// exactly once and in order, and after=0 replays a gapless seq.
func checkTicks(t *testing.T, s *server, id string) {
	t.Helper()
	c := client.New(s.url)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var seqs []int64
	end, err := c.Follow(ctx, id, 0, func(ev client.Event) error { seqs = append(seqs, ev.Seq); return nil })
	if err != nil {
		t.Fatal(err)
	}
	if end.Status != "passed" {
		t.Fatalf("job ended %s (%s), want passed", end.Status, end.Reason)
	}
	for i, seq := range seqs {
		if seq != int64(i+1) {
			t.Fatalf("after=0 replays seq %d at %d: not gapless", seq, i)
		}
	}
	rc, err := c.Log(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(rc)
	rc.Close()
	log := string(b)
	pos := 0
	for i := 1; i <= 30; i++ {
		line := fmt.Sprintf("tick %03d\n", i)
		if n := strings.Count(log, line); n != 1 {
			t.Fatalf("%q stored %d times, want once:\n%s", line, n, log)
		}
		at := strings.Index(log, line)
		if at < pos {
			t.Fatalf("%q out of order:\n%s", line, log)
		}
		pos = at
	}
	if !strings.Contains(log, "1 passed") {
		t.Fatalf("the log lacks pytest's summary:\n%s", log)
	}
}

// TestKillServerMidJob kills the server with SIGKILL while a job prints a
// numbered line every 0.2 s and the real CLI follows it; the server is
// restarted on the same data dir. The follower reconnects by itself and
// exits 0; the job passes; every line is stored exactly once, in order.
func TestKillServerMidJob(t *testing.T) {
	needEngine(t)
	s := startServer(t, t.TempDir())
	follower := exec.Command(filepath.Join(bin, "ci"), "submit", "test", "--server", s.url, "--", "-s")
	follower.Dir = fixture(t, "ticker")
	var out, errOut syncBuffer
	follower.Stdout, follower.Stderr = &out, &errOut
	if err := follower.Start(); err != nil {
		t.Fatal(err)
	}
	var id string
	waitFor(t, func() bool {
		m := submittedRE.FindStringSubmatch(errOut.String())
		if m != nil {
			id = m[1]
		}
		return m != nil && storedTicks(t, s, id) >= 5
	})
	stored := storedTicks(t, s, id)
	s.kill()
	// The job goes on while no server runs: wait until it has printed
	// lines the server never saw.
	waitFor(t, func() bool { return containerTicks(t, id) > stored+3 })
	s.start()

	if err := follower.Wait(); err != nil {
		t.Fatalf("follower: %v\nstdout:\n%s\nstderr:\n%s", err, out.String(), errOut.String())
	}
	if !strings.Contains(errOut.String(), "reconnecting") {
		t.Errorf("the follower did not say it was reconnecting:\n%s", errOut.String())
	}
	for i := 1; i <= 30; i++ {
		if n := strings.Count(out.String(), fmt.Sprintf("tick %03d\n", i)); n != 1 {
			t.Fatalf("the follower printed tick %03d %d times, want once:\n%s", i, n, out.String())
		}
	}
	checkTicks(t, s, id)
	if n := containersOf(t, id); n != 0 {
		t.Fatalf("%d containers left behind", n)
	}
}

// jobContainer returns the ID and state of the job's container.
func jobContainer(t *testing.T, id string) (string, string) {
	t.Helper()
	list, err := jobContainers(t, id)
	if err != nil || len(list) != 1 {
		t.Fatalf("containers of job %s: %d, %v; want 1", id, len(list), err)
	}
	return list[0].ID, list[0].State
}

// TestContainerEndsWhileServerDown kills the server mid-job and restarts it
// only after the container has exited: the job ends with its real exit
// code and its whole output, once.
func TestContainerEndsWhileServerDown(t *testing.T) {
	needEngine(t)
	s := startServer(t, t.TempDir())
	id := jobIDFromAsync(t, s.ci(t, fixture(t, "ticker"), "submit", "test", "--async", "--", "-s"))
	waitFor(t, func() bool { return storedTicks(t, s, id) >= 5 })
	s.kill()
	waitFor(t, func() bool { _, state := jobContainer(t, id); return state == "exited" })
	s.start()
	checkTicks(t, s, id)
	if n := containersOf(t, id); n != 0 {
		t.Fatalf("%d containers left behind", n)
	}
}

// TestContainerRemovedWhileServerDown removes the job's container while
// the server is down: after the restart the job ends error, saying so.
func TestContainerRemovedWhileServerDown(t *testing.T) {
	needEngine(t)
	s := startServer(t, t.TempDir())
	id := jobIDFromAsync(t, s.ci(t, fixture(t, "ticker"), "submit", "test", "--async", "--", "-s"))
	waitFor(t, func() bool { return storedTicks(t, s, id) >= 3 })
	s.kill()
	cid, _ := jobContainer(t, id)
	if err := dockerClient(t).ContainerRemove(context.Background(), cid, container.RemoveOptions{Force: true, RemoveVolumes: true}); err != nil {
		t.Fatal(err)
	}
	s.start()
	r := s.ci(t, t.TempDir(), "wait", id)
	if r.code != 125 || !strings.Contains(r.stderr, "disappeared") {
		t.Fatalf("exit %d, want 125 saying the container disappeared:\n%s", r.code, r.stderr)
	}
}

// containerTicks counts the tick lines in the job container's own log.
func containerTicks(t *testing.T, id string) int {
	t.Helper()
	cid, _ := jobContainer(t, id)
	rc, err := dockerClient(t).ContainerLogs(context.Background(), cid, container.LogsOptions{ShowStdout: true})
	if err != nil {
		return 0
	}
	defer rc.Close()
	b, _ := io.ReadAll(rc)
	return strings.Count(string(b), "tick ")
}
