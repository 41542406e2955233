package executor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"

	"ci/jobs"
)

// The Docker-only tests of the sandbox: each runs Python tests in a real
// container that pass only while a defence holds.

// sandboxTests is a pytest file checking every defence of the sandbox from
// the inside. fmt verbs: uid, gid, memory, pids, CPUs, tmpfs size.
const sandboxTests = `import errno, os, socket, stat, subprocess
import pytest

UID, GID = %d, %d
MEMORY, PIDS, CPUS, TMPFS = %d, %d, %g, %d


def mounts():
    """mount point -> (mount options, fs type)"""
    out = {}
    for line in open("/proc/self/mountinfo"):
        f = line.split()
        sep = f.index("-")
        out[f[4]] = (f[5].split(","), f[sep + 1])
    return out


def status():
    return {k: v.strip() for k, v in (l.split(":", 1) for l in open("/proc/self/status"))}


def cgroup(v1, v2):
    for name in (v1, v2):
        p = "/sys/fs/cgroup/" + name
        if name and os.path.exists(p):
            return open(p).read().split()
    pytest.fail("no cgroup file %%s or %%s" %% (v1, v2))


def test_not_root():
    assert (os.getuid(), os.geteuid(), os.getgid(), os.getegid()) == (UID, UID, GID, GID)
    assert 0 not in os.getgroups()


def test_home_is_tmp():
    assert os.environ["HOME"] == "/tmp"
    assert os.path.expanduser("~") == "/tmp"


def test_project_not_writable():
    st = os.stat("/workspace")
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o755)
    assert not os.access("/workspace", os.W_OK)
    assert not os.access(__file__, os.W_OK)
    for name, op in [
        ("create", lambda: open("/workspace/x", "w")),
        ("append", lambda: open(__file__, "a")),
        ("mkdir", lambda: os.mkdir("/workspace/d")),
        ("remove", lambda: os.remove(__file__)),
        ("rename", lambda: os.rename(__file__, "/workspace/y.py")),
        ("chmod", lambda: os.chmod(__file__, 0o666)),
        ("chmod root", lambda: os.chmod("/workspace", 0o777)),
    ]:
        with pytest.raises(PermissionError):
            op()
            pytest.fail(name + " succeeded")


def test_root_fs_read_only():
    assert "ro" in mounts()["/"][0]
    # /var/tmp is world-writable in the image: only a read-only fs stops it.
    for p in ["/x", "/etc/x", "/usr/x", "/var/tmp/x"]:
        with pytest.raises(OSError) as e:
            open(p, "w")
        assert e.value.errno == errno.EROFS, p
    with pytest.raises(OSError) as e:
        os.mkdir("/var/tmp/d")
    assert e.value.errno == errno.EROFS


def test_tmp_writable_tmpfs():
    opts, fstype = mounts()["/tmp"]
    assert fstype == "tmpfs"
    assert "nosuid" in opts and "nodev" in opts
    assert stat.S_IMODE(os.stat("/tmp").st_mode) == 0o1777
    st = os.statvfs("/tmp")
    assert st.f_blocks * st.f_frsize == TMPFS


def test_tmp_path_runs_helpers(tmp_path):
    assert str(tmp_path).startswith("/tmp/")
    helper = tmp_path / "helper.sh"
    helper.write_text("#!/bin/sh\necho helper ran\n")
    helper.chmod(0o755)
    assert subprocess.run([str(helper)], capture_output=True, text=True, check=True).stdout == "helper ran\n"


def test_no_network():
    assert os.listdir("/sys/class/net") == ["lo"]
    with pytest.raises(OSError):
        socket.create_connection(("1.1.1.1", 53), timeout=1)
    with socket.create_server(("127.0.0.1", 0)) as srv:  # loopback works
        socket.create_connection(srv.getsockname(), timeout=1).close()


def test_no_capabilities_no_new_privs():
    s = status()
    for f in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"]:
        assert s[f] == "0000000000000000", f
    assert s["NoNewPrivs"] == "1"
    assert s["Seccomp"] == "2"  # the engine's default profile still applies


def test_limits():
    assert int(cgroup("memory/memory.limit_in_bytes", "memory.max")[0]) == MEMORY
    if os.path.exists("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes"):
        assert int(cgroup("memory/memory.memsw.limit_in_bytes", "")[0]) == MEMORY
    elif os.path.exists("/sys/fs/cgroup/memory.swap.max"):
        assert cgroup("", "memory.swap.max") == ["0"]
    assert int(cgroup("pids/pids.max", "pids.max")[0]) == PIDS
    if os.path.exists("/sys/fs/cgroup/cpu.max"):
        quota, period = map(int, cgroup("", "cpu.max"))
    else:
        quota = int(cgroup("cpu/cpu.cfs_quota_us", "")[0])
        period = int(cgroup("cpu/cpu.cfs_period_us", "")[0])
    assert quota / period == CPUS
`

