package executor

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"

	"ci/jobs"
)

// reattacher is an executor that can also reattach.
type reattacher interface {
	jobs.Executor
	jobs.Reattacher
}

// detachTimeout is how soon Run or Reattach must return after a detach.
const detachTimeout = 3 * time.Second

func TestFakeReattachContract(t *testing.T) {
	testReattach(t, func(t *testing.T) reattacher { return &Fake{} })
}

func TestDockerReattachContract(t *testing.T) {
	newTestDocker(t, testImage(), true) // skip early, once, if no engine
	testReattach(t, func(t *testing.T) reattacher { return newTestDocker(t, testImage(), true) })
}

// testReattach is the detach and Reattach contract of a jobs.Reattacher,
// with projects that behave the same on Docker and on Fake.
func testReattach(t *testing.T, newExec func(t *testing.T) reattacher) {
	t.Run("detach mid-run, then reattach", func(t *testing.T) {
		ex := newExec(t)
		files := interleaved(6, 200*time.Millisecond, 0)
		plainRec := plainOutput(t, ex, files)

		spec := newSpecFiles(t, files)
		rec := &recorder{}
		check := watchLeftovers(t, ex, spec.JobID, rec)
		runDetached(t, ex, spec, rec, "out 2\n")
		if !processRunning(t, ex, spec.JobID) {
			t.Fatal("the test process does not run after the detach")
		}
		res, again, err := reattach(t, ex, spec)
		if err != nil {
			t.Fatalf("Reattach: %v", err)
		}
		if res.ExitCode != 0 {
			t.Errorf("exit code=%d, want 0", res.ExitCode)
		}
		assertContinues(t, rec, again)
		assertSameOutput(t, again, plainRec)
		check(t)
	})

	t.Run("reattach after the process exited", func(t *testing.T) {
		ex := newExec(t)
		files := interleaved(4, 100*time.Millisecond, 1)
		plainRec := plainOutput(t, ex, files)

		spec := newSpecFiles(t, files)
		rec := &recorder{}
		check := watchLeftovers(t, ex, spec.JobID, rec)
		runDetached(t, ex, spec, rec, "out 1\n")
		waitExited(t, ex, spec.JobID)
		start := time.Now()
		res, again, err := reattach(t, ex, spec)
		t.Logf("Reattach on an exited process took %v", time.Since(start).Round(time.Millisecond))
		if err != nil {
			t.Fatalf("Reattach: %v", err)
		}
		if res.ExitCode != 1 {
			t.Errorf("exit code=%d, want 1 (a failing test)", res.ExitCode)
		}
		assertContinues(t, rec, again)
		assertSameOutput(t, again, plainRec)
		check(t)
	})

	t.Run("numbered lines exactly once", func(t *testing.T) {
		ex := newExec(t)
		const n = 30
		spec := newSpec(t, map[string]string{
			"test_count.py": fmt.Sprintf("import time\n\ndef test_count():\n"+
				"    for i in range(%d):\n"+
				"        print(f'line {i}', flush=True)\n"+
				"        time.sleep(0.1)\n", n),
			FakeScript: numberedScript(n, 100*time.Millisecond),
		}, "-s")
		rec := &recorder{}
		check := watchLeftovers(t, ex, spec.JobID, rec)
		runDetached(t, ex, spec, rec, "line 10\n")
		res, again, err := reattach(t, ex, spec)
		if err != nil {
			t.Fatalf("Reattach: %v", err)
		}
		if res.ExitCode != 0 {
			t.Errorf("exit code=%d, want 0", res.ExitCode)
		}
		assertContinues(t, rec, again)
		assertNumbered(t, again.text(jobs.StreamStdout), n)
		// What a caller that stored Run's output gets: Run's, then the
		// rest of Reattach's.
		run := rec.text(jobs.StreamStdout)
		assertNumbered(t, run+strings.TrimPrefix(again.text(jobs.StreamStdout), run), n)
		check(t)
	})

	t.Run("reattach detached again", func(t *testing.T) {
		ex := newExec(t)
		files := interleaved(10, 200*time.Millisecond, 0)
		plainRec := plainOutput(t, ex, files)

		spec := newSpecFiles(t, files)
		rec := &recorder{}
		check := watchLeftovers(t, ex, spec.JobID, rec)
		runDetached(t, ex, spec, rec, "out 1\n")

		ctx, cancel := context.WithCancelCause(context.Background())
		defer cancel(nil)
		second := &recorder{}
		done := make(chan error, 1)
		go func() {
			_, err := ex.Reattach(ctx, spec, second)
			done <- err
		}()
		waitOutput(t, second, "out 4\n", done)
		cancel(jobs.ErrDetach)
		assertDetached(t, done)
		assertContinues(t, rec, second)
		if !processRunning(t, ex, spec.JobID) {
			t.Fatal("the test process does not run after the second detach")
		}

		res, third, err := reattach(t, ex, spec)
		if err != nil {
			t.Fatalf("Reattach: %v", err)
		}
		if res.ExitCode != 0 {
			t.Errorf("exit code=%d, want 0", res.ExitCode)
		}
		assertContinues(t, second, third)
		assertSameOutput(t, third, plainRec)
		check(t)
	})

	t.Run("reattach canceled", func(t *testing.T) {
		ex := newExec(t)
		spec := newSpec(t, map[string]string{
			"test_block.py": "import time\n\ndef test_block():\n" +
				"    print('started', flush=True)\n" +
				"    time.sleep(300)\n",
			FakeScript: script(`stdout "started\n"`, `block`),
		}, "-s")
		rec := &recorder{}
		check := watchLeftovers(t, ex, spec.JobID, rec)
		runDetached(t, ex, spec, rec, "started\n")

		ctx, cancel := context.WithCancelCause(context.Background())
		defer cancel(nil)
		again := &recorder{}
		done := make(chan error, 1)
		go func() {
			_, err := ex.Reattach(ctx, spec, again)
			done <- err
		}()
		waitOutput(t, again, "started\n", done)
		cause := errors.New("canceled by the test")
		cancel(cause)
		select {
		case err := <-done:
			if !errors.Is(err, context.Canceled) || !errors.Is(err, cause) {
				t.Errorf("err=%v, want one matching context.Canceled and the cause", err)
			}
		case <-time.After(15 * time.Second):
			t.Fatal("Reattach did not return within 15s of cancel")
		}
		check(t)
		if _, _, err := reattach(t, ex, spec); !errors.Is(err, jobs.ErrGone) {
			t.Errorf("Reattach after a canceled Reattach: err=%v, want one matching jobs.ErrGone", err)
		}
	})

	t.Run("unknown job", func(t *testing.T) {
		ex := newExec(t)
		spec := jobs.Spec{JobID: newJobID(t)}
		_, rec, err := reattach(t, ex, spec)
		if !errors.Is(err, jobs.ErrGone) || !strings.Contains(err.Error(), spec.JobID) {
			t.Errorf("err=%v, want one matching jobs.ErrGone and naming the job", err)
		}
		if len(rec.chunks) != 0 {
			t.Errorf("wrote %d chunks, want none", len(rec.chunks))
		}
	})

	t.Run("detached before the call", func(t *testing.T) {
		ex := newExec(t)
		ctx, cancel := context.WithCancelCause(context.Background())
		cancel(jobs.ErrDetach)
		spec := jobs.Spec{JobID: newJobID(t)}
		if _, err := ex.Reattach(ctx, spec, &recorder{}); !errors.Is(err, jobs.ErrDetach) {
			t.Errorf("err=%v, want one matching jobs.ErrDetach", err)
		}
	})
}

