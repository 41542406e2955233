package executor

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"

	"ci/jobs"
)

// runTimeout bounds one Run in the tests; a healthy Run takes seconds.
const runTimeout = 2 * time.Minute

// TestFakeContract runs the executor contract on Fake.
func TestFakeContract(t *testing.T) {
	testExecutor(t, func(t *testing.T) jobs.Executor { return &Fake{} })
}

// testExecutor is the contract every jobs.Executor meets. Each case's
// project holds a Python test for Docker and a ci-fake-script that makes
// Fake behave the same, so one assertion holds for both.
func testExecutor(t *testing.T, newExec func(t *testing.T) jobs.Executor) {
	t.Run("passing", func(t *testing.T) {
		ex := newExec(t)
		spec := newSpec(t, map[string]string{
			"test_ok.py": "def test_ok():\n    assert 1 + 1 == 2\n",
			FakeScript: script(
				`stdout "test_ok.py .\n"`,
				`stdout "1 passed in 0.01s\n"`,
				`exit 0`),
		})
		res, rec := mustRun(t, ex, spec)
		if res.ExitCode != 0 {
			t.Errorf("exit code=%d, want 0; stdout:\n%s", res.ExitCode, rec.text(jobs.StreamStdout))
		}
		if out := rec.text(jobs.StreamStdout); !strings.Contains(out, "1 passed") {
			t.Errorf("stdout=%q, want it to contain %q", out, "1 passed")
		}
	})

	t.Run("failing", func(t *testing.T) {
		ex := newExec(t)
		spec := newSpec(t, map[string]string{
			"test_bad.py": "def test_bad():\n    assert 1 + 1 == 3\n",
			FakeScript: script(
				`stdout "test_bad.py F\n"`,
				`stdout "1 failed in 0.01s\n"`,
				`exit 1`),
		})
		res, rec := mustRun(t, ex, spec)
		if res.ExitCode != 1 {
			t.Errorf("exit code=%d, want 1", res.ExitCode)
		}
		if out := rec.text(jobs.StreamStdout); !strings.Contains(out, "1 failed") {
			t.Errorf("stdout=%q, want it to contain %q", out, "1 failed")
		}
	})

	t.Run("no tests", func(t *testing.T) {
		ex := newExec(t)
		spec := newSpec(t, map[string]string{
			"README.md": "nothing to test\n",
			FakeScript:  script(`stdout "no tests ran in 0.01s\n"`, `exit 5`),
		})
		res, _ := mustRun(t, ex, spec)
		if res.ExitCode != 5 {
			t.Errorf("exit code=%d, want 5 (pytest: no tests collected)", res.ExitCode)
		}
	})

	t.Run("stdout and stderr apart", func(t *testing.T) {
		ex := newExec(t)
		spec := newSpec(t, map[string]string{
			"test_streams.py": "import sys\n\ndef test_streams():\n" +
				"    print('OUT-MARKER')\n" +
				"    print('ERR-MARKER', file=sys.stderr)\n",
			FakeScript: script(
				`stdout "test_streams.py OUT-MARKER\n"`,
				`stderr "ERR-MARKER\n"`,
				`stdout ".\n1 passed in 0.01s\n"`),
		}, "-s")
		res, rec := mustRun(t, ex, spec)
		if res.ExitCode != 0 {
			t.Errorf("exit code=%d, want 0", res.ExitCode)
		}
		stdout, stderr := rec.text(jobs.StreamStdout), rec.text(jobs.StreamStderr)
		if !strings.Contains(stdout, "OUT-MARKER") || strings.Contains(stdout, "ERR-MARKER") {
			t.Errorf("stdout=%q, want OUT-MARKER and not ERR-MARKER", stdout)
		}
		if !strings.Contains(stderr, "ERR-MARKER") || strings.Contains(stderr, "OUT-MARKER") {
			t.Errorf("stderr=%q, want ERR-MARKER and not OUT-MARKER", stderr)
		}
	})

	t.Run("partial lines arrive live", func(t *testing.T) {
		ex := newExec(t)
		spec := newSpec(t, map[string]string{
			"test_live.py": "import sys, time\n\ndef test_live():\n" +
				"    sys.stdout.write('tick.')\n" +
				"    sys.stdout.flush()\n" +
				"    time.sleep(2)\n" +
				"    sys.stdout.write('done\\n')\n",
			FakeScript: script(
				`stdout "test_live.py tick."`,
				`sleep 2s`,
				`stdout "done\n.\n1 passed in 2.01s\n"`),
		}, "-s")
		res, rec := mustRun(t, ex, spec)
		if res.ExitCode != 0 {
			t.Errorf("exit code=%d, want 0", res.ExitCode)
		}
		tick, ti, ok1 := rec.seen(jobs.StreamStdout, "tick.")
		done, di, ok2 := rec.seen(jobs.StreamStdout, "done")
		if !ok1 || !ok2 {
			t.Fatalf("stdout=%q, want tick. and done", rec.text(jobs.StreamStdout))
		}
		if gap := done.Sub(tick); ti == di || gap < 1500*time.Millisecond {
			t.Errorf("tick. arrived %v before done (chunks %d and %d), want >= 1.5s: partial lines are not streamed live", gap, ti, di)
		}
	})

	t.Run("args passed through", func(t *testing.T) {
		ex := newExec(t)
		spec := newSpec(t, map[string]string{
			"test_args.py": "def test_a():\n    assert False\n\ndef test_b():\n    assert True\n",
			FakeScript: script(
				`stdout "test_args.py .\n"`,
				`stdout "1 passed, 1 deselected in 0.01s\n"`),
		}, "-k", "test_b")
		res, rec := mustRun(t, ex, spec)
		if res.ExitCode != 0 {
			t.Errorf("exit code=%d, want 0 (-k test_b deselects the failing test)", res.ExitCode)
		}
		if out := rec.text(jobs.StreamStdout); !strings.Contains(out, "1 deselected") {
			t.Errorf("stdout=%q, want it to contain %q", out, "1 deselected")
		}
	})

	t.Run("canceled while running", func(t *testing.T) {
		ex := newExec(t)
		spec := newSpec(t, map[string]string{
			"test_block.py": "import time\n\ndef test_block():\n" +
				"    print('started', flush=True)\n" +
				"    time.sleep(300)\n",
			FakeScript: script(`stdout "started\n"`, `block`),
		}, "-s")
		rec := &recorder{}
		check := watchLeftovers(t, ex, spec.JobID, rec)
		ctx, cancel := context.WithCancelCause(context.Background())
		defer cancel(nil)
		type result struct {
			res jobs.Result
			err error
		}
		done := make(chan result, 1)
		go func() {
			res, err := ex.Run(ctx, spec, rec)
			done <- result{res, err}
		}()
		select {
		case <-rec.waitFor(jobs.StreamStdout, "started"):
		case r := <-done:
			t.Fatalf("Run returned before being canceled: %+v, %v; stdout=%q", r.res, r.err, rec.text(jobs.StreamStdout))
		case <-time.After(runTimeout):
			t.Fatalf("the test did not start within %v", runTimeout)
		}
		cause := errors.New("canceled by the test")
		cancel(cause)
		canceled := time.Now()
		select {
		case r := <-done:
			if !errors.Is(r.err, context.Canceled) || !errors.Is(r.err, cause) {
				t.Errorf("err=%v, want one matching context.Canceled and the cause", r.err)
			}
			t.Logf("Run returned %v after cancel", time.Since(canceled).Round(time.Millisecond))
		case <-time.After(15 * time.Second):
			t.Fatal("Run did not return within 15s of cancel")
		}
		check(t)
	})

	t.Run("deadline exceeded", func(t *testing.T) {
		ex := newExec(t)
		spec := newSpec(t, map[string]string{
			"test_block.py": "import time\n\ndef test_block():\n    time.sleep(300)\n",
			FakeScript:      script(`stdout "started\n"`, `block`),
		})
		rec := &recorder{}
		check := watchLeftovers(t, ex, spec.JobID, rec)
		// Whichever step of Run the deadline hits, the error says so.
		cause := errors.New("time limit of the test")
		ctx, cancel := context.WithTimeoutCause(context.Background(), 3*time.Second, cause)
		defer cancel()
		start := time.Now()
		_, err := ex.Run(ctx, spec, rec)
		if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, cause) {
			t.Errorf("err=%v, want one matching context.DeadlineExceeded and the cause", err)
		}
		if took := time.Since(start); took > 3*time.Second+15*time.Second {
			t.Errorf("Run returned %v after the deadline, want within 15s", took-3*time.Second)
		}
		check(t)
	})

	t.Run("canceled before start", func(t *testing.T) {
		ex := newExec(t)
		spec := newSpec(t, map[string]string{
			"test_ok.py": "def test_ok():\n    pass\n",
			FakeScript:   script(`exit 0`),
		})
		rec := &recorder{}
		check := watchLeftovers(t, ex, spec.JobID, rec)
		cause := errors.New("canceled by the test")
		ctx, cancel := context.WithCancelCause(context.Background())
		cancel(cause)
		if _, err := ex.Run(ctx, spec, rec); !errors.Is(err, context.Canceled) || !errors.Is(err, cause) {
			t.Errorf("err=%v, want one matching context.Canceled and the cause", err)
		}
		check(t)
	})

	t.Run("corrupt archive", func(t *testing.T) {
		ex := newExec(t)
		spec := jobs.Spec{JobID: newJobID(t), Archive: writeFile(t, []byte("PK\x03\x04 this is not a zip"))}
		assertRunError(t, ex, spec, "zip")
	})

	t.Run("unsafe archive", func(t *testing.T) {
		ex := newExec(t)
		b := zipBytes(t, []zipEntry{
			{Name: FakeScript, Body: "exit 0\n"},
			{Name: "../evil.py", Body: "x = 1\n"},
		})
		spec := jobs.Spec{JobID: newJobID(t), Archive: writeFile(t, b)}
		assertRunError(t, ex, spec, `".."`)
	})

	t.Run("missing archive", func(t *testing.T) {
		ex := newExec(t)
		spec := jobs.Spec{JobID: newJobID(t), Archive: "/nonexistent/project.zip"}
		assertRunError(t, ex, spec, "no such file")
	})

	t.Run("concurrent runs", func(t *testing.T) {
		ex := newExec(t)
		const n = 3
		var wg sync.WaitGroup
		checks := make([]func(*testing.T), n)
		for i := range n {
			marker := fmt.Sprintf("MARKER-%d", i)
			spec := newSpec(t, map[string]string{
				"test_one.py": fmt.Sprintf("def test_one():\n    print(%q)\n", marker),
				FakeScript:    script(fmt.Sprintf("stdout %q", marker+"\n")),
			}, "-s")
			rec := &recorder{}
			checks[i] = watchLeftovers(t, ex, spec.JobID, rec)
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), runTimeout)
				defer cancel()
				res, err := ex.Run(ctx, spec, rec)
				if err != nil {
					t.Errorf("run %d: %v", i, err)
					return
				}
				if res.ExitCode != 0 {
					t.Errorf("run %d: exit code=%d, want 0", i, res.ExitCode)
				}
				out := rec.text(jobs.StreamStdout)
				for j := range n {
					other := fmt.Sprintf("MARKER-%d", j)
					if got := strings.Contains(out, other); got != (i == j) {
						t.Errorf("run %d: stdout has %s: %v, want %v", i, other, got, i == j)
					}
				}
			}()
		}
		wg.Wait()
		// Checked once all have returned: Fake's Live counts every run.
		for _, check := range checks {
			check(t)
		}
	})
}