// TestDockerSandbox runs, in a real container, Python tests that check
// every defence of the sandbox; pytest exits 0 only if all of them held.
func TestDockerSandbox(t *testing.T) {
	// Not the defaults, so the test shows the configuration reaches the
	// kernel rather than the engine's or the image's defaults.
	d := newTestDockerConfig(t, DockerConfig{
		User: "4321:4322", Memory: 384 << 20, CPUs: 0.5, Pids: 100, TmpfsSize: 48 << 20,
	}, true)
	lim := d.Limits()
	spec := newSpec(t, map[string]string{
		"test_sandbox.py": fmt.Sprintf(sandboxTests, 4321, 4322, lim.Memory, lim.Pids, lim.CPUs, lim.TmpfsSize),
	}, "-v")
	res, rec := mustRun(t, d, spec)
	out := rec.text(jobs.StreamStdout)
	if res.ExitCode != 0 || !strings.Contains(out, "9 passed") {
		t.Errorf("exit code=%d, want 0 with 9 passed: a defence did not hold; stdout:\n%s\nstderr:\n%s",
			res.ExitCode, out, rec.text(jobs.StreamStderr))
	}
}

// TestDockerSandboxDefaultUser checks that python and pytest work as the
// default user, which has no home directory or passwd entry to rely on.
func TestDockerSandboxDefaultUser(t *testing.T) {
	d := newTestDocker(t, testImage(), true)
	spec := newSpec(t, map[string]string{
		"test_user.py": `import os, pathlib

def test_user(tmp_path):
    assert (os.getuid(), os.getgid()) == (65534, 65534)
    assert os.environ["HOME"] == "/tmp"
    (pathlib.Path.home() / ".config").mkdir(exist_ok=True)
    (tmp_path / "f").write_text("x")
`,
	})
	res, rec := mustRun(t, d, spec)
	if res.ExitCode != 0 {
		t.Errorf("exit code=%d, want 0; stdout:\n%s", res.ExitCode, rec.text(jobs.StreamStdout))
	}
}

func TestDockerOOMKilled(t *testing.T) {
	d := newTestDockerConfig(t, DockerConfig{Memory: 64 << 20}, true)
	spec := newSpec(t, map[string]string{
		"test_hog.py": "def test_hog():\n" +
			"    print('allocating', flush=True)\n" +
			"    b = bytearray(256 << 20)\n" +
			"    print('allocated', len(b), flush=True)\n",
	}, "-s")
	res, rec := mustRun(t, d, spec)
	want := jobs.Result{ExitCode: 137, OOMKilled: true, MemoryLimit: 64 << 20}
	if res != want {
		t.Errorf("result=%+v, want %+v; stdout:\n%s", res, want, rec.text(jobs.StreamStdout))
	}
	if out := rec.text(jobs.StreamStdout); !strings.Contains(out, "allocating") || strings.Contains(out, "allocated") {
		t.Errorf("stdout=%q, want allocating and not allocated", out)
	}
}