// interleaved returns a project whose test writes n numbered lines to
// stdout and to stderr, pause apart, then ends with exit code code (0 or
// 1), and a FakeScript that does the same.
func interleaved(n int, pause time.Duration, code int) map[string]string {
	py := fmt.Sprintf("import sys, time\n\ndef test_streams():\n"+
		"    for i in range(%d):\n"+
		"        print(f'out {i}', flush=True)\n"+
		"        print(f'err {i}', file=sys.stderr, flush=True)\n"+
		"        time.sleep(%g)\n", n, pause.Seconds())
	if code != 0 {
		py += "    assert False, 'fails on purpose'\n"
	}
	var lines []string
	for i := range n {
		lines = append(lines, fmt.Sprintf(`stdout "out %d\n"`, i), fmt.Sprintf(`stderr "err %d\n"`, i),
			"sleep "+pause.String())
	}
	lines = append(lines, fmt.Sprintf("exit %d", code))
	return map[string]string{"test_streams.py": py, FakeScript: script(lines...), "args": "-s"}
}

// numberedScript is a FakeScript printing "line i\n" for i < n, pause
// apart.
func numberedScript(n int, pause time.Duration) string {
	var lines []string
	for i := range n {
		lines = append(lines, fmt.Sprintf(`stdout "line %d\n"`, i), "sleep "+pause.String())
	}
	return script(lines...)
}

