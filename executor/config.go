package executor

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/mount"
	"github.com/docker/docker/api/types/strslice"

	"ci/jobs"
)

// Container layout and labels.
const (
	// Workspace is where the project is unpacked and pytest runs.
	Workspace = "/workspace"
	// Tmp is the writable tmpfs of a test container, also its HOME.
	Tmp = "/tmp"
	// LabelJob is the container label holding the job ID.
	LabelJob = "ci.job"
	// LogDriver is the log driver of every test container.
	LogDriver = "json-file"
	// ReportDir is the directory, owned by the test user with mode 0700,
	// where pytest writes ReportFile: in the project's volume, which
	// outlives the exit (the tmpfs at /tmp does not), made by the same
	// copy as the project. It is the only place there the tests may
	// write. A project's own entries under it are dropped (see
	// withReportDir).
	ReportDir = Workspace + "/.ci-results"
	// ReportFile is pytest's JUnit XML report.
	ReportFile = ReportDir + "/report.xml"
	// JUnitFamily is the JUnit XML flavour pytest writes: xunit1 gives
	// each testcase the file (and line) of its test, so its pytest node
	// ID can be rebuilt without guessing where the module path ends.
	JUnitFamily = "xunit1"
	// NoPytestFile is written by the test container's launcher (see
	// pytestLauncher) when pytest cannot be imported, before it exits
	// with exitNoPytest.
	NoPytestFile = ReportDir + "/no-pytest"
)

// exitNoPytest is the exit code of the launcher when pytest cannot be
// imported. Only together with NoPytestFile does it mean that: a test may
// exit with any code.
const exitNoPytest = 119

// pytestLauncher is the Python program the test container runs (with
// python -c): pytest, started as "python -m pytest" would start it (runpy
// with alter_sys), or, if pytest cannot be imported at all, a message that
// says so in plain words instead of a bare "No module named pytest", the
// NoPytestFile marker and exit code exitNoPytest. It also keeps pytest from
// ending every job's output with "generated xml file: <ci's report>" (a
// user's own --junitxml still gets its line); should pytest's internals
// differ, that line simply stays.
var pytestLauncher = `import importlib.util, runpy, sys
if importlib.util.find_spec("pytest") is None:
    sys.stderr.write("ci: pytest cannot be imported: the image does not have it and no requirements.txt installs it.\n"
                     "ci: add pytest to the project's requirements.txt (or use an image that has pytest).\n")
    try:
        open("` + NoPytestFile + `", "w").close()
    except OSError:
        pass
    sys.exit(` + strconv.Itoa(exitNoPytest) + `)
try:
    from _pytest.junitxml import LogXML
    _summary = LogXML.pytest_terminal_summary
    def _quiet(self, terminalreporter):
        if self.logfile != "` + ReportFile + `":
            _summary(self, terminalreporter)
    LogXML.pytest_terminal_summary = _quiet
except Exception:
    pass
runpy.run_module("pytest", run_name="__main__", alter_sys=True)
`

// pytestCommand returns the command that runs pytest with python (a path
// or a name on PATH), with ci's report options and then the user's args.
func pytestCommand(python string, args []string) []string {
	// The report options come first: a user's own --junitxml or
	// junit_family, later on the command line, wins (the run then has no
	// report, or one parseJUnit reads without file attributes).
	return append([]string{python, "-c", pytestLauncher,
		"--junitxml=" + ReportFile, "-o", "junit_family=" + JUnitFamily,
		"-p", "no:cacheprovider"}, args...)
}

// The limits a test container gets when DockerConfig leaves them zero.
const (
	DefaultMemory    int64 = 2 << 30   // 2 GiB
	DefaultCPUs            = 1.0       // one CPU's worth of time
	DefaultPids      int64 = 512       // processes and threads
	DefaultTmpfsSize int64 = 512 << 20 // 512 MiB, charged to Memory
	// DefaultUser is "nobody:nogroup" by number: it needs no entry in the
	// image's /etc/passwd.
	DefaultUser      = "65534:65534"
	DefaultStopGrace = 5 * time.Second
)