// TestDockerOOMSubprocess checks that when only a test's subprocess goes
// over the limit, pytest's own exit code stands, with a note saying why.
func TestDockerOOMSubprocess(t *testing.T) {
	d := newTestDockerConfig(t, DockerConfig{Memory: 128 << 20}, true)
	spec := newSpec(t, map[string]string{
		"test_child.py": "import subprocess, sys\n\ndef test_child():\n" +
			"    r = subprocess.run([sys.executable, '-c', 'b = bytearray(512 << 20)'])\n" +
			"    assert r.returncode == -9\n",
	})
	res, rec := mustRun(t, d, spec)
	report := res.Report
	res.Report = nil
	if want := (jobs.Result{ExitCode: 0, MemoryLimit: 128 << 20}); res != want {
		t.Errorf("result=%+v, want %+v; stdout:\n%s", res, want, rec.text(jobs.StreamStdout))
	}
	if report == nil || len(report.Tests) != 1 || report.Tests[0].Outcome != "passed" {
		t.Errorf("report=%+v, want test_child passed", report)
	}
	const note = "killed for going over the memory limit of 128 MiB"
	if errOut := rec.text(jobs.StreamStderr); !strings.Contains(errOut, note) {
		t.Errorf("stderr=%q, want it to contain %q", errOut, note)
	}
}

// TestDockerPidsLimit runs a fork bomb: the pids limit stops it, the test
// sees the error and cleans up, and the run ends.
func TestDockerPidsLimit(t *testing.T) {
	d := newTestDockerConfig(t, DockerConfig{Pids: 32}, true)
	spec := newSpec(t, map[string]string{
		"test_bomb.py": `import os, signal, time

def test_fork_bomb():
    children, err = [], None
    for _ in range(10000):
        try:
            pid = os.fork()
        except OSError as e:
            err = e
            break
        if pid == 0:
            # Every child forks on too, until the limit stops it.
            while True:
                try:
                    os.fork()
                except OSError:
                    time.sleep(300)
                    os._exit(0)
        children.append(pid)
    assert isinstance(err, BlockingIOError), err
    assert len(children) < 32
    print("stopped after", len(children), "children:", err, flush=True)
    os.kill(-1, signal.SIGKILL)  # every process but ourselves and init
    for pid in children:
        os.waitpid(pid, 0)
`,
	}, "-s")
	rec := &recorder{}
	check := watchLeftovers(t, d, spec.JobID, rec)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := d.Run(ctx, spec, rec)
	if err != nil {
		t.Fatalf("Run: %v; stdout:\n%s", err, rec.text(jobs.StreamStdout))
	}
	if res.ExitCode != 0 {
		t.Errorf("exit code=%d, want 0; stdout:\n%s", res.ExitCode, rec.text(jobs.StreamStdout))
	}
	t.Logf("stdout:\n%s", rec.text(jobs.StreamStdout))
	check(t)
}

// stopMarginTest is how long after the grace a stopped Run may take to
// return in the tests: the engine's kill, the last output and the removal.
const stopMarginTest = 3 * time.Second

// runUntil runs spec on d, cancels ctx with cause once marker arrived on
// stdout, and returns the output and how long Run took after the cancel.
// It fails the test unless Run returned the cancellation and left nothing
// behind.
func runUntil(t *testing.T, d *Docker, spec jobs.Spec, marker string, cause error) (*recorder, time.Duration) {
	t.Helper()
	rec := &recorder{}
	check := watchLeftovers(t, d, spec.JobID, rec)
	checkTemp := watchTempDir(t)
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	done := make(chan error, 1)
	go func() {
		_, err := d.Run(ctx, spec, rec)
		done <- err
	}()
	select {
	case <-rec.waitFor(jobs.StreamStdout, marker):
	case err := <-done:
		t.Fatalf("Run returned before being canceled: %v; stdout=%q", err, rec.text(jobs.StreamStdout))
	case <-time.After(runTimeout):
		t.Fatalf("%q did not arrive within %v", marker, runTimeout)
	}
	cancel(cause)
	canceled := time.Now()
	var err error
	select {
	case err = <-done:
	case <-time.After(d.Limits().StopGrace + runTimeout):
		t.Fatal("Run did not return after cancel")
	}
	took := time.Since(canceled)
	t.Logf("Run returned %v after cancel: %v", took.Round(time.Millisecond), err)
	if !errors.Is(err, context.Canceled) || !errors.Is(err, cause) {
		t.Errorf("err=%v, want one matching context.Canceled and %v", err, cause)
	}
	check(t)
	checkTemp(t)
	return rec, took
}