// script joins the lines of a ci-fake-script.
func script(lines ...string) string {
	return strings.Join(lines, "\n") + "\n"
}

func newJobID(tb testing.TB) string {
	tb.Helper()
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		tb.Fatal(err)
	}
	return "test-" + hex.EncodeToString(b)
}

// newSpec returns a spec for a new job running the project made of files.
func newSpec(tb testing.TB, files map[string]string, args ...string) jobs.Spec {
	tb.Helper()
	return jobs.Spec{JobID: newJobID(tb), Archive: projectZip(tb, files), Args: args}
}

// mustRun runs spec to its end, fails the test on an error, and checks
// that nothing is left behind.
func mustRun(t *testing.T, ex jobs.Executor, spec jobs.Spec) (jobs.Result, *recorder) {
	t.Helper()
	rec := &recorder{}
	check := watchLeftovers(t, ex, spec.JobID, rec)
	ctx, cancel := context.WithTimeout(context.Background(), runTimeout)
	defer cancel()
	res, err := ex.Run(ctx, spec, rec)
	if err != nil {
		t.Fatalf("Run: %v\nstdout:\n%s\nstderr:\n%s", err, rec.text(jobs.StreamStdout), rec.text(jobs.StreamStderr))
	}
	check(t)
	return res, rec
}

