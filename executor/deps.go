package executor

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/mount"
	"github.com/docker/docker/api/types/strslice"
	"github.com/docker/docker/api/types/volume"

	"ci/jobs"
)

// The dependency phase: where the venv lives and how its volumes and
// containers are labelled.
const (
	// DepsDir is where a dependency volume is mounted: read-write in the
	// install container, read-only in the test container.
	DepsDir = "/ci-deps"
	// Venv is the venv in a dependency volume, made with
	// --system-site-packages so that what the image has counts.
	Venv = DepsDir + "/venv"
	// VenvBin and VenvPython are its scripts' directory and its python.
	VenvBin    = Venv + "/bin"
	VenvPython = VenvBin + "/python"
	// LabelInstall is the label of an install container: the job ID. It
	// differs from LabelJob, so Reattach never mistakes one for the
	// job's test container.
	LabelInstall = "ci.install"
	// LabelDeps is the cache key, on dependency volumes and install
	// containers.
	LabelDeps = "ci.deps"
	// LabelDepsRole says which of an entry's two volumes one is:
	// RoleVenv or RoleReady.
	LabelDepsRole = "ci.deps.role"
	// LabelDepsSize is the venv's size in bytes, on the ready volume.
	LabelDepsSize = "ci.deps.size"
	// LabelDepsImage is the image ID the venv was made for.
	LabelDepsImage = "ci.deps.image"
	// LabelDepsJob is the job whose install made the entry.
	LabelDepsJob = "ci.deps.job"
	// RoleVenv marks the volume that holds the venv.
	RoleVenv = "venv"
	// RoleReady marks an empty volume created only once the install into
	// the venv volume has succeeded: an entry is complete, and used, only
	// when it exists. A crash mid-install leaves no ready volume, so no
	// job ever sees a half-built venv.
	RoleReady = "ready"
	// DefaultInstallNetwork is the network of install containers when
	// DepsConfig.Network is empty: the engine's default bridge.
	DefaultInstallNetwork = "bridge"
	// defaultPath is the PATH of a Debian-based Python image.
	defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	// sizeFile is where the install script leaves the venv's size in KiB
	// (du -sk), read back before the install container is removed.
	sizeFile = DepsDir + "/size"
)

// DepsConfig configures the dependency phase and its cache.
type DepsConfig struct {
	// Network is the network install containers run in (the tests never
	// have one): a network name of the engine, "none" for offline setups
	// where requirements name only local files. Empty means
	// DefaultInstallNetwork.
	Network string
	// MaxEntries is the most dependency sets kept; past it, the least
	// recently used ones not in use are removed. 0 means no limit.
	MaxEntries int
	// MaxBytes is the most bytes the kept venvs may take together, the
	// same way. 0 means no limit.
	MaxBytes int64
	// StateFile keeps when each entry was last used, across restarts; ""
	// keeps it in memory only (an entry then counts as last used when it
	// was installed).
	StateFile string
}

// depsVolume returns the name of the volume that holds the venv of key.
func depsVolume(key string) string { return "ci-deps-" + key[:32] }

// readyVolume returns the name of the volume that marks key's venv
// complete.
func readyVolume(key string) string { return depsVolume(key) + "-ready" }

// shortKey is how a key is shown to users.
func shortKey(key string) string { return key[:12] }

// depsCache holds the state of the dependency cache that is not in the
// engine: which installs are in flight (one per key at a time) and when
// each entry was last used.
type depsCache struct {
	cfg DepsConfig

	mu      sync.Mutex
	flights map[string]*depsFlight // by key
	held    map[string]int         // keys jobs need, by number of jobs
	used    *usage
	// volMu makes an install's (re)creation of its venv volume and of the
	// container that mounts it one step for removeEntry: a volume is
	// never removed between the two.
	volMu sync.Mutex
}

// depsFlight is an install in progress.
type depsFlight struct {
	job  string        // the job installing
	done chan struct{} // closed when it has ended, successfully or not
}

func newDepsCache(cfg DepsConfig) *depsCache {
	return &depsCache{cfg: cfg, flights: map[string]*depsFlight{}, held: map[string]int{}, used: newUsage(cfg.StateFile)}
}

// join makes job the installer of key if no install of key is in flight
// (leader true), or returns the one in flight.
func (c *depsCache) join(key, job string) (f *depsFlight, leader bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if f := c.flights[key]; f != nil {
		return f, false
	}
	f = &depsFlight{job: job, done: make(chan struct{})}
	c.flights[key] = f
	return f, true
}