// Limits are the identity and resource limits every test container runs
// with, after defaults are applied.
type Limits struct {
	// User is the numeric "uid:gid" the tests run as; neither is 0.
	User string
	// Memory is the memory limit in bytes (the tmpfs at /tmp counts
	// towards it). Swap is not allowed on top of it. A test process that
	// goes over it is killed and Run reports Result.OOMKilled.
	Memory int64
	// CPUs is how many CPUs' worth of time the tests may use.
	CPUs float64
	// Pids is the most processes and threads that may exist at once.
	Pids int64
	// TmpfsSize is the size in bytes of the tmpfs at /tmp.
	TmpfsSize int64
	// StopGrace is how long the tests get between SIGTERM and SIGKILL when
	// a run is canceled, in whole seconds (the Engine API counts seconds).
	StopGrace time.Duration
}

// limits returns cfg's limits with defaults for zero fields, or an error
// if one is out of range.
func (cfg DockerConfig) limits() (Limits, error) {
	l := Limits{
		User:      cfg.User,
		Memory:    cfg.Memory,
		CPUs:      cfg.CPUs,
		Pids:      cfg.Pids,
		TmpfsSize: cfg.TmpfsSize,
		StopGrace: cfg.StopGrace,
	}
	if l.User == "" {
		l.User = DefaultUser
	}
	if l.Memory == 0 {
		l.Memory = DefaultMemory
	}
	if l.CPUs == 0 {
		l.CPUs = DefaultCPUs
	}
	if l.Pids == 0 {
		l.Pids = DefaultPids
	}
	if l.TmpfsSize == 0 {
		l.TmpfsSize = DefaultTmpfsSize
	}
	if l.StopGrace == 0 {
		l.StopGrace = DefaultStopGrace
	}
	if l.StopGrace > 0 {
		// Whole seconds, as the engine counts them.
		l.StopGrace = (l.StopGrace + time.Second - 1).Truncate(time.Second)
	}

	if err := checkUser(l.User); err != nil {
		return Limits{}, err
	}
	switch {
	case l.Memory < 6<<20: // the engine's own minimum
		return Limits{}, fmt.Errorf("memory limit %d bytes: want at least 6 MiB", l.Memory)
	case !(l.CPUs >= 0.01): // also NaN
		return Limits{}, fmt.Errorf("CPU limit %g: want at least 0.01", l.CPUs)
	case l.Pids < 8:
		return Limits{}, fmt.Errorf("pids limit %d: want at least 8", l.Pids)
	case l.TmpfsSize < 0:
		return Limits{}, fmt.Errorf("tmpfs size %d: want a positive size", l.TmpfsSize)
	case l.StopGrace <= 0:
		return Limits{}, fmt.Errorf("stop grace %v: want a positive duration", cfg.StopGrace)
	}
	return l, nil
}

// checkUser checks that user is a numeric "uid:gid" that is not root's.
// Both are needed: with a bare uid missing from /etc/passwd the engine
// falls back to gid 0.
func checkUser(user string) error {
	uid, gid, ok := strings.Cut(user, ":")
	if !ok {
		return fmt.Errorf("user %q: want a numeric uid:gid", user)
	}
	for _, s := range []string{uid, gid} {
		n, err := strconv.ParseUint(s, 10, 32)
		if err != nil {
			return fmt.Errorf("user %q: want a numeric uid:gid", user)
		}
		if n == 0 {
			return fmt.Errorf("user %q: the tests must not run as root or with group root", user)
		}
	}
	return nil
}

