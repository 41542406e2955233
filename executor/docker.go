// Package executor runs jobs' tests: Docker runs them in containers through
// the Docker Engine API, and Fake plays scripted output for tests of other
// packages. Both implement jobs.Executor and jobs.Reattacher.
package executor

import (
	"archive/zip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync/atomic"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"
	"github.com/docker/docker/pkg/stdcopy"

	"ci/jobs"
)

// DefaultImage is the image used when DockerConfig.Image is empty.
const DefaultImage = "python:3.12-slim"

// removeTimeout bounds the removal of a job's container, which runs on a
// fresh context because the job's own may be canceled.
const removeTimeout = 30 * time.Second

// DockerConfig configures a Docker executor. Zero limits mean the
// defaults (DefaultMemory and friends); NewDocker refuses out-of-range
// ones.
type DockerConfig struct {
	// Image is the image the tests run in; it must have python with
	// pytest. Empty means DefaultImage. It is pulled if missing.
	Image string
	// User is the numeric "uid:gid" the tests run as, neither 0. Empty
	// means DefaultUser.
	User string
	// Memory is the memory limit in bytes, swap included (none is
	// allowed on top). 0 means DefaultMemory.
	Memory int64
	// CPUs is how many CPUs' worth of time the tests may use, for example
	// 1.5. 0 means DefaultCPUs.
	CPUs float64
	// Pids is the most processes and threads the tests may have at once.
	// 0 means DefaultPids.
	Pids int64
	// TmpfsSize is the size in bytes of the writable tmpfs at /tmp, which
	// counts towards Memory. 0 means DefaultTmpfsSize.
	TmpfsSize int64
	// StopGrace is how long the tests get between SIGTERM and SIGKILL when
	// a run is canceled, rounded up to whole seconds. 0 means
	// DefaultStopGrace.
	StopGrace time.Duration
	// Deps configures the dependency phase of projects with a
	// requirements.txt, and its cache.
	Deps DepsConfig
	// Warm is how many test containers StartPool keeps created and
	// started ahead of any job (see pool.go); 0 keeps none. Jobs with
	// dependencies always start a cold one (their mount is per job).
	Warm int
	// PoolOwner names this server's warm containers (label
	// ci.pool=<owner>), so that StartPool removes the unclaimed ones an
	// earlier run of the same server left, and never another server's.
	// Empty means a random owner.
	PoolOwner string
	// Logger receives the executor's logs; nil discards them.
	Logger *slog.Logger
	// Metrics receives the executor's measurements; nil measures nothing.
	Metrics Metrics
}

// Docker is an Executor that runs each job's tests in a fresh container of
// a Docker engine, found from the environment (DOCKER_HOST and friends), so
// the engine may be remote: the project goes in through the API as a tar
// stream, never through a bind mount. It is safe for concurrent use.
//
// Every container is a sandbox: a non-root user, a read-only root fs with
// a tmpfs at /tmp (also HOME), the project readable but not writable, no
// network (loopback only), no capabilities, no-new-privileges, and the
// memory, CPU and pids limits of Limits.
type Docker struct {
	cli     *client.Client
	image   string
	limits  Limits
	log     *slog.Logger
	deps    *depsCache
	metrics Metrics

	warmSize  int
	poolOwner string
	pool      *pool // nil until StartPool

	// hook, if set (by tests), is called after each step of a run
	// ("created", "copied", "started") with the container's ID.
	hook func(step, id string)
}

var _ jobs.Executor = (*Docker)(nil)

// NewDocker returns a Docker executor for cfg, or an error if one of cfg's
// limits is out of range. It does not contact the engine; use Ping for
// that.
func NewDocker(cfg DockerConfig) (*Docker, error) {
	lim, err := cfg.limits()
	if err != nil {
		return nil, fmt.Errorf("docker executor: %w", err)
	}
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return nil, fmt.Errorf("docker client: %w", err)
	}
	img := cfg.Image
	if img == "" {
		img = DefaultImage
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var metrics Metrics = nopMetrics{}
	if cfg.Metrics != nil {
		metrics = cfg.Metrics
	}
	if cfg.Warm < 0 {
		return nil, fmt.Errorf("docker executor: warm containers %d: want 0 or more", cfg.Warm)
	}
	return &Docker{cli: cli, image: img, limits: lim, log: log, deps: newDepsCache(cfg.Deps), metrics: metrics,
		warmSize: cfg.Warm, poolOwner: poolOwner(cfg.PoolOwner)}, nil
}