var errTestCancel = errors.New("test cancel")

// TestDockerStopGraceful cancels a run whose test handles SIGTERM: what it
// writes after the signal reaches out, and Run returns once it exited,
// before the grace is over.
func TestDockerStopGraceful(t *testing.T) {
	d := newTestDockerConfig(t, DockerConfig{StopGrace: 4 * time.Second}, true)
	spec := newSpec(t, map[string]string{
		"test_graceful.py": `import signal, time

def on_term(signum, frame):
    print("got SIGTERM", flush=True)
    time.sleep(1)
    print("cleaned up", flush=True)
    raise KeyboardInterrupt

def test_graceful():
    signal.signal(signal.SIGTERM, on_term)
    print("started", flush=True)
    time.sleep(300)
`,
	}, "-s")
	rec, took := runUntil(t, d, spec, "started", errTestCancel)
	out := rec.text(jobs.StreamStdout)
	for _, want := range []string{"got SIGTERM", "cleaned up", "KeyboardInterrupt"} {
		if !strings.Contains(out, want) {
			t.Errorf("stdout lacks %q: output written during the grace was lost; stdout:\n%s", want, out)
		}
	}
	if grace := d.Limits().StopGrace; took >= grace {
		t.Errorf("Run took %v after cancel, want less than the grace (%v): the test exited by itself", took, grace)
	}
}

// TestDockerStopPlain cancels a run whose test does nothing about
// SIGTERM: pytest dies of it at once (it is not PID 1, which would ignore
// it), well before the grace is over.
func TestDockerStopPlain(t *testing.T) {
	d := newTestDockerConfig(t, DockerConfig{StopGrace: 5 * time.Second}, true)
	spec := newSpec(t, map[string]string{
		"test_plain.py": "import time\n\ndef test_plain():\n    print('started', flush=True)\n    time.sleep(300)\n",
	}, "-s")
	_, took := runUntil(t, d, spec, "started", errTestCancel)
	if grace := d.Limits().StopGrace; took >= grace {
		t.Errorf("Run took %v after cancel, want less than the grace (%v): SIGTERM did not reach pytest", took, grace)
	}
}

// TestDockerStopKill cancels a run whose test ignores SIGTERM: it gets
// SIGKILL once the grace is over, and Run returns soon after.
func TestDockerStopKill(t *testing.T) {
	d := newTestDockerConfig(t, DockerConfig{StopGrace: 2 * time.Second}, true)
	spec := newSpec(t, map[string]string{
		"test_stubborn.py": `import signal, time

def test_stubborn():
    signal.signal(signal.SIGTERM, lambda *_: print("ignored SIGTERM", flush=True))
    print("started", flush=True)
    while True:
        time.sleep(1)
`,
	}, "-s")
	rec, took := runUntil(t, d, spec, "started", errTestCancel)
	if out := rec.text(jobs.StreamStdout); !strings.Contains(out, "ignored SIGTERM") {
		t.Errorf("stdout=%q, want %q: SIGTERM first, and output during the grace kept", out, "ignored SIGTERM")
	}
	grace := d.Limits().StopGrace
	if took < grace || took > grace+stopMarginTest {
		t.Errorf("Run took %v after cancel, want between the grace (%v) and %v", took, grace, grace+stopMarginTest)
	}
}