// newSpecFiles is newSpec for a project made by interleaved, whose "args"
// entry holds the pytest arguments.
func newSpecFiles(tb testing.TB, files map[string]string) jobs.Spec {
	tb.Helper()
	project := make(map[string]string)
	var args []string
	for name, body := range files {
		if name == "args" {
			args = strings.Fields(body)
			continue
		}
		project[name] = body
	}
	return newSpec(tb, project, args...)
}

// plainOutput runs the project of files as a new job, to its end, and
// returns its output.
func plainOutput(t *testing.T, ex jobs.Executor, files map[string]string) *recorder {
	t.Helper()
	_, rec := mustRun(t, ex, newSpecFiles(t, files))
	return rec
}

// runDetached runs spec, detaches (jobs.ErrDetach) once want has arrived
// on stdout and checks that Run returns promptly with the detach. Should
// the test fail before a Reattach collects the job, the job is cleaned up.
func runDetached(t *testing.T, ex reattacher, spec jobs.Spec, rec *recorder, want string) {
	t.Helper()
	t.Cleanup(func() { cleanupJob(ex, spec.JobID) })
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	done := make(chan error, 1)
	go func() {
		res, err := ex.Run(ctx, spec, rec)
		if err == nil {
			err = fmt.Errorf("Run returned %+v before the detach", res)
		}
		done <- err
	}()
	waitOutput(t, rec, want, done)
	cancel(jobs.ErrDetach)
	assertDetached(t, done)
}

// waitOutput waits until want has arrived on rec's stdout; done receives
// the call's error should it return first.
func waitOutput(t *testing.T, rec *recorder, want string, done <-chan error) {
	t.Helper()
	select {
	case <-rec.waitFor(jobs.StreamStdout, want):
	case err := <-done:
		t.Fatalf("returned before %q arrived: %v; stdout=%q", want, err, rec.text(jobs.StreamStdout))
	case <-time.After(runTimeout):
		t.Fatalf("%q did not arrive within %v; stdout=%q", want, runTimeout, rec.text(jobs.StreamStdout))
	}
}

// assertDetached checks that the call whose error done receives returns
// promptly with the detach.
func assertDetached(t *testing.T, done <-chan error) {
	t.Helper()
	start := time.Now()
	select {
	case err := <-done:
		if !errors.Is(err, jobs.ErrDetach) || !errors.Is(err, context.Canceled) {
			t.Fatalf("err=%v, want one matching jobs.ErrDetach and context.Canceled", err)
		}
		t.Logf("returned %v after the detach", time.Since(start).Round(time.Millisecond))
	case <-time.After(detachTimeout):
		t.Fatalf("did not return within %v of the detach", detachTimeout)
	}
}

// reattach calls Reattach for spec with a time limit.
func reattach(t *testing.T, ex reattacher, spec jobs.Spec) (jobs.Result, *recorder, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), runTimeout)
	defer cancel()
	rec := &recorder{}
	res, err := ex.Reattach(ctx, spec, rec)
	return res, rec, err
}

// assertContinues checks that, on each stream, what before got is the
// start of what after got: a caller that stored before's output and skips
// that many bytes of after's gets exactly the rest.
func assertContinues(t *testing.T, before, after *recorder) {
	t.Helper()
	for _, stream := range []string{jobs.StreamStdout, jobs.StreamStderr} {
		b, a := before.text(stream), after.text(stream)
		if !strings.HasPrefix(a, b) {
			t.Errorf("%s: the first %d bytes differ from what came before the detach:\nbefore: %q\nafter:  %q",
				stream, len(b), b, a)
		}
	}
}

// durations matches pytest's timings, which differ from run to run.
var durations = regexp.MustCompile(`[0-9]+\.[0-9]+s`)

// assertSameOutput checks that got has the same output as want on each
// stream, timings aside.
func assertSameOutput(t *testing.T, got, want *recorder) {
	t.Helper()
	for _, stream := range []string{jobs.StreamStdout, jobs.StreamStderr} {
		g := durations.ReplaceAllString(got.text(stream), "N.NNs")
		w := durations.ReplaceAllString(want.text(stream), "N.NNs")
		if g != w {
			t.Errorf("%s differs from a plain run's:\ngot:  %q\nwant: %q", stream, g, w)
		}
	}
}

