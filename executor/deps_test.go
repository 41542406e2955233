package executor

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/volume"

	"ci/internal/testwheel"
	"ci/jobs"
)

// depsProject returns a project whose requirements.txt names a local wheel
// (distribution ciwheel-<token>, module ciwheel_<token>) and whose test
// imports it: each token makes a new cache key. extra files are added
// (and may replace requirements.txt).
func depsProject(t *testing.T, token string, extra map[string]string) map[string]string {
	t.Helper()
	mod := "ciwheel_" + token
	name, data, err := testwheel.Build("ciwheel-"+token, "1.0", map[string]string{mod + "/__init__.py": "TOKEN = '" + token + "'\n"})
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		"wheels/" + name:   string(data),
		"requirements.txt": "./wheels/" + name + "\n",
		"test_deps.py": fmt.Sprintf(`import os, sys
import %[1]s

def test_installed():
    assert %[1]s.TOKEN == %[2]q
    assert sys.prefix == "/ci-deps/venv", sys.prefix

def test_venv_read_only():
    try:
        open("/ci-deps/venv/x", "w")
    except OSError:
        return
    raise AssertionError("the venv is writable")
`, mod, token),
	}
	for k, v := range extra {
		files[k] = v
	}
	return files
}

// newDepsDocker returns a Docker executor whose installs run offline (the
// wheels are local) and counts the install containers it creates. Cache
// entries made by the test are removed when it ends.
func newDepsDocker(t *testing.T, cfg DockerConfig) (*Docker, *atomic.Int32) {
	t.Helper()
	if cfg.Deps.Network == "" {
		cfg.Deps.Network = "none"
	}
	d := newTestDockerConfig(t, cfg, true)
	var installs atomic.Int32
	d.hook = func(step, id string) {
		if step == "install-created" {
			installs.Add(1)
		}
	}
	t.Cleanup(func() { pruneTestEntries(t, d) })
	return d, &installs
}

// pruneTestEntries removes the cache entries that test jobs (IDs from
// newJobID) made.
func pruneTestEntries(t *testing.T, d *Docker) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	list, err := d.DepsEntries(ctx)
	if err != nil {
		t.Errorf("list deps: %v", err)
		return
	}
	for _, e := range list {
		if strings.HasPrefix(e.Job, "test-") {
			if _, err := d.removeEntry(ctx, e.Key); err != nil {
				t.Errorf("remove deps %s: %v", e.Key, err)
			}
		}
	}
}

// runDeps runs spec to its end and checks that neither its test
// container nor an install container is left.
func runDeps(t *testing.T, d *Docker, spec jobs.Spec) (jobs.Result, *recorder, error) {
	t.Helper()
	rec := &recorder{}
	ctx, cancel := context.WithTimeout(context.Background(), 2*runTimeout)
	defer cancel()
	res, err := d.Run(ctx, spec, rec)
	assertNoContainers(t, d, spec.JobID)
	return res, rec, err
}

// assertNoContainers checks that no test or install container of job is
// left.
func assertNoContainers(t *testing.T, d *Docker, job string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, label := range []string{LabelJob, LabelInstall} {
		list, err := d.cli.ContainerList(ctx, container.ListOptions{All: true,
			Filters: filters.NewArgs(filters.Arg("label", label+"="+job))})
		if err != nil {
			t.Fatalf("list containers: %v", err)
		}
		for _, c := range list {
			t.Errorf("container %s (%s=%s, %s) left behind", shortID(c.ID), label, job, c.State)
		}
	}
}

// keyFor returns the cache key of a project's dependencies in d's image.
func keyFor(t *testing.T, d *Docker, files map[string]string) string {
	t.Helper()
	entries := planFiles(t, files)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	info, err := d.cli.ImageInspect(ctx, d.image)
	if err != nil {
		t.Fatal(err)
	}
	key, err := depsKey(entries, findRequirements(entries), info.ID)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func mustPass(t *testing.T, res jobs.Result, rec *recorder, err error) {
	t.Helper()
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("Run: exit %d, %v\nstdout:\n%s\nstderr:\n%s", res.ExitCode, err,
			rec.text(jobs.StreamStdout), rec.text(jobs.StreamStderr))
	}
}