// containerConfig returns the configuration of the container that runs
// spec's tests with the given image and limits, and, when deps names one,
// the dependency volume mounted read-only at DepsDir with its venv's
// python running the tests. It is pure: everything the container is made
// of is decided here, so it can be table-tested.
func containerConfig(spec jobs.Spec, image string, lim Limits, deps string) (*container.Config, *container.HostConfig) {
	python := "python"
	if deps != "" {
		python = VenvPython
	}
	cmd := pytestCommand(python, spec.Args)
	grace := int(lim.StopGrace / time.Second)
	cfg := &container.Config{
		Image:      image,
		Cmd:        cmd,
		WorkingDir: Workspace,
		// Numeric, so it needs no /etc/passwd entry in the image.
		User: lim.User,
		Env: []string{
			// The root fs is read-only: whatever writes under ~ (pip,
			// matplotlib, ...) writes to the tmpfs.
			"HOME=" + Tmp,
			// src/ layouts import without installing the project.
			"PYTHONPATH=" + Workspace + "/src:" + Workspace,
			// No .pyc files written into the project.
			"PYTHONDONTWRITEBYTECODE=1",
			// Output reaches the attach stream as it is written, not when
			// a block buffer fills.
			"PYTHONUNBUFFERED=1",
			// Colour on: the web page renders it, and the CLI strips it
			// when it prints to a pipe. A user's --color=no still wins.
			"PY_COLORS=1",
		},
		Labels: map[string]string{LabelJob: spec.JobID},
		// stdout and stderr are kept apart: no TTY, no stdin.
		Tty:          false,
		OpenStdin:    false,
		AttachStdout: true,
		AttachStderr: true,
		// An anonymous volume, so the project can be copied in although
		// the root fs is read-only. Its root directory and the copied
		// entries are owned by root (0755/0644), so the tests can read
		// but not write them, except ReportDir (see withReportDir), where
		// pytest's report outlives the exit. Removed with the container.
		Volumes: map[string]struct{}{Workspace: {}},
		// A stop (Run canceled, or a `docker stop` by hand) sends SIGTERM,
		// whatever the image says, and SIGKILL after the grace.
		StopSignal:  "SIGTERM",
		StopTimeout: &grace,
	}
	withInit := true
	pids := lim.Pids
	host := &container.HostConfig{
		// No network at all: only the loopback interface exists.
		NetworkMode:    "none",
		ReadonlyRootfs: true,
		// The only writable place besides /dev/shm. exec is allowed: it
		// is where pytest's tmp_path lives, and tests legitimately write
		// helper scripts or build small binaries there and run them.
		// noexec would buy little, since the tests run arbitrary Python
		// anyway (an interpreter reads a script without exec'ing it).
		// nosuid and nodev keep it from granting anything.
		Tmpfs: map[string]string{
			Tmp: fmt.Sprintf("rw,exec,nosuid,nodev,size=%d,mode=1777", lim.TmpfsSize),
		},
		// Reattach reads the whole output back from the container's log,
		// and Run hands out the same bytes as this driver stores (see
		// logText): json-file, whatever the engine's default driver is.
		// Options the engine sets for json-file (max-size, max-file) still
		// apply: a rotated log would lose the start of a long output.
		LogConfig:   container.LogConfig{Type: LogDriver},
		CapDrop:     strslice.StrSlice{"ALL"},
		SecurityOpt: []string{"no-new-privileges"},
		// docker-init (tini) as PID 1: it passes SIGTERM on to pytest (a
		// PID 1 without a handler for it would ignore it, so every stop
		// would last the whole grace) and reaps orphaned processes.
		Init: &withInit,
		Resources: container.Resources{
			Memory: lim.Memory,
			// Equal to Memory: no swap on top of the limit.
			MemorySwap: lim.Memory,
			NanoCPUs:   int64(lim.CPUs * 1e9),
			PidsLimit:  &pids,
		},
	}
	if deps != "" {
		// The venv first on PATH: a test's subprocess.run(["python", ...])
		// or a console script of a dependency finds it.
		cfg.Env = append(cfg.Env, "VIRTUAL_ENV="+Venv, "PATH="+VenvBin+":"+defaultPath)
		host.Mounts = []mount.Mount{{Type: mount.TypeVolume, Source: deps, Target: DepsDir, ReadOnly: true}}
	}
	return cfg, host
}