// leave ends the flight f of key.
func (c *depsCache) leave(key string, f *depsFlight) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.flights, key)
	close(f.done)
}

// hold marks key as needed by a job of this server until the returned
// release is called (once); removeEntry leaves held keys alone.
func (c *depsCache) hold(key string) (release func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.held[key]++
	var once sync.Once
	return func() {
		once.Do(func() {
			c.mu.Lock()
			defer c.mu.Unlock()
			if c.held[key]--; c.held[key] == 0 {
				delete(c.held, key)
			}
		})
	}
}

// busy reports whether key is being installed or is held by a job.
func (c *depsCache) busy(key string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.flights[key] != nil || c.held[key] > 0
}

// InstallError is the error of a job whose dependencies could not be
// installed: pip (or the venv's creation) failed. Its output is in the
// job's log, under the install phase.
type InstallError struct {
	ExitCode int
}

func (e *InstallError) Error() string {
	return fmt.Sprintf("installing the dependencies of %s failed (exit code %d); pip's messages are in the log, under install",
		RequirementsFile, e.ExitCode)
}

// dependencies runs the install phase of a project with the requirements
// file req, for image imageID: it returns the key of the venv, taken from
// the cache (one line in the log says so) or installed now, in an install
// container whose output goes to out. Jobs that need the same key at the
// same time install once: the others wait for that install and then take
// its venv from the cache (or install themselves if it failed).
//
// The key is held from before the cache is looked at: this server's
// eviction does not remove it until release is called, which the caller
// does once its test container mounts the volume (the engine then refuses
// to remove it) or is not going to.
func (d *Docker) dependencies(ctx context.Context, spec jobs.Spec, imageID string, entries []tarEntry, req *tarEntry,
	out jobs.Output, log *slog.Logger) (key string, release func(), err error) {
	key, err = depsKey(entries, req, imageID)
	if err != nil {
		return "", nil, err
	}
	release = d.deps.hold(key)
	vol, err := d.resolveDeps(ctx, spec, key, imageID, entries, out, log)
	if err != nil {
		release()
		return "", nil, err
	}
	if vol != depsVolume(key) {
		panic("dependency volume is not the key's")
	}
	return key, release, nil
}

// resolveDeps does the work of dependencies for key and returns the venv
// volume.
func (d *Docker) resolveDeps(ctx context.Context, spec jobs.Spec, key, imageID string, entries []tarEntry,
	out jobs.Output, log *slog.Logger) (string, error) {
	log = log.With("deps", shortKey(key))
	say := func(format string, args ...any) error {
		return out.Write(jobs.StreamStdout, fmt.Appendf(nil, format, args...))
	}
	waited := false
	for {
		ready, err := d.depsReady(ctx, key)
		if err != nil {
			return "", ctxErr(ctx, err)
		}
		if ready {
			d.deps.used.touch(key, time.Now())
			log.Debug("dependencies cached")
			d.metrics.DepsResolved(DepsCached)
			return depsVolume(key), say("dependencies: cached (key %s…)\n", shortKey(key))
		}
		f, leader := d.deps.join(key, spec.JobID)
		if !leader {
			if !waited {
				if err := say("dependencies: job %s is installing the same requirements (key %s…); waiting for it\n",
					f.job, shortKey(key)); err != nil {
					return "", err
				}
				waited = true
			}
			select {
			case <-f.done:
				continue
			case <-ctx.Done():
				return "", ctxError(ctx)
			}
		}
		// The leader checks again: an install may have ended between the
		// first check and the join.
		ready, err = d.depsReady(ctx, key)
		if err == nil && !ready {
			err = d.install(ctx, spec, key, imageID, entries, out, log)
			if err != nil && ctx.Err() == nil {
				d.metrics.DepsResolved(DepsFailed)
			}
		}
		d.deps.leave(key, f)
		if err != nil {
			return "", ctxErr(ctx, err)
		}
		d.deps.used.touch(key, time.Now())
		if !ready {
			d.evict(ctx, key, log)
		}
		if ready {
			d.metrics.DepsResolved(DepsCached)
			return depsVolume(key), say("dependencies: cached (key %s…)\n", shortKey(key))
		}
		d.metrics.DepsResolved(DepsInstalled)
		return depsVolume(key), nil
	}
}