// Limits returns the identity and limits every test container runs with,
// defaults applied, for example to tell a user which memory limit an
// OOM-killed run went over.
func (d *Docker) Limits() Limits { return d.limits }

// Image returns the image the tests run in.
func (d *Docker) Image() string { return d.image }

// Ping checks that the Docker engine answers.
func (d *Docker) Ping(ctx context.Context) error {
	if _, err := d.cli.Ping(ctx); err != nil {
		return fmt.Errorf("docker engine: %w", err)
	}
	return nil
}

// Close removes the warm containers no job has claimed and releases the
// client's resources. Runs in progress are not stopped.
func (d *Docker) Close() error {
	d.stopPool()
	return d.cli.Close()
}

// Run implements jobs.Executor. When the pool (StartPool) has a warm
// container and the project has no dependencies, Run takes it instead of
// creating one (see runWarm): everything below holds the same, except
// that the container is named ci-job-<job ID> rather than labelled.
// Otherwise it makes sure the image is there (pulling
// it if needed), creates a sandboxed container labelled ci.job=<job ID>
// with an anonymous volume at /workspace, copies the project
// in (with ReportDir for pytest's report), attaches
// to its output, starts it and streams stdout and stderr to out as they are
// written.
//
// The bytes Run hands out are those the container wrote, except that each
// byte that is not part of valid UTF-8 is replaced with U+FFFD the way the
// engine's json-file log stores it (see logText): so Reattach, which reads
// that log, hands out the same bytes. Valid UTF-8 passes unchanged; a rune
// cut between two chunks is handed out once complete.
//
// When the tests end by themselves, Run returns their exit code, with
// MemoryLimit set to Limits().Memory, and Report set to pytest's per-test
// results if pytest wrote its JUnit XML report (ReportFile, in the
// project's volume); a missing or unreadable report is no error: Report is
// then nil. If the kernel killed pytest for going over the memory limit,
// OOMKilled is set too (the exit code is then 137).
//
// When ctx is done while the tests run (a cancel or a timeout), Run stops
// them gracefully: SIGTERM to pytest, then SIGKILL if anything still runs
// Limits().StopGrace later. What the tests write in the meantime (a
// handler's message, pytest's KeyboardInterrupt summary) still reaches
// out. Run returns at most StopGrace plus about 4 s (the engine's kill, the
// last output) plus the container's removal after ctx is done, with an
// error for which errors.Is matches ctx.Err() (context.Canceled or
// context.DeadlineExceeded) and context.Cause(ctx). When ctx is done
// before the tests started, Run returns without a grace.
//
// Detach: when ctx ends with the cause jobs.ErrDetach, Run first finishes
// the steps up to the container's start (image, create, copy, attach,
// start: well under a second unless the image must be pulled), then stops
// following it and returns (no out.Write after it returns) with an error
// matching context.Canceled and jobs.ErrDetach, leaving the container,
// running or exited, with its volume and log for Reattach. So a job is
// never left half-way between not begun and running. Only a failure of
// those steps removes the container, as for any other ending.
//
// Whatever other way Run returns, it removes the container with its
// volume; it writes no temporary files (the project is streamed from the
// zip).
func (d *Docker) Run(ctx context.Context, spec jobs.Spec, out jobs.Output) (jobs.Result, error) {
	log := d.log.With("job", spec.JobID)
	if spec.Retry {
		d.cleanupRetry(ctx, spec.JobID, log)
	}
	if ctx.Err() != nil && !detached(ctx) {
		return jobs.Result{}, ctxError(ctx)
	}

	// Check the archive before anything is created in the engine.
	zr, err := zip.OpenReader(spec.Archive)
	if err != nil {
		return jobs.Result{}, fmt.Errorf("open project archive: %w", err)
	}
	defer zr.Close()
	entries, err := planTar(&zr.Reader)
	if err != nil {
		return jobs.Result{}, fmt.Errorf("project archive: %w", err)
	}

	// Until the container has started, a detach (ci-server shutting down)
	// does not interrupt: a job is either not begun at all or running in
	// its container, never half-way, so the next server can re-attach to
	// it. Only a cancel or a timeout stops these steps. They take well
	// under a second, unless the image must be pulled.
	prep, stopPrep := context.WithCancelCause(context.WithoutCancel(ctx))
	defer stopPrep(nil)
	stopAfter := context.AfterFunc(ctx, func() {
		if !detached(ctx) {
			stopPrep(context.Cause(ctx))
		}
	})
	defer stopAfter()

	imageID, err := d.ensureImage(prep, log)
	if err != nil {
		return jobs.Result{}, ctxErr(prep, err)
	}

	// The dependency phase, when the project has requirements. Unlike the
	// steps around it, a detach interrupts it (it may take minutes): the
	// job then runs again from the start under the next server.
	image, deps, key := d.image, "", ""
	if req := findRequirements(entries); req != nil {
		if err := out.Phase(jobs.PhaseInstall); err != nil {
			return jobs.Result{}, err
		}
		var release func()
		if key, release, err = d.dependencies(ctx, spec, imageID, entries, req, out, log); err != nil {
			return jobs.Result{}, ctxErr(ctx, err)
		}
		// Once the container mounts the volume, the engine keeps it.
		defer release()
		if err := out.Phase(jobs.PhaseTest); err != nil {
			return jobs.Result{}, err
		}
		// The very image the venv was made for, even if the tag has
		// moved since.
		image, deps = imageID, depsVolume(key)
	}

	// A warm container, when there is one (not for dependencies: their
	// volume is mounted at the create).
	if d.pool != nil && deps == "" {
		if w := d.pool.take(); w != nil {
			res, ok, err := d.runWarm(ctx, prep, spec, w, imageID, entries, out, log)
			if ok {
				if err != nil {
					return jobs.Result{}, ctxErr(ctx, err)
				}
				return res, nil
			}
		}
	}

	// Create on a context that is not canceled with ctx: a create that
	// succeeds in the engine after its request was abandoned would leave a
	// container whose ID we never learnt.
	cfg, host := containerConfig(spec, image, d.limits, deps)
	createCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), removeTimeout)
	created, err := d.cli.ContainerCreate(createCtx, cfg, host, nil, nil, "")
	cancel()
	if err != nil {
		return jobs.Result{}, ctxErr(ctx, fmt.Errorf("create container: %w", err))
	}
	log = log.With("container", shortID(created.ID))
	if deps != "" {
		// Creating a container that mounts a missing named volume
		// creates it, empty: had another process (a deps prune) removed
		// the venv just before, the tests would run without it.
		if err := d.checkDepsVolume(prep, deps, key); err != nil {
			d.remove(ctx, created.ID, log)
			return jobs.Result{}, ctxErr(ctx, err)
		}
	}
	keep := false
	defer func() {
		if keep {
			log.Info("detached: container left for Reattach", "cause", context.Cause(ctx))
			return
		}
		d.remove(ctx, created.ID, log)
	}()
	log.Debug("container created", "image", d.image)
	d.step("created", created.ID)

	res, started, err := d.run(ctx, prep, created.ID, entries, out, log)
	if err != nil {
		keep = started && detached(ctx)
		return jobs.Result{}, ctxErr(ctx, err)
	}
	return res, nil
}