// numbered matches the lines of the counting test.
var numbered = regexp.MustCompile(`(?m)\bline ([0-9]+)$`)

// assertNumbered checks that out holds "line i" exactly once for each
// i < n, in order.
func assertNumbered(t *testing.T, out string, n int) {
	t.Helper()
	var got []string
	for _, m := range numbered.FindAllStringSubmatch(out, -1) {
		got = append(got, m[1])
	}
	var want []string
	for i := range n {
		want = append(want, fmt.Sprint(i))
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("numbered lines %v, want each of 0..%d exactly once, in order; output:\n%s", got, n-1, out)
	}
}

// processRunning reports whether the test process of job runs.
func processRunning(t *testing.T, ex reattacher, job string) bool {
	t.Helper()
	switch ex := ex.(type) {
	case *Fake:
		p := fakeDetached(ex, job)
		if p == nil {
			return false
		}
		p.mu.Lock()
		defer p.mu.Unlock()
		return !p.ended
	case *Docker:
		c := jobContainer(t, ex, job)
		if c == nil {
			return false
		}
		return c.State == "running"
	}
	t.Fatalf("no processRunning for %T", ex)
	return false
}

// waitExited waits until the test process of job has exited, by itself.
func waitExited(t *testing.T, ex reattacher, job string) {
	t.Helper()
	switch ex := ex.(type) {
	case *Fake:
		p := fakeDetached(ex, job)
		if p == nil {
			t.Fatalf("no detached process of job %s", job)
		}
		select {
		case <-p.done:
		case <-time.After(runTimeout):
			t.Fatalf("the process of job %s did not exit within %v", job, runTimeout)
		}
	case *Docker:
		c := jobContainer(t, ex, job)
		if c == nil {
			t.Fatalf("no container of job %s", job)
		}
		ctx, cancel := context.WithTimeout(context.Background(), runTimeout)
		defer cancel()
		waitC, errC := ex.cli.ContainerWait(ctx, c.ID, container.WaitConditionNotRunning)
		select {
		case <-waitC:
		case err := <-errC:
			t.Fatalf("wait for container: %v", err)
		}
	default:
		t.Fatalf("no waitExited for %T", ex)
	}
}

func fakeDetached(f *Fake, job string) *fakeProc {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.detached[job]
}

// jobContainer returns the container of job, nil if there is none.
func jobContainer(t *testing.T, d *Docker, job string) *container.Summary {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	list, err := d.jobContainers(ctx, job)
	if err != nil {
		t.Fatalf("list containers: %v", err)
	}
	switch len(list) {
	case 0:
		return nil
	case 1:
		return &list[0]
	}
	t.Fatalf("%d containers of job %s, want at most one", len(list), job)
	return nil
}

// cleanupJob removes whatever a failed test left of job.
func cleanupJob(ex jobs.Executor, job string) {
	switch ex := ex.(type) {
	case *Fake:
		ex.mu.Lock()
		p := ex.detached[job]
		delete(ex.detached, job)
		ex.mu.Unlock()
		if p != nil {
			p.stop(errors.New("test cleanup"))
		}
	case *Docker:
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		list, err := ex.jobContainers(ctx, job)
		if err != nil {
			return
		}
		for _, c := range list {
			_ = ex.cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true, RemoveVolumes: true})
		}
	}
}

// TestDockerReattachRemoved: a container removed while the server was
// down makes Reattach report the job gone.
func TestDockerReattachRemoved(t *testing.T) {
	d := newTestDocker(t, testImage(), true)
	spec := newSpec(t, map[string]string{
		"test_block.py": "import time\n\ndef test_block():\n    print('started', flush=True)\n    time.sleep(300)\n",
	}, "-s")
	rec := &recorder{}
	check := watchLeftovers(t, d, spec.JobID, rec)
	runDetached(t, d, spec, rec, "started\n")
	c := jobContainer(t, d, spec.JobID)
	if c == nil {
		t.Fatal("no container after the detach")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := d.cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true, RemoveVolumes: true}); err != nil {
		t.Fatal(err)
	}
	_, again, err := reattach(t, d, spec)
	if !errors.Is(err, jobs.ErrGone) || !strings.Contains(err.Error(), "no longer exists") {
		t.Errorf("err=%v, want one matching jobs.ErrGone saying the container no longer exists", err)
	}
	if len(again.chunks) != 0 {
		t.Errorf("wrote %d chunks, want none", len(again.chunks))
	}
	check(t)
}