// depsReady reports whether the cache has a complete entry for key: its
// ready volume and its venv volume both exist.
func (d *Docker) depsReady(ctx context.Context, key string) (bool, error) {
	for _, name := range []string{readyVolume(key), depsVolume(key)} {
		if _, err := d.cli.VolumeInspect(ctx, name); cerrdefs.IsNotFound(err) {
			return false, nil
		} else if err != nil {
			return false, fmt.Errorf("inspect dependency volume %s: %w", name, err)
		}
	}
	return true, nil
}

// installScript makes the venv and installs the requirements into it. The
// venv is made without pip when the image's python has one, which the
// venv then uses (system site packages): making a venv with its own pip
// takes seconds. The last line leaves the venv's size for the cache's
// bookkeeping.
const installScript = `set -e
python3 -m venv --without-pip --system-site-packages ` + Venv + `
if ! ` + VenvPython + ` -m pip --version >/dev/null 2>&1; then
	echo "ci: the image's python has no pip; adding one to the venv (ensurepip)"
	` + VenvPython + ` -m ensurepip --default-pip
fi
echo "$ pip install -r ` + RequirementsFile + `"
` + VenvPython + ` -m pip install -r ` + RequirementsFile + `
du -sk ` + Venv + ` > ` + sizeFile + `
`

// installConfig returns the configuration of the container that installs
// key's dependencies for job into the volume vol, from image (an ID). It is
// the sandbox of the tests (non-root, read-only root, tmpfs /tmp, no
// capabilities, the same limits) except that it has network, the
// project's copy in it is writable (a local package may be built in
// place) and it writes the venv.
func installConfig(job, key, image, vol, network string, lim Limits) (*container.Config, *container.HostConfig) {
	cfg, host := containerConfig(jobs.Spec{JobID: job}, image, lim, "")
	cfg.Cmd = strslice.StrSlice{"sh", "-c", installScript}
	cfg.Labels = map[string]string{LabelInstall: job, LabelDeps: key}
	cfg.Volumes = map[string]struct{}{Workspace: {}}
	cfg.Env = []string{
		"HOME=" + Tmp,
		"PYTHONUNBUFFERED=1",
		// pip's own messages, without its version nag, prompts or
		// progress bars; its cache would only fill the tmpfs.
		"PIP_DISABLE_PIP_VERSION_CHECK=1",
		"PIP_NO_INPUT=1",
		"PIP_PROGRESS_BAR=off",
		"PIP_NO_CACHE_DIR=1",
		"PIP_ROOT_USER_ACTION=ignore",
	}
	host.NetworkMode = container.NetworkMode(network)
	host.Mounts = []mount.Mount{{Type: mount.TypeVolume, Source: vol, Target: DepsDir}}
	return cfg, host
}

// install installs key's dependencies into a fresh venv volume, in an
// install container whose output goes to out, and marks the entry
// complete if it succeeds. What an earlier, interrupted install of key
// left (its container, its incomplete volume) is removed first.
func (d *Docker) install(ctx context.Context, spec jobs.Spec, key, imageID string, entries []tarEntry,
	out jobs.Output, log *slog.Logger) error {
	start := time.Now()
	d.removeInstallContainers(ctx, filters.Arg("label", LabelDeps+"="+key), log)
	id, err := d.createInstall(ctx, spec.JobID, key, imageID)
	if err != nil {
		return err
	}
	clog := log.With("container", shortID(id))
	created := container.CreateResponse{ID: id}
	// Deferred calls run last first: the container goes, then, unless the
	// install succeeded, the venv volume it was filling.
	complete := false
	defer func() {
		if !complete {
			d.removeIncomplete(ctx, key, clog)
		}
	}()
	defer d.remove(ctx, created.ID, clog)
	d.step("install-created", created.ID)

	code, err := d.runInstall(ctx, created.ID, entries, out, clog)
	if err != nil {
		return err
	}
	if code != 0 {
		clog.Info("install failed", "exit_code", code, "took", time.Since(start).Round(time.Millisecond))
		return &InstallError{ExitCode: code}
	}
	size := d.venvSize(ctx, created.ID, clog)
	_, err = d.cli.VolumeCreate(ctx, volume.CreateOptions{Name: readyVolume(key), Labels: map[string]string{
		LabelDeps: key, LabelDepsRole: RoleReady, LabelDepsImage: imageID, LabelDepsJob: spec.JobID,
		LabelDepsSize: strconv.FormatInt(size, 10),
	}})
	if err != nil {
		return fmt.Errorf("mark dependency volume complete: %w", err)
	}
	complete = true
	clog.Info("dependencies installed", "bytes", size, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// removeIncomplete removes the venv volume of key after a failed or
// interrupted install, on a fresh context (ctx may be canceled), so that
// failures leave nothing behind.
func (d *Docker) removeIncomplete(ctx context.Context, key string, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), removeTimeout)
	defer cancel()
	d.deps.volMu.Lock()
	defer d.deps.volMu.Unlock()
	err := d.cli.VolumeRemove(ctx, depsVolume(key), false)
	if err != nil && !cerrdefs.IsNotFound(err) {
		log.Warn("remove incomplete dependency volume", "volume", depsVolume(key), "err", err)
	}
}