// detached reports whether ctx ended with the cause jobs.ErrDetach: the
// service stops following the job but the tests go on.
func detached(ctx context.Context) bool {
	return ctx.Err() != nil && errors.Is(context.Cause(ctx), jobs.ErrDetach)
}

// exitKilled is the exit code of a container whose main process died of
// SIGKILL (128+9), as the OOM killer's victims do.
const exitKilled = 137

// run copies the project into the created container id, runs it and
// follows it to its end. started reports whether the container was
// started.
func (d *Docker) run(ctx, prep context.Context, id string, entries []tarEntry, out jobs.Output, log *slog.Logger) (res jobs.Result, started bool, err error) {
	uid, gid, err := parseUser(d.limits.User)
	if err != nil {
		return jobs.Result{}, false, err
	}
	// The copy and the attach do not depend on each other: both at once,
	// a few milliseconds off every job's start.
	copied := make(chan error, 1)
	go func() {
		// Root owns the project; the test user owns ReportDir.
		copied <- d.copyProject(prep, id, withReportDir(entries, uid, gid), 0, 0)
	}()
	// Attach before start, so no output is missed and partial lines arrive
	// as they are written (the logs endpoint waits for the newline).
	hj, aerr := d.cli.ContainerAttach(prep, id, container.AttachOptions{Stream: true, Stdout: true, Stderr: true})
	if aerr == nil {
		defer hj.Close()
	}
	if err := <-copied; err != nil {
		return jobs.Result{}, false, err
	}
	if aerr != nil {
		return jobs.Result{}, false, fmt.Errorf("attach to container: %w", aerr)
	}
	log.Debug("project copied")
	d.step("copied", id)

	// Register the wait before start, so the exit cannot be missed.
	// Canceling waitCtx (on return) ends the wait in every case.
	waitCtx, cancelWait := context.WithCancel(prep)
	defer cancelWait()
	waited := d.wait(waitCtx, id, container.WaitConditionNextExit)

	if prep.Err() != nil {
		return jobs.Result{}, false, ctxError(prep)
	}
	// Not interrupted by ctx: whether the container runs is then known
	// for sure (a detach leaves it only if it runs).
	start := time.Now()
	startCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), removeTimeout)
	err = d.cli.ContainerStart(startCtx, id, container.StartOptions{})
	cancel()
	if err != nil {
		return jobs.Result{}, false, fmt.Errorf("start container: %w", err)
	}
	d.metrics.ContainerStarted(ContainerTest, time.Since(start))
	log.Debug("container started")
	d.step("started", id)

	res, err = d.follow(ctx, id, hj, waited, entries, out, log, start)
	return res, true, err
}