// TestDockerDepsInstallThenCached is the dependency phase end to end: the
// first run installs the local wheel in an install container, under the
// install phase, and the tests import it from the venv, which they cannot
// write; the second run with the same requirements creates no install
// container and says in one line that the dependencies are cached.
func TestDockerDepsInstallThenCached(t *testing.T) {
	m := &fakeMetrics{}
	d, installs := newDepsDocker(t, DockerConfig{Metrics: m})
	files := depsProject(t, "a"+newJobID(t)[5:], nil)

	res, rec, err := runDeps(t, d, newSpec(t, files))
	mustPass(t, res, rec, err)
	m.check(t, 1, 1, DepsInstalled)
	if got := strings.Join(rec.phases(), ","); got != "install,test" {
		t.Fatalf("phases %q, want install,test", got)
	}
	if out := rec.phaseText(jobs.PhaseInstall, jobs.StreamStdout); !strings.Contains(out, "Successfully installed ciwheel-") {
		t.Fatalf("install output %q: want pip's", out)
	}
	if out := rec.phaseText(jobs.PhaseTest, jobs.StreamStdout); !strings.Contains(out, "2 passed") || strings.Contains(out, "pip") {
		t.Fatalf("test output %q: want pytest's only", out)
	}
	if n := installs.Load(); n != 1 {
		t.Fatalf("%d install containers, want 1", n)
	}
	key := keyFor(t, d, files)
	list, err := d.DepsEntries(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var entry *DepsEntry
	for i := range list {
		if list[i].Key == key {
			entry = &list[i]
		}
	}
	if entry == nil || !entry.Ready || entry.Size <= 0 || entry.InUse != 0 {
		t.Fatalf("cache entry %+v: want ready, with a size, unused", entry)
	}

	res, rec, err = runDeps(t, d, newSpec(t, files))
	mustPass(t, res, rec, err)
	if n := installs.Load(); n != 1 {
		t.Fatalf("%d install containers after the repeat run, want still 1", n)
	}
	m.check(t, 2, 1, DepsInstalled, DepsCached)
	want := "dependencies: cached (key " + key[:12] + "…)\n"
	if out := rec.phaseText(jobs.PhaseInstall, jobs.StreamStdout); out != want {
		t.Fatalf("install output of the repeat run %q, want %q", out, want)
	}
	if got := strings.Join(rec.phases(), ","); got != "install,test" {
		t.Fatalf("phases %q, want install,test", got)
	}

	// Changed requirements install again.
	files["requirements.txt"] += "# a comment changes the key\n"
	res, rec, err = runDeps(t, d, newSpec(t, files))
	mustPass(t, res, rec, err)
	if n := installs.Load(); n != 2 {
		t.Fatalf("%d install containers after changing the requirements, want 2", n)
	}
	m.check(t, 3, 2, DepsInstalled, DepsCached, DepsInstalled)
}

// TestDockerDepsInstallFails checks that an uninstallable requirement
// ends the run with an InstallError, pip's message in the install phase's
// output, and no complete cache entry.
func TestDockerDepsInstallFails(t *testing.T) {
	m := &fakeMetrics{}
	d, _ := newDepsDocker(t, DockerConfig{Metrics: m})
	files := depsProject(t, "f"+newJobID(t)[5:], map[string]string{
		"requirements.txt": "--no-index\nno-such-package-ci-" + newJobID(t)[5:] + "==1.0\n",
	})
	_, rec, err := runDeps(t, d, newSpec(t, files))
	var ierr *InstallError
	if !errors.As(err, &ierr) || ierr.ExitCode == 0 {
		t.Fatalf("Run: %v, want an InstallError", err)
	}
	if out := rec.phaseText(jobs.PhaseInstall, jobs.StreamStderr); !strings.Contains(out, "No matching distribution found") {
		t.Fatalf("install stderr %q: want pip's message", out)
	}
	if got := strings.Join(rec.phases(), ","); got != "install" {
		t.Fatalf("phases %q, want install only", got)
	}
	m.check(t, 0, 1, DepsFailed)
	key := keyFor(t, d, files)
	ready, err := d.depsReady(context.Background(), key)
	if err != nil || ready {
		t.Fatalf("ready=%v (%v) after a failed install, want false", ready, err)
	}
	if _, err := d.cli.VolumeInspect(context.Background(), depsVolume(key)); !cerrdefs.IsNotFound(err) {
		t.Fatalf("venv volume after a failed install: %v, want it removed", err)
	}
}

// TestDockerDepsConcurrentSameKey checks that jobs needing the same new
// key at the same time install once: the others wait and use that venv.
func TestDockerDepsConcurrentSameKey(t *testing.T) {
	d, installs := newDepsDocker(t, DockerConfig{})
	files := depsProject(t, "c"+newJobID(t)[5:], nil)
	const n = 3
	var wg sync.WaitGroup
	recs := make([]*recorder, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, rec, err := runDeps(t, d, newSpec(t, files))
			recs[i] = rec
			if err != nil || res.ExitCode != 0 {
				t.Errorf("job %d: exit %d, %v\n%s%s", i, res.ExitCode, err, rec.text(jobs.StreamStdout), rec.text(jobs.StreamStderr))
			}
		}()
	}
	wg.Wait()
	if got := installs.Load(); got != 1 {
		t.Fatalf("%d install containers for %d concurrent jobs with one key, want 1", got, n)
	}
	installed, waited := 0, 0
	for _, rec := range recs {
		out := rec.phaseText(jobs.PhaseInstall, jobs.StreamStdout)
		if strings.Contains(out, "Successfully installed") {
			installed++
		}
		if strings.Contains(out, "is installing the same requirements") {
			waited++
		}
	}
	if installed != 1 {
		t.Errorf("%d jobs show pip's install, want 1", installed)
	}
	if installed+waited != n {
		t.Logf("%d jobs waited for the install (the others found it cached)", waited)
	}
}