// TestDockerReattachNeverStarted: a container created but never started
// (the server died in between) is removed and the job is gone.
func TestDockerReattachNeverStarted(t *testing.T) {
	d := newTestDocker(t, testImage(), true)
	spec := newSpec(t, map[string]string{"test_ok.py": "def test_ok():\n    pass\n"})
	t.Cleanup(func() { cleanupJob(d, spec.JobID) })
	cfg, host := containerConfig(spec, d.image, d.limits, "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	created, err := d.cli.ContainerCreate(ctx, cfg, host, nil, nil, "")
	if err != nil {
		t.Fatal(err)
	}
	volumes, err := containerVolumes(d, created.ID)
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = reattach(t, d, spec)
	if !errors.Is(err, jobs.ErrGone) || !strings.Contains(err.Error(), "never started") {
		t.Errorf("err=%v, want one matching jobs.ErrGone saying it never started", err)
	}
	assertGone(t, d, spec.JobID, created.ID, volumes)
}

// TestDockerDetachAtEachStep detaches a run right after each step of Run.
// A detach does not interrupt the steps up to the start, so at every step
// the container ends up started and running on, and Reattach gets all of
// its output: a job is never left half-way for the next server.
func TestDockerDetachAtEachStep(t *testing.T) {
	d := newTestDocker(t, testImage(), true)
	for _, step := range []string{"created", "copied", "started"} {
		t.Run(step, func(t *testing.T) {
			spec := newSpec(t, map[string]string{
				"test_ok.py": "import time\n\ndef test_ok():\n    time.sleep(1)\n    print('slept', flush=True)\n",
			}, "-s")
			t.Cleanup(func() { cleanupJob(d, spec.JobID) })
			ctx, cancel := context.WithCancelCause(context.Background())
			defer cancel(nil)
			var (
				id      string
				volumes []string
			)
			d.hook = func(s, cid string) {
				if s == "created" {
					vols, err := containerVolumes(d, cid)
					if err != nil {
						t.Errorf("container volumes: %v", err)
					}
					id, volumes = cid, vols
				}
				if s == step {
					cancel(jobs.ErrDetach)
				}
			}
			defer func() { d.hook = nil }()
			start := time.Now()
			_, err := d.Run(ctx, spec, &recorder{})
			if took := time.Since(start); took > 30*time.Second {
				t.Errorf("Run took %v", took)
			}
			if !errors.Is(err, jobs.ErrDetach) || !errors.Is(err, context.Canceled) {
				t.Fatalf("err=%v, want one matching jobs.ErrDetach and context.Canceled", err)
			}
			d.hook = nil
			if id == "" || len(volumes) != 1 {
				t.Fatalf("container %q with volumes %q, want one created with one volume", id, volumes)
			}
			res, rec, err := reattach(t, d, spec)
			if err != nil {
				t.Fatalf("Reattach: %v", err)
			}
			if out := rec.text(jobs.StreamStdout); res.ExitCode != 0 || !strings.Contains(out, "slept\n") || !strings.Contains(out, "1 passed") {
				t.Errorf("exit code=%d, stdout=%q, want 0 and the whole output", res.ExitCode, out)
			}
			if res.MemoryLimit != d.Limits().Memory {
				t.Errorf("MemoryLimit=%d, want %d", res.MemoryLimit, d.Limits().Memory)
			}
			assertGone(t, d, spec.JobID, id, volumes)
		})
	}
}

// TestDockerReattachBytes checks that Run and Reattach hand out the very
// same bytes, those the json-file log holds, for output that is not plain
// text: invalid UTF-8, a rune split between two writes or cut by the log's
// 16 KiB messages, long lines, an incomplete rune at the very end. pytest
// itself prints nothing (no terminal reporter, os._exit).
func TestDockerReattachBytes(t *testing.T) {
	d := newTestDocker(t, testImage(), true)
	type write struct {
		fd    int
		b     string
		sleep bool // sleep 0.3 s after it, so the next write is a chunk of its own
	}
	writes := []write{
		{1, "start\n", false},
		{2, "err start \xe2\x82", true},
		{2, "\xac\n", false},
		{1, "euro split \xe2\x82", true},
		{1, "\xac done\n", false},
		{1, "stray \xff \x80 surrogate \xed\xa0\x80 literal \xef\xbf\xbd cr\r\n", false},
		{1, strings.Repeat("a", 16383) + "\u20ac after\n", false},
		{1, strings.Repeat("b", 16384) + "\n", false},
		{1, strings.Repeat("c", 16384) + "\u00e9\n", false},
		{1, strings.Repeat("d", 40001) + strings.Repeat("\U0001F600", 5000) + "\n", false},
		{2, "err \xfe\n", false},
		{1, "MARK\n", true},
		{1, "late " + strings.Repeat("\u20ac", 10000) + "\xe2\x82", false},
		{2, "last \xff", false},
	}
	var py strings.Builder
	py.WriteString("import os, time\n\ndef test_bytes():\n")
	raw := map[string]string{}
	for _, w := range writes {
		fmt.Fprintf(&py, "    os.write(%d, bytes.fromhex('%x'))\n", w.fd, w.b)
		if w.sleep {
			py.WriteString("    time.sleep(0.3)\n")
		}
		if w.fd == 1 {
			raw[jobs.StreamStdout] += w.b
		} else {
			raw[jobs.StreamStderr] += w.b
		}
	}
	py.WriteString("    os._exit(3)\n")
	files := map[string]string{"test_bytes.py": py.String(), "args": "-s -p no:terminal"}

	plain := plainOutput(t, d, files)
	spec := newSpecFiles(t, files)
	rec := &recorder{}
	check := watchLeftovers(t, d, spec.JobID, rec)
	runDetached(t, d, spec, rec, "MARK\n")
	res, again, err := reattach(t, d, spec)
	if err != nil {
		t.Fatalf("Reattach: %v", err)
	}
	if res.ExitCode != 3 {
		t.Errorf("exit code=%d, want 3", res.ExitCode)
	}
	assertContinues(t, rec, again)
	for _, stream := range []string{jobs.StreamStdout, jobs.StreamStderr} {
		want := string(jsonLogModel([]byte(raw[stream])))
		if got := plain.text(stream); got != want {
			t.Errorf("%s of a plain Run: %d bytes, want %d, first difference at byte %d", stream, len(got), len(want), firstDiff(got, want))
		}
		if got := again.text(stream); got != want {
			t.Errorf("%s of Reattach: %d bytes, want %d, first difference at byte %d", stream, len(got), len(want), firstDiff(got, want))
		}
	}
	check(t)
}

func firstDiff(a, b string) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// TestDockerReattachOOM: Reattach reports an OOM kill like Run, with the
// container's memory limit.
func TestDockerReattachOOM(t *testing.T) {
	d := newTestDockerConfig(t, DockerConfig{Memory: 64 << 20, TmpfsSize: 16 << 20}, true)
	spec := newSpec(t, map[string]string{
		"test_oom.py": "import time\n\ndef test_oom():\n" +
			"    print('started', flush=True)\n" +
			"    time.sleep(1)\n" +
			"    b = []\n" +
			"    while True:\n" +
			"        b.append(bytearray(8 << 20))\n",
	}, "-s")
	rec := &recorder{}
	check := watchLeftovers(t, d, spec.JobID, rec)
	runDetached(t, d, spec, rec, "started\n")
	waitExited(t, d, spec.JobID)
	res, _, err := reattach(t, d, spec)
	if err != nil {
		t.Fatalf("Reattach: %v", err)
	}
	if !res.OOMKilled || res.ExitCode != exitKilled || res.MemoryLimit != 64<<20 {
		t.Errorf("result %+v, want OOMKilled, exit code %d, MemoryLimit %d", res, exitKilled, 64<<20)
	}
	check(t)
}

// Make sure a NotFound from the engine is recognised through wrapping.
func TestGoneWrapsNotFound(t *testing.T) {
	err := gone("job1", "inspect container", fmt.Errorf("x: %w", cerrdefs.ErrNotFound))
	if !errors.Is(err, jobs.ErrGone) || !strings.Contains(err.Error(), "job1") {
		t.Errorf("err=%v, want one matching jobs.ErrGone naming the job", err)
	}
	other := errors.New("engine down")
	if err := gone("job1", "inspect container", other); err != other {
		t.Errorf("err=%v, want %v unchanged", err, other)
	}
}