// follow streams the output of the started container id from its attach
// hj to out until it ends, waits for its exit (waited) and returns how it
// ended, with pytest's report.
func (d *Docker) follow(ctx context.Context, id string, hj types.HijackedResponse, waited <-chan waitResult,
	entries []tarEntry, out jobs.Output, log *slog.Logger, start time.Time) (jobs.Result, error) {
	stdout := &streamWriter{out: out, stream: jobs.StreamStdout, text: &logText{}}
	stderr := &streamWriter{out: out, stream: jobs.StreamStderr, text: &logText{}}
	if err := d.copyOutput(ctx, id, hj.Reader, hj.Close, stdout, stderr, log); err != nil {
		return jobs.Result{}, err
	}
	// The output has ended: the container has exited or is about to.
	if err := waitExit(ctx, waited); err != nil {
		return jobs.Result{}, err
	}
	res, err := d.result(ctx, id, out, log)
	if err != nil {
		return jobs.Result{}, err
	}
	res.Report = d.report(ctx, id, projectFiles(entries), log)
	log.Info("container exited", "exit_code", res.ExitCode, "oom_killed", res.OOMKilled,
		"duration", time.Since(start).Round(time.Millisecond))
	return res, nil
}

// waitResult is the outcome of a ContainerWait.
type waitResult struct {
	resp container.WaitResponse
	err  error
}

// wait registers a ContainerWait for cond and returns where its outcome
// will be sent. It is abandoned when ctx is done: cancel ctx once the
// outcome is no longer needed.
func (d *Docker) wait(ctx context.Context, id string, cond container.WaitCondition) <-chan waitResult {
	waited := make(chan waitResult, 1)
	waitC, waitErrC := d.cli.ContainerWait(ctx, id, cond)
	go func() {
		select {
		case resp := <-waitC:
			waited <- waitResult{resp: resp}
		case err := <-waitErrC:
			waited <- waitResult{err: err}
		}
	}()
	return waited
}