// createInstall makes a fresh venv volume for key (removing an
// incomplete one an interrupted install left) and creates the install
// container that mounts it, and returns the container's ID.
func (d *Docker) createInstall(ctx context.Context, job, key, imageID string) (string, error) {
	d.deps.volMu.Lock()
	defer d.deps.volMu.Unlock()
	vol := depsVolume(key)
	if err := d.cli.VolumeRemove(ctx, vol, false); err != nil && !cerrdefs.IsNotFound(err) {
		return "", fmt.Errorf("remove the incomplete dependency volume %s: %w", vol, err)
	}
	_, err := d.cli.VolumeCreate(ctx, volume.CreateOptions{Name: vol, Labels: map[string]string{
		LabelDeps: key, LabelDepsRole: RoleVenv, LabelDepsImage: imageID, LabelDepsJob: job,
	}})
	if err != nil {
		return "", fmt.Errorf("create dependency volume: %w", err)
	}
	// Created on a context ctx does not cancel, like a test container: a
	// create abandoned half-way would leave a container we never learnt
	// of (removeInstallContainers would find it next time, though).
	cfg, host := installConfig(job, key, imageID, vol, d.deps.network(), d.limits)
	createCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), removeTimeout)
	defer cancel()
	created, err := d.cli.ContainerCreate(createCtx, cfg, host, nil, nil, "")
	if err != nil {
		return "", fmt.Errorf("create install container: %w", err)
	}
	return created.ID, nil
}

// runInstall copies the project (owned by the install user) and the venv's
// directory into the created install container id, runs it, streams its
// output to out and returns its exit code. When ctx is done it returns
// ctxError(ctx), a detach included: an install is not worth keeping.
func (d *Docker) runInstall(ctx context.Context, id string, entries []tarEntry, out jobs.Output, log *slog.Logger) (int, error) {
	uid, gid, err := parseUser(d.limits.User)
	if err != nil {
		return 0, err
	}
	if err := d.copyProject(ctx, id, entries, uid, gid); err != nil {
		return 0, fmt.Errorf("install container: %w", err)
	}
	venvDir := func(w *tar.Writer) error {
		return w.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: "venv/", Mode: 0o755, Uid: uid, Gid: gid, ModTime: time.Unix(0, 0)})
	}
	if err := d.copyTar(ctx, id, DepsDir, venvDir); err != nil {
		return 0, fmt.Errorf("copy venv directory into install container: %w", err)
	}
	// The size file is written by the user too: DepsDir itself is root's.
	sizeFile := func(w *tar.Writer) error {
		return w.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "size", Mode: 0o644, Uid: uid, Gid: gid, ModTime: time.Unix(0, 0)})
	}
	if err := d.copyTar(ctx, id, DepsDir, sizeFile); err != nil {
		return 0, fmt.Errorf("copy size file into install container: %w", err)
	}
	hj, err := d.cli.ContainerAttach(ctx, id, container.AttachOptions{Stream: true, Stdout: true, Stderr: true})
	if err != nil {
		return 0, fmt.Errorf("attach to install container: %w", err)
	}
	defer hj.Close()
	waitCtx, cancelWait := context.WithCancel(ctx)
	defer cancelWait()
	waited := d.wait(waitCtx, id, container.WaitConditionNextExit)
	start := time.Now()
	if err := d.cli.ContainerStart(ctx, id, container.StartOptions{}); err != nil {
		return 0, fmt.Errorf("start install container: %w", err)
	}
	d.metrics.ContainerStarted(ContainerInstall, time.Since(start))
	d.step("install-started", id)
	stdout := &streamWriter{out: out, stream: jobs.StreamStdout, text: &logText{}}
	stderr := &streamWriter{out: out, stream: jobs.StreamStderr, text: &logText{}}
	if err := d.copyOutput(ctx, id, hj.Reader, hj.Close, stdout, stderr, log); err != nil {
		return 0, err
	}
	if err := waitExit(ctx, waited); err != nil {
		return 0, err
	}
	info, err := d.cli.ContainerInspect(ctx, id)
	if err != nil {
		return 0, fmt.Errorf("inspect install container: %w", err)
	}
	if info.ContainerJSONBase == nil || info.State == nil {
		return 0, fmt.Errorf("inspect install container: no state")
	}
	if info.State.OOMKilled {
		return 0, fmt.Errorf("installing the dependencies of %s went over the memory limit of %s",
			RequirementsFile, formatBytes(d.limits.Memory))
	}
	return info.State.ExitCode, nil
}

