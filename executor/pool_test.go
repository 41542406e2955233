package executor

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"

	"ci/jobs"
)

// newWarmDocker returns a Docker executor keeping n warm containers, and
// waits until they are ready.
func newWarmDocker(t *testing.T, n int) *Docker {
	t.Helper()
	d := newTestDockerConfig(t, DockerConfig{Warm: n}, true)
	d.StartPool(context.Background())
	t.Cleanup(func() { d.stopPool() })
	waitWarm(t, d, n)
	return d
}

// waitWarm waits until d's pool holds n ready containers.
func waitWarm(t *testing.T, d *Docker, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for len(d.pool.ready) != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d warm containers ready, want %d", len(d.pool.ready), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// warmNames lists the names of d's unclaimed warm containers on the
// engine.
func warmNames(t *testing.T, d *Docker) []string {
	t.Helper()
	list, err := d.cli.ContainerList(context.Background(), container.ListOptions{All: true,
		Filters: filters.NewArgs(filters.Arg("label", LabelPool+"="+d.poolOwner))})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, c := range list {
		if strings.HasPrefix(c.Names[0], "/"+poolNamePrefix) {
			names = append(names, c.Names[0])
		}
	}
	return names
}

// TestDockerWarmContract runs the executor contract with warm containers:
// every job the suite runs without a warm one ready still passes (cold).
func TestDockerWarmContract(t *testing.T) {
	newTestDocker(t, testImage(), true) // skip early, once, if no engine
	testExecutor(t, func(t *testing.T) jobs.Executor { return newWarmDocker(t, 1) })
}

// TestDockerWarmRun checks that a job takes a warm container (it has the
// job's name while it runs), gets pytest's output, arguments and report
// as a cold one would, leaves nothing behind, and that the pool is
// refilled; and that closing removes the warm containers.
func TestDockerWarmRun(t *testing.T) {
	d := newWarmDocker(t, 1)
	var claimed string
	d.hook = func(step, id string) {
		if step == "started" {
			claimed = id
		}
	}
	warmID := (<-d.pool.ready)
	d.pool.ready <- warmID // peek
	spec := newSpec(t, map[string]string{"test_a.py": "import sys\ndef test_a():\n    assert sys.stdin.read() == ''\n\ndef test_b():\n    assert 0\n"}, "-s", "-k", "not test_b")
	res, rec := mustRun(t, d, spec)
	if claimed != warmID.id {
		t.Fatalf("ran in %s, want the warm container %s", shortID(claimed), shortID(warmID.id))
	}
	if out := rec.text(jobs.StreamStdout); res.ExitCode != 0 || (!strings.Contains(out, "1 passed") || !strings.Contains(out, "1 deselected")) {
		t.Fatalf("exit %d, output %q: want the arguments applied and a pass", res.ExitCode, out)
	}
	if res.Report == nil || len(res.Report.Tests) != 1 {
		t.Fatalf("report %+v, want one test", res.Report)
	}
	waitWarm(t, d, 1)
	d.stopPool()
	if names := warmNames(t, d); len(names) != 0 {
		t.Fatalf("warm containers %q left after the pool stopped", names)
	}
}

// TestDockerWarmReattach checks that a job detached in a warm container is
// re-attached (found by its name), and that a warm container claimed but
// never given its arguments (the server died in between) counts as never
// started.
func TestDockerWarmReattach(t *testing.T) {
	d := newWarmDocker(t, 1)
	files := map[string]string{"test_a.py": "import time\ndef test_a():\n    print('in test', flush=True)\n    time.sleep(1)\n"}
	spec := newSpec(t, files, "-s")
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	rec := &recorder{}
	done := make(chan error, 1)
	go func() {
		_, err := d.Run(ctx, spec, rec)
		done <- err
	}()
	<-rec.waitFor(jobs.StreamStdout, "in test")
	cancel(jobs.ErrDetach)
	if err := <-done; !errors.Is(err, jobs.ErrDetach) {
		t.Fatalf("Run: %v, want a detach", err)
	}
	again := &recorder{}
	res, err := d.Reattach(context.Background(), spec, again)
	if err != nil || res.ExitCode != 0 || !strings.Contains(again.text(jobs.StreamStdout), "in test") {
		t.Fatalf("Reattach: exit %d, %v, output %q", res.ExitCode, err, again.text(jobs.StreamStdout))
	}
	assertNoContainers(t, d, spec.JobID)

	// Claimed, never started.
	waitWarm(t, d, 1)
	w := d.pool.take()
	job := newJobID(t)
	if err := d.cli.ContainerRename(context.Background(), w.id, jobContainerName(job)); err != nil {
		t.Fatal(err)
	}
	w.close()
	_, err = d.Reattach(context.Background(), jobs.Spec{JobID: job}, &recorder{})
	if !errors.Is(err, jobs.ErrGone) {
		t.Fatalf("Reattach of a claimed container without arguments: %v, want ErrGone", err)
	}
	assertNoContainers(t, d, job)
}

// TestDockerWarmOlderImage checks that a warm container made from an image
// the tag no longer names is not used: the job gets a cold container of
// the current image.
func TestDockerWarmOlderImage(t *testing.T) {
	d := newWarmDocker(t, 1)
	w := <-d.pool.ready
	w.image = "sha256:an-older-image"
	d.pool.ready <- w
	var ran string
	d.hook = func(step, id string) {
		if step == "started" {
			ran = id
		}
	}
	res, _ := mustRun(t, d, newSpec(t, map[string]string{"test_a.py": "def test_a(): pass\n"}))
	if res.ExitCode != 0 || ran == "" || ran == w.id {
		t.Fatalf("exit %d in %s, want a pass in a cold container, not the stale warm %s", res.ExitCode, shortID(ran), shortID(w.id))
	}
}