// assertRunError checks that Run fails with an error containing want and
// leaves nothing behind.
func assertRunError(t *testing.T, ex jobs.Executor, spec jobs.Spec, want string) {
	t.Helper()
	rec := &recorder{}
	check := watchLeftovers(t, ex, spec.JobID, rec)
	ctx, cancel := context.WithTimeout(context.Background(), runTimeout)
	defer cancel()
	_, err := ex.Run(ctx, spec, rec)
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("err=%v, want one containing %q", err, want)
	}
	check(t)
}

// watchLeftovers prepares rec to note what a run of jobID creates and
// returns a check, to call once Run has returned, that all of it is gone:
// for Fake no live run; for Docker no container labelled with the job and
// none of the volumes its container had.
func watchLeftovers(t *testing.T, ex jobs.Executor, jobID string, rec *recorder) func(t *testing.T) {
	switch ex := ex.(type) {
	case *Fake:
		return func(t *testing.T) {
			t.Helper()
			if n := ex.Live(); n != 0 {
				t.Errorf("Live()=%d after Run returned, want 0", n)
			}
		}
	case *Docker:
		var (
			mu      sync.Mutex
			volumes []string
			seen    bool
		)
		rec.first = func() {
			// The container exists while it writes: note its volumes.
			vols, err := jobVolumes(ex, jobID)
			mu.Lock()
			defer mu.Unlock()
			seen = true
			if err != nil {
				t.Errorf("list job volumes: %v", err)
			}
			volumes = vols
		}
		return func(t *testing.T) {
			t.Helper()
			mu.Lock()
			defer mu.Unlock()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			list, err := ex.jobContainers(ctx, jobID)
			if err != nil {
				t.Errorf("list containers: %v", err) // not Fatal: may run in a goroutine
				return
			}
			for _, c := range list {
				t.Errorf("container %s (label %s=%s, state %s) left behind", shortID(c.ID), LabelJob, jobID, c.State)
			}
			if seen && len(volumes) != 1 {
				t.Errorf("the job's container had volumes %q, want exactly one (/workspace)", volumes)
			}
			for _, v := range volumes {
				_, err := ex.cli.VolumeInspect(ctx, v)
				switch {
				case err == nil:
					t.Errorf("volume %s left behind", v)
				case !cerrdefs.IsNotFound(err):
					t.Errorf("inspect volume %s: %v", v, err)
				}
			}
		}
	default:
		t.Fatalf("no leftover check for %T", ex)
		return nil
	}
}

// jobVolumes returns the names of the volumes of jobID's containers.
func jobVolumes(d *Docker, jobID string) ([]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	list, err := d.jobContainers(ctx, jobID)
	if err != nil {
		return nil, err
	}
	var vols []string
	for _, c := range list {
		for _, m := range c.Mounts {
			if m.Type == "volume" {
				vols = append(vols, m.Name)
			}
		}
	}
	return vols, nil
}