// copyOutput copies the multiplexed output stream r of the started
// container id to stdout and stderr until it ends; at its end it flushes
// them (see logText).
//
// When ctx is done: with jobs.ErrDetach, copyOutput closes the stream
// (closeStream) and returns without touching the container; otherwise it
// stops the container gracefully, still copying its output meanwhile. It
// then returns ctxError(ctx). No out.Write happens after it returns.
func (d *Docker) copyOutput(ctx context.Context, id string, r io.Reader, closeStream func(),
	stdout, stderr *streamWriter, log *slog.Logger) error {
	var detaching atomic.Bool
	copied := make(chan error, 1)
	go func() {
		_, err := stdcopy.StdCopy(stdout, stderr, r)
		if err == nil && !detaching.Load() {
			// The end of the output: hand out a rune held back at the
			// end of either stream, as the log's last message has it.
			err = stdout.flush()
			if err == nil {
				err = stderr.flush()
			}
		}
		copied <- err
	}()
	select {
	case err := <-copied:
		return outputError(err)
	case <-ctx.Done():
		if detached(ctx) {
			// What was not handed out yet is in the log, for Reattach.
			detaching.Store(true)
			closeStream()
			<-copied
			return ctxError(ctx)
		}
		d.stop(ctx, id, closeStream, copied, log)
		return ctxError(ctx)
	}
}

// outputError returns the error of copying a container's output: the
// error of jobs.Output as it is, any other as one reading the output.
func outputError(err error) error {
	if err == nil {
		return nil
	}
	var werr *writeError
	if errors.As(err, &werr) {
		return werr.err
	}
	return fmt.Errorf("read container output: %w", err)
}

// waitExit waits for the outcome of the container's wait.
func waitExit(ctx context.Context, waited <-chan waitResult) error {
	var w waitResult
	select {
	case w = <-waited:
	case <-ctx.Done():
		return ctxError(ctx)
	}
	if w.err != nil {
		return fmt.Errorf("wait for container: %w", w.err)
	}
	if w.resp.Error != nil && w.resp.Error.Message != "" {
		return fmt.Errorf("wait for container: %s", w.resp.Error.Message)
	}
	return nil
}

// result returns how the exited container id ended, from its state: the
// exit code, and whether pytest was killed for going over the memory limit.
// If another process was, it writes a note saying so to out's stderr.
func (d *Docker) result(ctx context.Context, id string, out jobs.Output, log *slog.Logger) (jobs.Result, error) {
	info, err := d.cli.ContainerInspect(ctx, id)
	if err != nil {
		return jobs.Result{}, fmt.Errorf("inspect container: %w", err)
	}
	if info.ContainerJSONBase == nil || info.State == nil {
		return jobs.Result{}, errors.New("inspect container: no state")
	}
	// The limit the container has: a Reattach may follow a container
	// created with an earlier configuration.
	limit := d.limits.Memory
	if info.HostConfig != nil && info.HostConfig.Memory > 0 {
		limit = info.HostConfig.Memory
	}
	res := jobs.Result{ExitCode: info.State.ExitCode, MemoryLimit: limit}
	if res.ExitCode == exitNoPytest {
		if _, err := d.readFile(ctx, id, NoPytestFile, 0); err == nil {
			return jobs.Result{}, d.noPytest(info.HostConfig)
		}
	}
	oom := info.State.OOMKilled
	switch {
	case oom && res.ExitCode == exitKilled:
		// The engine notes any OOM kill in the container; pytest itself
		// was the one killed only if it died of SIGKILL.
		res.OOMKilled = true
	case oom:
		// Another process (a test's subprocess) was killed and pytest ran
		// on to its end: its exit code stands, and this says why a test
		// may have failed.
		note := fmt.Sprintf("\nci: a process of the tests was killed for going over the memory limit of %s\n",
			formatBytes(limit))
		if err := out.Write(jobs.StreamStderr, []byte(note)); err != nil {
			return jobs.Result{}, fmt.Errorf("write %s: %w", jobs.StreamStderr, err)
		}
	}
	if oom {
		log.Info("OOM kill in the container", "pytest_killed", res.OOMKilled)
	}
	return res, nil
}

// noPytest returns the error of a test container (of host) in which pytest
// could not be imported.
func (d *Docker) noPytest(host *container.HostConfig) error {
	why := "the project has no " + RequirementsFile + " to install it"
	if host != nil {
		for _, m := range host.Mounts {
			if m.Target == DepsDir {
				why = "its " + RequirementsFile + " does not install it"
			}
		}
	}
	return fmt.Errorf("pytest cannot be imported: the image %q does not have it and %s; "+
		"add pytest to %s (or run ci-server with an --image that has pytest)", d.image, why, RequirementsFile)
}

