package executor

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"

	"ci/jobs"
)

// Warm containers: test containers created and started ahead of any job,
// waiting for one, so that a job's start costs a rename, a copy and a
// write instead of a create and a start (about 175 ms here, a third of a
// small job).
const (
	// LabelPool marks a warm container with its server's owner name (see
	// DockerConfig.PoolOwner); it stays once a job has claimed it: labels
	// cannot change.
	LabelPool = "ci.pool"
	// poolNamePrefix names a warm container no job has claimed yet;
	// claiming renames it to jobContainerName.
	poolNamePrefix = "ci-pool-"
	jobNamePrefix  = "ci-job-"
	// StartedFile is written by a warm container's launcher once it has
	// its job's arguments: Reattach tells from it whether a claimed
	// container's tests ever started.
	StartedFile = ReportDir + "/.ci-started"
	// poolRetry is how long the filler waits after a failure (no image,
	// no engine) before it tries again, unless a claim wakes it.
	poolRetry = 10 * time.Second
)

// jobContainerName is the name of a job's claimed warm container, by
// which Reattach finds it: it has no ci.job label.
func jobContainerName(jobID string) string { return jobNamePrefix + jobID }

// poolLauncher is the program of a warm container: it waits for one line
// on stdin, the JSON array of pytest's arguments, forgets what Python
// cached about the directories of the project (copied in meanwhile),
// notes that it has started (StartedFile), and goes on as
// pytestLauncher.
var poolLauncher = `import importlib, json, sys
sys.argv[1:] = json.loads(sys.stdin.readline())
# The project arrived after python started: forget what the import
# system cached about its directories (src/ did not exist yet).
sys.path_importer_cache.clear()
importlib.invalidate_caches()
try:
    open("` + StartedFile + `", "w").close()
except OSError:
    pass
` + pytestLauncher

// poolConfig returns the configuration of a warm container: a test
// container (containerConfig) whose arguments come on stdin.
func poolConfig(image, owner string, lim Limits) (*container.Config, *container.HostConfig) {
	cfg, host := containerConfig(jobs.Spec{}, image, lim, "")
	cfg.Cmd = []string{"python", "-c", poolLauncher}
	cfg.Labels = map[string]string{LabelPool: owner}
	// One attach writes the arguments and closes stdin: the tests then
	// read an empty stdin, as in a cold container.
	cfg.OpenStdin, cfg.StdinOnce, cfg.AttachStdin = true, true, true
	return cfg, host
}

// warm is a started container waiting for a job, attached and waited
// for since before its start, so that none of its output or its exit is
// missed.
type warm struct {
	id         string
	image      string // the image's ID when it was created
	hj         types.HijackedResponse
	waited     <-chan waitResult
	cancelWait context.CancelFunc
}

// pool keeps up to size warm containers of the executor's image.
type pool struct {
	size  int
	ready chan *warm    // only the filler adds, so it never holds more than size
	kick  chan struct{} // capacity 1: a claim happened
	stop  context.CancelFunc
	done  chan struct{}
}

// StartPool removes warm containers an earlier server left unclaimed and
// starts keeping DockerConfig.Warm containers ready, until Close. It does
// nothing when Warm is 0.
func (d *Docker) StartPool(ctx context.Context) {
	if d.warmSize <= 0 || d.pool != nil {
		return
	}
	d.removeWarm(ctx, d.log)
	pctx, stop := context.WithCancel(context.Background())
	d.pool = &pool{
		size:  d.warmSize,
		ready: make(chan *warm, d.warmSize),
		kick:  make(chan struct{}, 1),
		stop:  stop,
		done:  make(chan struct{}),
	}
	go d.fill(pctx, d.pool)
}

// removeWarm removes the unclaimed warm containers of this server (its
// owner name) on this engine.
func (d *Docker) removeWarm(ctx context.Context, log *slog.Logger) {
	list, err := d.cli.ContainerList(ctx, container.ListOptions{All: true,
		Filters: filters.NewArgs(filters.Arg("label", LabelPool+"="+d.poolOwner))})
	if err != nil {
		log.Warn("list warm containers", "err", err)
		return
	}
	for _, c := range list {
		if len(c.Names) == 1 && strings.HasPrefix(c.Names[0], "/"+poolNamePrefix) {
			d.remove(ctx, c.ID, log.With("container", shortID(c.ID)))
		}
	}
}

// fill keeps p full until ctx ends, then removes what p holds.
func (d *Docker) fill(ctx context.Context, p *pool) {
	defer close(p.done)
	log := d.log.With("pool", true)
	for {
		wait := time.Duration(0)
		for len(p.ready) < p.size && ctx.Err() == nil {
			w, err := d.newWarm(ctx, log)
			if err != nil {
				if ctx.Err() == nil {
					log.Warn("warm container", "err", err, "retry_in", poolRetry)
				}
				wait = poolRetry
				break
			}
			p.ready <- w
		}
		var retry <-chan time.Time
		if wait > 0 {
			retry = time.After(wait)
		}
		select {
		case <-ctx.Done():
			for {
				select {
				case w := <-p.ready:
					w.close()
					d.remove(ctx, w.id, log.With("container", shortID(w.id)))
				default:
					return
				}
			}
		case <-p.kick:
		case <-retry:
		}
	}
}