// TestDockerDepsDetachDuringInstall checks that a detach stops an install
// (nothing of it is kept: no container, no complete entry) and that the
// next Run of the job installs afresh.
func TestDockerDepsDetachDuringInstall(t *testing.T) {
	d, installs := newDepsDocker(t, DockerConfig{})
	files := depsProject(t, "d"+newJobID(t)[5:], nil)
	spec := newSpec(t, files)
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	d.hook = func(step, id string) {
		if step == "install-created" {
			installs.Add(1)
		}
		if step == "install-started" {
			cancel(jobs.ErrDetach)
		}
	}
	_, err := d.Run(ctx, spec, &recorder{})
	if !errors.Is(err, jobs.ErrDetach) {
		t.Fatalf("Run: %v, want a detach", err)
	}
	assertNoContainers(t, d, spec.JobID)
	key := keyFor(t, d, files)
	if ready, _ := d.depsReady(context.Background(), key); ready {
		t.Fatal("an interrupted install left a complete entry")
	}
	if _, err := d.cli.VolumeInspect(context.Background(), depsVolume(key)); !cerrdefs.IsNotFound(err) {
		t.Fatalf("venv volume after an interrupted install: %v, want it removed", err)
	}
	res, rec, err := runDeps(t, d, spec) // the next server runs it again
	mustPass(t, res, rec, err)
	if n := installs.Load(); n != 2 {
		t.Fatalf("%d install containers, want 2 (the interrupted one and the new one)", n)
	}
}