// The bounds of a graceful stop, on top of the grace itself.
const (
	// stopMargin is how long the engine gets, after the grace, to kill
	// the container and report it stopped.
	stopMargin = 3 * time.Second
	// drainTimeout is how long the rest of the output gets to arrive once
	// the container has stopped.
	drainTimeout = time.Second
)

// step calls the test hook, if any.
func (d *Docker) step(step, id string) {
	if d.hook != nil {
		d.hook(step, id)
	}
}

// stop stops the running container id once ctx is done: the engine sends
// SIGTERM, then SIGKILL after the grace. Meanwhile the output goes on being
// copied to out; stop returns once the copy has ended, within StopGrace +
// stopMargin + drainTimeout (closing the stream if it has not ended by
// then). If the engine does not stop the container in time, the removal
// that follows kills it.
func (d *Docker) stop(ctx context.Context, id string, closeStream func(), copied <-chan error, log *slog.Logger) {
	start := time.Now()
	log.Info("stopping container", "cause", context.Cause(ctx), "grace", d.limits.StopGrace)
	grace := int(d.limits.StopGrace / time.Second)
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), d.limits.StopGrace+stopMargin)
	defer cancel()
	err := d.cli.ContainerStop(sctx, id, container.StopOptions{Timeout: &grace})
	if err != nil && !cerrdefs.IsNotFound(err) {
		log.Warn("stop container", "err", err)
	}
	// Once the container has stopped, the output stream ends: the copy
	// returns when it has handed out the last of the output.
	t := time.NewTimer(drainTimeout)
	defer t.Stop()
	select {
	case <-copied:
	case <-t.C:
		log.Warn("container output did not end after stop")
		closeStream()
		<-copied
	}
	log.Info("container stopped", "took", time.Since(start).Round(time.Millisecond))
}

// errCopyAborted stops the tar writer when the engine stopped reading.
var errCopyAborted = errors.New("copy aborted")

// copyProject streams the project into the container's /workspace as a tar
// made on the fly from the zip, owned by uid:gid.
func (d *Docker) copyProject(ctx context.Context, id string, entries []tarEntry, uid, gid int) error {
	pr, pw := io.Pipe()
	written := make(chan error, 1)
	go func() {
		err := writeTarAs(pw, entries, uid, gid)
		pw.CloseWithError(err)
		written <- err
	}()
	err := d.cli.CopyToContainer(ctx, id, Workspace, pr, container.CopyToContainerOptions{})
	pr.CloseWithError(errCopyAborted)
	if werr := <-written; werr != nil && !errors.Is(werr, errCopyAborted) {
		return fmt.Errorf("project archive: %w", werr)
	}
	if err != nil {
		return fmt.Errorf("copy project into container: %w", err)
	}
	return nil
}

// ensureImage makes sure d.image is present in the engine, pulling it if
// it is missing, and returns its ID.
func (d *Docker) ensureImage(ctx context.Context, log *slog.Logger) (string, error) {
	info, err := d.cli.ImageInspect(ctx, d.image)
	if err == nil {
		return info.ID, nil
	}
	if !cerrdefs.IsNotFound(err) {
		return "", fmt.Errorf("inspect image %q: %w", d.image, err)
	}
	log.Info("pulling image", "image", d.image)
	if err := d.pull(ctx); err != nil {
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		return "", fmt.Errorf("image %q is not available and could not be pulled (%v); "+
			"build a local one with scripts/build-image and start ci-server with --image ci-python:latest",
			d.image, err)
	}
	log.Info("pulled image", "image", d.image)
	info, err = d.cli.ImageInspect(ctx, d.image)
	if err != nil {
		return "", fmt.Errorf("inspect image %q: %w", d.image, err)
	}
	return info.ID, nil
}