// newWarm creates, attaches to and starts a warm container.
func (d *Docker) newWarm(ctx context.Context, log *slog.Logger) (*warm, error) {
	imageID, err := d.ensureImage(ctx, log)
	if err != nil {
		return nil, err
	}
	var b [6]byte
	rand.Read(b[:])
	cfg, host := poolConfig(d.image, d.poolOwner, d.limits)
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), removeTimeout)
	defer cancel()
	created, err := d.cli.ContainerCreate(cctx, cfg, host, nil, nil, poolNamePrefix+hex.EncodeToString(b[:]))
	if err != nil {
		return nil, fmt.Errorf("create: %w", err)
	}
	w := &warm{id: created.ID, image: imageID}
	ok := false
	defer func() {
		if !ok {
			w.close()
			d.remove(ctx, created.ID, log)
		}
	}()
	if w.hj, err = d.cli.ContainerAttach(cctx, w.id, container.AttachOptions{Stream: true, Stdin: true, Stdout: true, Stderr: true}); err != nil {
		return nil, fmt.Errorf("attach: %w", err)
	}
	var waitCtx context.Context
	waitCtx, w.cancelWait = context.WithCancel(context.Background())
	w.waited = d.wait(waitCtx, w.id, container.WaitConditionNextExit)
	if err := d.cli.ContainerStart(cctx, w.id, container.StartOptions{}); err != nil {
		return nil, fmt.Errorf("start: %w", err)
	}
	ok = true
	return w, nil
}

// close releases w's attach and wait.
func (w *warm) close() {
	if w.hj.Conn != nil {
		w.hj.Close()
	}
	if w.cancelWait != nil {
		w.cancelWait()
	}
}

// take returns a warm container that is still waiting, or nil; a taken
// container is the caller's, and the filler replaces it.
func (p *pool) take() *warm {
	for {
		select {
		case w := <-p.ready:
			select {
			case p.kick <- struct{}{}:
			default:
			}
			select {
			case <-w.waited: // it exited while it waited: no use
				w.close()
				continue
			default:
				return w
			}
		default:
			return nil
		}
	}
}

// runWarm runs spec's tests in the warm container w: it renames w to the
// job (Reattach finds it by that name), copies the project in and writes
// the arguments, then follows it like run. ok is false when w turned out
// unusable before anything of the job reached it: w is then removed and
// the caller starts a cold container instead.
func (d *Docker) runWarm(ctx, prep context.Context, spec jobs.Spec, w *warm, imageID string, entries []tarEntry,
	out jobs.Output, log *slog.Logger) (res jobs.Result, ok bool, err error) {
	log = log.With("container", shortID(w.id), "warm", true)
	started := false
	defer func() {
		w.close()
		if started && err != nil && detached(ctx) {
			log.Info("detached: container left for Reattach", "cause", context.Cause(ctx))
			return
		}
		d.remove(ctx, w.id, log)
	}()
	if w.image != imageID {
		// The tag now names another image (rebuilt or pulled since):
		// jobs run in the image the tag names.
		log.Info("warm container of an older image; starting a cold one")
		return jobs.Result{}, false, nil
	}
	if err := d.cli.ContainerRename(prep, w.id, jobContainerName(spec.JobID)); err != nil {
		if prep.Err() != nil {
			return jobs.Result{}, true, ctxError(prep)
		}
		log.Warn("warm container unusable; starting a cold one", "err", err)
		return jobs.Result{}, false, nil
	}
	d.step("created", w.id)
	uid, gid, err := parseUser(d.limits.User)
	if err != nil {
		return jobs.Result{}, true, err
	}
	if err := d.copyProject(prep, w.id, withReportDir(entries, uid, gid), 0, 0); err != nil {
		if prep.Err() != nil {
			return jobs.Result{}, true, ctxError(prep)
		}
		log.Warn("warm container unusable; starting a cold one", "err", err)
		return jobs.Result{}, false, nil
	}
	d.step("copied", w.id)
	if prep.Err() != nil {
		return jobs.Result{}, true, ctxError(prep)
	}
	args, err := json.Marshal(pytestCommand("", spec.Args)[3:])
	if err != nil {
		return jobs.Result{}, true, err
	}
	start := time.Now()
	if _, err := w.hj.Conn.Write(append(args, '\n')); err != nil {
		log.Warn("warm container unusable; starting a cold one", "err", err)
		return jobs.Result{}, false, nil
	}
	started = true
	if err := w.hj.CloseWrite(); err != nil {
		return jobs.Result{}, true, fmt.Errorf("close the container's stdin: %w", err)
	}
	log.Debug("warm container claimed")
	d.step("started", w.id)
	res, err = d.follow(ctx, w.id, w.hj, w.waited, entries, out, log, start)
	return res, true, err
}

// stopPool stops the filler and removes the unclaimed warm containers.
func (d *Docker) stopPool() {
	if d.pool == nil {
		return
	}
	d.pool.stop()
	<-d.pool.done
}

// poolOwner returns owner, or a random name if it is empty.
func poolOwner(owner string) string {
	if owner != "" {
		return owner
	}
	var b [8]byte
	rand.Read(b[:])
	return "anon-" + hex.EncodeToString(b[:])
}