// TestDockerDepsEvictAndPrune checks the cache's housekeeping: with room
// for one entry, a second install evicts the first; PruneDeps removes the
// rest, and a removed entry installs again.
func TestDockerDepsEvictAndPrune(t *testing.T) {
	state := filepath.Join(t.TempDir(), "deps-usage.json")
	d, installs := newDepsDocker(t, DockerConfig{Deps: DepsConfig{MaxEntries: 1, StateFile: state}})
	// Entries of other tests or of a server on this engine must not be
	// evicted by this one: room for what exists already, plus one.
	before, err := d.DepsEntries(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	d.deps.cfg.MaxEntries = 1 + countReady(before)
	for _, e := range before { // and newer than this test's, so not evicted first
		d.deps.used.touch(e.Key, time.Now().Add(time.Hour))
	}

	a := depsProject(t, "e"+newJobID(t)[5:], nil)
	b := depsProject(t, "e"+newJobID(t)[5:], nil)
	for _, files := range []map[string]string{a, b} {
		res, rec, err := runDeps(t, d, newSpec(t, files))
		mustPass(t, res, rec, err)
	}
	ka, kb := keyFor(t, d, a), keyFor(t, d, b)
	if ok, _ := d.depsReady(context.Background(), ka); ok {
		t.Fatal("the least recently used entry was not evicted")
	}
	if ok, _ := d.depsReady(context.Background(), kb); !ok {
		t.Fatal("the newest entry was evicted")
	}
	if _, ok := newUsage(state).get(kb); !ok {
		t.Fatal("the usage file does not know the entry just used")
	}

	removed, err := d.PruneDeps(context.Background(), PruneOptions{UnusedFor: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range removed {
		if e.Key == kb {
			t.Fatal("prune --unused-for 1h removed an entry used just now")
		}
	}
	if _, err := d.removeEntry(context.Background(), kb); err != nil {
		t.Fatal(err)
	}
	if _, err := d.cli.VolumeInspect(context.Background(), depsVolume(kb)); !cerrdefs.IsNotFound(err) {
		t.Fatalf("venv volume after removal: %v, want not found", err)
	}
	res, rec, err := runDeps(t, d, newSpec(t, b))
	mustPass(t, res, rec, err)
	if n := installs.Load(); n != 3 {
		t.Fatalf("%d installs, want 3 (a, b, b again after the prune)", n)
	}
}

func countReady(list []DepsEntry) int {
	n := 0
	for _, e := range list {
		if e.Ready {
			n++
		}
	}
	return n
}

// noPytestImage makes, from the test image, an image whose python cannot
// import pytest, and removes it when the test ends.
func noPytestImage(t *testing.T, d *Docker) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	tag := "ci-test-nopytest:" + newJobID(t)[5:]
	created, err := d.cli.ContainerCreate(ctx, &container.Config{
		Image: testImage(),
		User:  "0:0",
		Cmd: []string{"python3", "-c", "import os, shutil, pytest, _pytest\n" +
			"for m in (pytest, _pytest): shutil.rmtree(os.path.dirname(m.__file__))"},
	}, &container.HostConfig{NetworkMode: "none"}, nil, nil, "")
	if err != nil {
		t.Fatal(err)
	}
	defer d.cli.ContainerRemove(context.Background(), created.ID, container.RemoveOptions{Force: true})
	waited := d.wait(ctx, created.ID, container.WaitConditionNextExit)
	if err := d.cli.ContainerStart(ctx, created.ID, container.StartOptions{}); err != nil {
		t.Fatal(err)
	}
	if w := <-waited; w.err != nil || w.resp.StatusCode != 0 {
		t.Fatalf("removing pytest from the image: %+v", w)
	}
	if _, err := d.cli.ContainerCommit(ctx, created.ID, container.CommitOptions{Reference: tag}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		d.cli.ImageRemove(context.Background(), tag, image.RemoveOptions{Force: true, PruneChildren: true})
	})
	return tag
}

// TestDockerNoPytest checks that an image without pytest gives a job error
// that says so (with or without requirements), and that pytest from the
// requirements counts.
func TestDockerNoPytest(t *testing.T) {
	base, _ := newDepsDocker(t, DockerConfig{})
	img := noPytestImage(t, base)
	d, _ := newDepsDocker(t, DockerConfig{Image: img})

	_, rec, err := runDeps(t, d, newSpec(t, map[string]string{"test_a.py": "def test_a(): pass\n"}))
	if err == nil || !strings.Contains(err.Error(), "pytest cannot be imported") || !strings.Contains(err.Error(), "has no requirements.txt") {
		t.Fatalf("Run without requirements: %v, want the no-pytest error", err)
	}
	if !strings.Contains(rec.text(jobs.StreamStderr), "ci: pytest cannot be imported") {
		t.Fatalf("stderr %q: want the launcher's message", rec.text(jobs.StreamStderr))
	}

	files := depsProject(t, "p"+newJobID(t)[5:], nil)
	_, _, err = runDeps(t, d, newSpec(t, files))
	if err == nil || !strings.Contains(err.Error(), "its requirements.txt does not install it") {
		t.Fatalf("Run with requirements without pytest: %v, want the no-pytest error", err)
	}

	// A "pytest" from the requirements: the venv's is the one that runs.
	name, whl, err := testwheel.Build("pytest", "99.0", map[string]string{
		"pytest/__init__.py": "",
		"pytest/__main__.py": "import sys\nprint('stand-in pytest', sys.argv[1:3])\n",
	})
	if err != nil {
		t.Fatal(err)
	}
	files["wheels/"+name] = string(whl)
	files["requirements.txt"] += "./wheels/" + name + "\n"
	res, rec, err := runDeps(t, d, newSpec(t, files))
	mustPass(t, res, rec, err)
	if out := rec.phaseText(jobs.PhaseTest, jobs.StreamStdout); !strings.Contains(out, "stand-in pytest ['--junitxml=/workspace/.ci-results/report.xml', '-o']") {
		t.Fatalf("test output %q: want the requirements' pytest, run with ci's arguments", out)
	}
}

// TestDockerDepsRetryCleansUp checks that a Run with Spec.Retry removes
// what a crashed server's install left (its install container, its
// incomplete venv), even when the job's time is already up.
func TestDockerDepsRetryCleansUp(t *testing.T) {
	d, _ := newDepsDocker(t, DockerConfig{})
	spec := newSpec(t, depsProject(t, "r"+newJobID(t)[5:], nil))
	ctx := context.Background()
	info, err := d.cli.ImageInspect(ctx, d.image)
	if err != nil {
		t.Fatal(err)
	}
	key := strings.Repeat("ab", 32)
	if _, err := d.createInstall(ctx, spec.JobID, key, info.ID); err != nil { // as a crash leaves it
		t.Fatal(err)
	}
	expired, cancel := context.WithDeadline(ctx, time.Now().Add(-time.Second))
	defer cancel()
	spec.Retry = true
	if _, err := d.Run(expired, spec, &recorder{}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Run: %v, want the deadline", err)
	}
	assertNoContainers(t, d, spec.JobID)
	if _, err := d.cli.VolumeInspect(ctx, depsVolume(key)); !cerrdefs.IsNotFound(err) {
		t.Fatalf("incomplete venv volume after the retry: %v, want it removed", err)
	}
}

// TestDockerDepsHeldEntryStays checks that an entry a job of this server
// holds (it found it cached and is about to mount it) is not removed, and
// that a test container never runs on a venv volume removed under it.
func TestDockerDepsHeldEntryStays(t *testing.T) {
	d, _ := newDepsDocker(t, DockerConfig{})
	files := depsProject(t, "h"+newJobID(t)[5:], nil)
	res, rec, err := runDeps(t, d, newSpec(t, files))
	mustPass(t, res, rec, err)
	key := keyFor(t, d, files)
	release := d.deps.hold(key)
	if ok, err := d.removeEntry(context.Background(), key); ok || err != nil {
		t.Fatalf("removeEntry of a held key: %v, %v; want false, nil", ok, err)
	}
	release()
	release() // a second call is harmless
	if ok, err := d.removeEntry(context.Background(), key); !ok || err != nil {
		t.Fatalf("removeEntry after release: %v, %v; want true, nil", ok, err)
	}

	// A volume the engine made in the venv's place has no labels.
	ctx := context.Background()
	if _, err := d.cli.VolumeCreate(ctx, volume.CreateOptions{Name: depsVolume(key)}); err != nil {
		t.Fatal(err)
	}
	defer d.cli.VolumeRemove(ctx, depsVolume(key), true)
	if err := d.checkDepsVolume(ctx, depsVolume(key), key); err == nil || !strings.Contains(err.Error(), "was removed while the job started") {
		t.Fatalf("checkDepsVolume of an unlabelled volume: %v, want an error", err)
	}
}