// venvSize returns the size in bytes of the venv the exited install
// container id made, from the size file its script wrote; 0 if unknown.
func (d *Docker) venvSize(ctx context.Context, id string, log *slog.Logger) int64 {
	b, err := d.readFile(ctx, id, sizeFile, 4096)
	if err != nil {
		log.Warn("read venv size", "err", err)
		return 0
	}
	kib, err := strconv.ParseInt(strings.Fields(string(b) + " x")[0], 10, 64)
	if err != nil {
		log.Warn("read venv size", "err", err, "content", string(b))
		return 0
	}
	return kib << 10
}

// removeInstallContainers removes the install containers that match the
// filter, running or not: those an interrupted install left.
func (d *Docker) removeInstallContainers(ctx context.Context, f filters.KeyValuePair, log *slog.Logger) {
	list, err := d.cli.ContainerList(ctx, container.ListOptions{All: true,
		Filters: filters.NewArgs(filters.Arg("label", LabelInstall), f)})
	if err != nil {
		log.Warn("list install containers", "err", err)
		return
	}
	for _, c := range list {
		log.Info("removing a leftover install container", "container", shortID(c.ID), "job", c.Labels[LabelInstall])
		d.remove(ctx, c.ID, log)
	}
}

// network returns the install containers' network.
func (c *depsCache) network() string {
	if c.cfg.Network == "" {
		return DefaultInstallNetwork
	}
	return c.cfg.Network
}

// parseUser returns the uid and gid of a checked "uid:gid".
func parseUser(user string) (uid, gid int, err error) {
	u, g, _ := strings.Cut(user, ":")
	if uid, err = strconv.Atoi(u); err == nil {
		gid, err = strconv.Atoi(g)
	}
	if err != nil {
		return 0, 0, fmt.Errorf("user %q: %w", user, err)
	}
	return uid, gid, nil
}

// copyTar copies into dir of container id the tar stream that write makes.
func (d *Docker) copyTar(ctx context.Context, id, dir string, write func(*tar.Writer) error) error {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := write(tw); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return d.cli.CopyToContainer(ctx, id, dir, &buf, container.CopyToContainerOptions{})
}

// checkDepsVolume checks that the volume vol a created test container
// mounts is key's venv volume, not an empty one the engine created in its
// place because it had been removed meanwhile.
func (d *Docker) checkDepsVolume(ctx context.Context, vol, key string) error {
	v, err := d.cli.VolumeInspect(ctx, vol)
	if err != nil {
		return fmt.Errorf("inspect dependency volume %s: %w", vol, err)
	}
	if v.Labels[LabelDeps] != key {
		return fmt.Errorf("the dependency volume %s was removed while the job started "+
			"(by ci-server deps prune or by hand?); submit the job again", vol)
	}
	return nil
}

// cleanupRetry removes what an earlier, interrupted Run of job left of
// its install phase: its install container and the venv volume it was
// filling, unless that volume's install completed (its ready volume
// exists) or another job of this server is installing or using it now.
// It runs even when ctx is done: the job may be ending at once.
func (d *Docker) cleanupRetry(ctx context.Context, job string, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), removeTimeout)
	defer cancel()
	d.removeInstallContainers(ctx, filters.Arg("label", LabelInstall+"="+job), log)
	vols, err := d.cli.VolumeList(ctx, volume.ListOptions{Filters: filters.NewArgs(
		filters.Arg("label", LabelDepsJob+"="+job), filters.Arg("label", LabelDepsRole+"="+RoleVenv))})
	if err != nil {
		log.Warn("list the dependency volumes of an interrupted install", "err", err)
		return
	}
	for _, v := range vols.Volumes {
		key := v.Labels[LabelDeps]
		if len(key) != 64 || d.deps.busy(key) {
			continue
		}
		if ready, err := d.depsReady(ctx, key); err != nil || ready {
			continue
		}
		log.Info("removing the incomplete venv of an interrupted install", "volume", v.Name)
		d.removeIncomplete(ctx, key, log)
	}
}