// pull pulls d.image, reading the progress stream to its end; errors are
// reported inside the stream as well as by the request.
func (d *Docker) pull(ctx context.Context) error {
	rc, err := d.cli.ImagePull(ctx, d.image, image.PullOptions{})
	if err != nil {
		return err
	}
	defer rc.Close()
	return readPullStream(rc)
}

// readPullStream reads a pull's progress messages to the end and returns
// the first error one of them reports.
func readPullStream(r io.Reader) error {
	dec := json.NewDecoder(r)
	for {
		var msg struct {
			Error       string `json:"error"`
			ErrorDetail *struct {
				Message string `json:"message"`
			} `json:"errorDetail"`
		}
		if err := dec.Decode(&msg); err == io.EOF {
			return nil
		} else if err != nil {
			return fmt.Errorf("read pull progress: %w", err)
		}
		if msg.ErrorDetail != nil && msg.ErrorDetail.Message != "" {
			return errors.New(msg.ErrorDetail.Message)
		}
		if msg.Error != "" {
			return errors.New(msg.Error)
		}
	}
}

// remove force-removes container id (killing it if it runs) with its
// anonymous volumes, on a fresh context: ctx may be canceled already.
func (d *Docker) remove(ctx context.Context, id string, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), removeTimeout)
	defer cancel()
	err := d.cli.ContainerRemove(ctx, id, container.RemoveOptions{Force: true, RemoveVolumes: true})
	if err != nil && !cerrdefs.IsNotFound(err) {
		log.Error("remove container", "err", err)
		return
	}
	log.Debug("container removed")
}

// streamWriter hands what it is given to one stream of a jobs.Output.
// With text set, it hands out what text makes of it.
type streamWriter struct {
	out    jobs.Output
	stream string
	text   *logText
	// n counts the bytes handed to out.
	n int64
}

// skipWriter drops the first skip bytes written to it and passes the rest
// on to w.
type skipWriter struct {
	w    io.Writer
	skip int64
}

func (s *skipWriter) Write(p []byte) (int, error) {
	if s.skip >= int64(len(p)) {
		s.skip -= int64(len(p))
		return len(p), nil
	}
	q := p[s.skip:]
	s.skip = 0
	if _, err := s.w.Write(q); err != nil {
		return 0, err
	}
	return len(p), nil
}

// writeError marks an error returned by jobs.Output, to tell it from an
// error reading the container's output.
type writeError struct{ err error }

func (e *writeError) Error() string { return e.err.Error() }

func (w *streamWriter) Write(p []byte) (int, error) {
	b := p
	if w.text != nil {
		b = w.text.Next(p)
	}
	if err := w.write(b); err != nil {
		return 0, err
	}
	return len(p), nil
}

// flush hands out what text holds back, at the end of the stream.
func (w *streamWriter) flush() error {
	if w.text == nil {
		return nil
	}
	return w.write(w.text.Flush())
}

func (w *streamWriter) write(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	if err := w.out.Write(w.stream, b); err != nil {
		return &writeError{err: fmt.Errorf("write %s: %w", w.stream, err)}
	}
	w.n += int64(len(b))
	return nil
}

// ctxErr returns ctxError(ctx) if ctx is done, so a canceled run reports
// the cancellation rather than whichever call it broke; otherwise err.
func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctxError(ctx)
	}
	return err
}

// ctxError returns the error of a run ended by ctx: ctx.Err()
// (context.Canceled or context.DeadlineExceeded), also wrapping
// context.Cause(ctx) when that is another error, so that errors.Is matches
// either.
func ctxError(ctx context.Context) error {
	err := ctx.Err()
	if cause := context.Cause(ctx); cause != nil && cause != err {
		return fmt.Errorf("%w: %w", err, cause)
	}
	return err
}

// formatBytes formats n bytes for a human, in the largest binary unit that
// divides it, e.g. "2 GiB", "64 MiB", "1000 bytes".
func formatBytes(n int64) string {
	for _, u := range []struct {
		size int64
		name string
	}{{1 << 30, "GiB"}, {1 << 20, "MiB"}, {1 << 10, "KiB"}} {
		if n >= u.size && n%u.size == 0 {
			return fmt.Sprintf("%d %s", n/u.size, u.name)
		}
	}
	return fmt.Sprintf("%d bytes", n)
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