// TestDockerCancelAtEachStep cancels a run right after each step of Run
// and checks that it returns the cancellation and leaves nothing behind.
func TestDockerCancelAtEachStep(t *testing.T) {
	d := newTestDocker(t, testImage(), true)
	for _, step := range []string{"created", "copied", "started"} {
		t.Run(step, func(t *testing.T) {
			spec := newSpec(t, map[string]string{"test_ok.py": "import time\n\ndef test_ok():\n    time.sleep(300)\n"})
			ctx, cancel := context.WithCancelCause(context.Background())
			defer cancel(nil)
			var (
				mu      sync.Mutex
				id      string
				volumes []string
			)
			d.hook = func(s, cid string) {
				if s == "created" {
					vols, err := containerVolumes(d, cid)
					if err != nil {
						t.Errorf("container volumes: %v", err)
					}
					mu.Lock()
					id, volumes = cid, vols
					mu.Unlock()
				}
				if s == step {
					cancel(errTestCancel)
				}
			}
			defer func() { d.hook = nil }()
			checkTemp := watchTempDir(t)
			start := time.Now()
			_, err := d.Run(ctx, spec, &recorder{})
			took := time.Since(start)
			if !errors.Is(err, context.Canceled) || !errors.Is(err, errTestCancel) {
				t.Errorf("err=%v, want one matching context.Canceled and %v", err, errTestCancel)
			}
			if max := d.Limits().StopGrace + stopMarginTest; took > max {
				t.Errorf("Run took %v, want at most %v", took, max)
			}
			mu.Lock()
			defer mu.Unlock()
			if id == "" || len(volumes) != 1 {
				t.Fatalf("container %q with volumes %q, want one created with one volume", id, volumes)
			}
			assertGone(t, d, spec.JobID, id, volumes)
			checkTemp(t)
		})
	}
}

// watchTempDir points TMPDIR at a new empty directory for the rest of the
// test and returns a check that nothing was left in it. Call it after the
// test's own t.TempDir calls.
func watchTempDir(t *testing.T) func(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("TMPDIR", dir)
	return func(t *testing.T) {
		t.Helper()
		entries, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			t.Errorf("temporary file %s left behind", e.Name())
		}
	}
}

// containerVolumes returns the names of the volumes of container id.
func containerVolumes(d *Docker, id string) ([]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	info, err := d.cli.ContainerInspect(ctx, id)
	if err != nil {
		return nil, err
	}
	var vols []string
	for _, m := range info.Mounts {
		if m.Type == "volume" {
			vols = append(vols, m.Name)
		}
	}
	return vols, nil
}

// assertGone checks that container id, any container labelled with jobID
// and the volumes are all gone.
func assertGone(t *testing.T, d *Docker, jobID, id string, volumes []string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := d.cli.ContainerInspect(ctx, id); !cerrdefs.IsNotFound(err) {
		t.Errorf("inspect container %s: %v, want not found", shortID(id), err)
	}
	rec := &recorder{}
	check := watchLeftovers(t, d, jobID, rec)
	check(t) // no container labelled with the job
	for _, v := range volumes {
		if _, err := d.cli.VolumeInspect(ctx, v); !cerrdefs.IsNotFound(err) {
			t.Errorf("inspect volume %s: %v, want not found", v, err)
		}
	}
}

// TestDockerNoReportLine checks that ci's own JUnit report does not add
// pytest's "generated xml file" line to the output, while a user's
// --junitxml still gets it.
func TestDockerNoReportLine(t *testing.T) {
	d := newTestDocker(t, testImage(), true)
	files := map[string]string{"test_a.py": "def test_a(): pass\n"}
	res, rec := mustRun(t, d, newSpec(t, files))
	out := rec.text(jobs.StreamStdout)
	if res.ExitCode != 0 || !strings.Contains(out, "1 passed") || strings.Contains(out, "generated xml file") {
		t.Fatalf("exit %d, output %q: want a pass without ci's report line", res.ExitCode, out)
	}
	if res.Report == nil || len(res.Report.Tests) != 1 {
		t.Fatalf("report %+v: want ci's report still written", res.Report)
	}
	_, rec = mustRun(t, d, newSpec(t, files, "--junitxml=/tmp/mine.xml"))
	if out := rec.text(jobs.StreamStdout); !strings.Contains(out, "generated xml file: /tmp/mine.xml") {
		t.Fatalf("output %q: want the line for the user's own report", out)
	}
}
