package e2e

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"ci/client"
	"ci/internal/testwheel"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/volume"
)

// Labels of the dependency phase (see executor/deps.go), as the engine
// shows them.
const (
	labelInstall = "ci.install" // on install containers: the job ID
	labelJob     = "ci.job"     // on test containers: the job ID
	labelDepsJob = "ci.deps.job"
	labelRole    = "ci.deps.role"
)

// newToken returns a random hex string that makes a test's wheels, and so
// its dependency cache keys, its own.
func newToken(t *testing.T) string {
	t.Helper()
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// addWheel builds a wheel of the distribution ci-e2e-<name> whose module
// ci_e2e_<name> has VALUE = name, writes it to dir/wheels and returns its
// path relative to dir.
func addWheel(t *testing.T, dir, name string) string {
	t.Helper()
	file, data, err := testwheel.Build("ci-e2e-"+name, "1.0", map[string]string{
		"ci_e2e_" + name + "/__init__.py": fmt.Sprintf("VALUE = %q\n", name),
	})
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "wheels", file), string(data))
	return "wheels/" + file
}

// wheelProject writes a project into a new directory (see
// writeWheelProject) and returns the directory.
func wheelProject(t *testing.T, names ...string) string {
	t.Helper()
	dir := t.TempDir()
	writeWheelProject(t, dir, names...)
	return dir
}

// writeWheelProject writes into dir a project whose requirements.txt
// installs a local wheel per name (see addWheel) and whose test imports
// each module and checks its value.
func writeWheelProject(t *testing.T, dir string, names ...string) {
	t.Helper()
	var req, test strings.Builder
	for _, name := range names {
		fmt.Fprintf(&req, "./%s\n", addWheel(t, dir, name))
		fmt.Fprintf(&test, "import ci_e2e_%s\n", name)
	}
	test.WriteString("\n\ndef test_installed():\n")
	for _, name := range names {
		fmt.Fprintf(&test, "    assert ci_e2e_%s.VALUE == %q\n", name, name)
	}
	writeFile(t, filepath.Join(dir, "requirements.txt"), req.String())
	writeFile(t, filepath.Join(dir, "test_deps.py"), test.String())
}

// gateBackend is an in-tree PEP 517 build backend whose build_wheel waits
// until the file /workspace/release exists (see release), then hands pip
// the prebuilt wheel next to it. It makes an install that cannot end
// before the test says so: what happens while it is running is then
// certain, not a matter of timing.
const gateBackend = `import os
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
WHEEL = %q


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    print("gate: waiting for /workspace/release", file=sys.stderr, flush=True)
    deadline = time.monotonic() + 120
    while not os.path.exists("/workspace/release"):
        if time.monotonic() > deadline:
            raise RuntimeError("gate: never released")
        time.sleep(0.05)
    shutil.copy(os.path.join(HERE, WHEEL), wheel_directory)
    return os.path.basename(WHEEL)
`

// gateProject writes a project whose requirements.txt installs the local
// package ./gate_<token> through gateBackend: its install blocks until
// released. The package holds the module ci_e2e_<token> (see addWheel);
// the test imports it.
func gateProject(t *testing.T, token string) string {
	t.Helper()
	dir := t.TempDir()
	pkg := filepath.Join(dir, "gate_"+token)
	wheel := filepath.Base(addWheel(t, pkg, token))
	writeFile(t, filepath.Join(pkg, "pyproject.toml"),
		"[build-system]\nrequires = []\nbuild-backend = \"gate_backend\"\nbackend-path = [\".\"]\n")
	writeFile(t, filepath.Join(pkg, "gate_backend.py"), fmt.Sprintf(gateBackend, "wheels/"+wheel))
	writeFile(t, filepath.Join(dir, "requirements.txt"), "./gate_"+token+"\n")
	writeFile(t, filepath.Join(dir, "test_deps.py"),
		fmt.Sprintf("import ci_e2e_%[1]s\n\n\ndef test_installed():\n    assert ci_e2e_%[1]s.VALUE == %[1]q\n", token))
	return dir
}

// release lets the gated install (see gateProject) in the running install
// container cid go on.
func release(t *testing.T, cid string) {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: "release", Mode: 0o644, Size: 0}); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	err := dockerClient(t).CopyToContainer(context.Background(), cid, "/workspace", &buf, container.CopyToContainerOptions{})
	if err != nil {
		t.Fatalf("release the install in %s: %v", cid, err)
	}
}

// runningInstall returns the ID of the running install container of one
// of the jobs ids and that job, or "" if none is running.
func runningInstall(t *testing.T, ids ...string) (cid, job string) {
	t.Helper()
	list, err := dockerClient(t).ContainerList(context.Background(), container.ListOptions{
		Filters: filters.NewArgs(filters.Arg("label", labelInstall), filters.Arg("status", "running")),
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range list {
		if slices.Contains(ids, c.Labels[labelInstall]) {
			return c.ID, c.Labels[labelInstall]
		}
	}
	return "", ""
}

// labelled counts the containers, running or not, with label=value.
func labelled(t *testing.T, label, value string) int {
	t.Helper()
	list, err := dockerClient(t).ContainerList(context.Background(), container.ListOptions{
		All:     true,
		Filters: filters.NewArgs(filters.Arg("label", label+"="+value)),
	})
	if err != nil {
		t.Fatal(err)
	}
	return len(list)
}

// depsJobs remembers the jobs a test submitted so that, when the test
// ends, what they left in the engine goes: their containers and the
// dependency volumes their installs made. It must be made before the
// server starts, so that it cleans up after the server has stopped.
type depsJobs struct {
	mu  sync.Mutex
	ids []string
}

func trackDeps(t *testing.T) *depsJobs {
	t.Helper()
	d := &depsJobs{}
	t.Cleanup(func() { d.cleanup(t) })
	return d
}

func (d *depsJobs) add(ids ...string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.ids = append(d.ids, ids...)
}

func (d *depsJobs) cleanup(t *testing.T) {
	d.mu.Lock()
	defer d.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cli := dockerClient(t)
	for _, id := range d.ids {
		for _, label := range []string{labelInstall, labelJob} {
			list, err := cli.ContainerList(ctx, container.ListOptions{All: true,
				Filters: filters.NewArgs(filters.Arg("label", label+"="+id))})
			if err != nil {
				t.Errorf("cleanup: list containers of %s: %v", id, err)
				continue
			}
			for _, c := range list {
				if err := cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true, RemoveVolumes: true}); err != nil {
					t.Errorf("cleanup: remove container %s of job %s: %v", c.ID, id, err)
				}
			}
		}
		vols, err := cli.VolumeList(ctx, volume.ListOptions{Filters: filters.NewArgs(filters.Arg("label", labelDepsJob+"="+id))})
		if err != nil {
			t.Errorf("cleanup: list volumes of %s: %v", id, err)
			continue
		}
		// The venv before its ready marker, as the server removes them.
		slices.SortFunc(vols.Volumes, func(a, b *volume.Volume) int {
			return strings.Compare(b.Labels[labelRole], a.Labels[labelRole])
		})
		for _, v := range vols.Volumes {
			if err := cli.VolumeRemove(ctx, v.Name, false); err != nil {
				t.Errorf("cleanup: remove volume %s of job %s: %v", v.Name, id, err)
			}
		}
	}
}

// installWatch records every install container the engine creates from
// its start on, from the engine's event stream.
type installWatch struct {
	t      *testing.T
	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex
	created map[string]string // container ID -> its ci.install label
	seen    map[string]bool   // every container ID created
	err     error
}

// watchInstalls starts an installWatch; it stops when the test ends.
func watchInstalls(t *testing.T) *installWatch {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w := &installWatch{t: t, cancel: cancel, done: make(chan struct{}),
		created: map[string]string{}, seen: map[string]bool{}}
	msgs, errs := dockerClient(t).Events(ctx, events.ListOptions{Filters: filters.NewArgs(
		filters.Arg("type", string(events.ContainerEventType)), filters.Arg("event", string(events.ActionCreate)))})
	go func() {
		defer close(w.done)
		for {
			select {
			case m := <-msgs:
				w.mu.Lock()
				w.seen[m.Actor.ID] = true
				if job, ok := m.Actor.Attributes[labelInstall]; ok {
					w.created[m.Actor.ID] = job
				}
				w.mu.Unlock()
			case err := <-errs:
				w.mu.Lock()
				if ctx.Err() == nil {
					w.err = err
				}
				w.mu.Unlock()
				return
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-w.done })
	// From here on, nothing is missed.
	w.sync()
	return w
}

// sync returns once the watch has received every event the engine
// published before it was called: it creates a container of its own and
// waits for its create event, which comes after them.
func (w *installWatch) sync() {
	t := w.t
	t.Helper()
	ctx := context.Background()
	cli := dockerClient(t)
	c, err := cli.ContainerCreate(ctx, &container.Config{Image: testImage, Cmd: []string{"true"},
		Labels: map[string]string{"ci.e2e.marker": "1"}}, nil, nil, nil, "")
	if err != nil {
		t.Fatalf("create marker container: %v", err)
	}
	if err := cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true}); err != nil {
		t.Fatalf("remove marker container: %v", err)
	}
	deadline := time.Now().Add(time.Minute)
	for {
		w.mu.Lock()
		ok, err := w.seen[c.ID], w.err
		w.mu.Unlock()
		if ok {
			return
		}
		if err != nil {
			t.Fatalf("engine event stream: %v", err)
		}
		if time.Now().After(deadline) {
			t.Fatal("the marker container's create event did not arrive")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// installs returns how many install containers of the jobs ids the engine
// has created since the watch began.
func (w *installWatch) installs(ids ...string) int {
	w.t.Helper()
	w.sync()
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, job := range w.created {
		if slices.Contains(ids, job) {
			n++
		}
	}
	return n
}

// jobID returns the job ID that `ci submit test` printed.
func jobID(t *testing.T, r result) string {
	t.Helper()
	m := submittedRE.FindStringSubmatch(r.stderr)
	if m == nil {
		t.Fatalf("ci did not print the job ID (exit %d):\n%s%s", r.code, r.stdout, r.stderr)
	}
	return m[1]
}

// jobEvents follows job id from its first event to its end.
func jobEvents(t *testing.T, s *server, id string) []client.Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var all []client.Event
	if _, err := client.New(s.url).Follow(ctx, id, 0, func(ev client.Event) error { all = append(all, ev); return nil }); err != nil {
		t.Fatal(err)
	}
	return all
}

// phaseLog is the output of one phase of a job: the log events from its
// phase event to the next one.
type phaseLog struct {
	phase string // "" before the first phase event
	text  string
}

// phases splits a job's events by phase.
func phases(evs []client.Event) []phaseLog {
	out := []phaseLog{{}}
	for _, ev := range evs {
		switch ev.Type {
		case client.EventPhase:
			out = append(out, phaseLog{phase: ev.Phase})
		case client.EventLog:
			out[len(out)-1].text += ev.Text
		}
	}
	return out
}

// phaseNames returns the phases of ps in order.
func phaseNames(ps []phaseLog) []string {
	var names []string
	for _, p := range ps[1:] {
		names = append(names, p.phase)
	}
	return names
}

// jobLog returns the stored plain-text log of job id.
func jobLog(t *testing.T, s *server, id string) string {
	t.Helper()
	rc, err := client.New(s.url).Log(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// depsEntry is an entry of `ci-server deps list --json`.
type depsEntry struct {
	Key       string    `json:"key"`
	Volume    string    `json:"volume"`
	Ready     bool      `json:"ready"`
	Size      int64     `json:"size"`
	Image     string    `json:"image"`
	Job       string    `json:"job"`
	Installed time.Time `json:"installed"`
	LastUsed  time.Time `json:"last_used"`
	InUse     int       `json:"in_use"`
}

// depsCmd runs `ci-server deps args...` and returns how it ended.
func depsCmd(t *testing.T, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(bin, "ci-server"), append([]string{"deps"}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("ci-server deps %v: %v", args, err)
	}
	return r
}

// depsList returns the entries of `ci-server deps list --json --data
// data` that jobs ids made.
func depsList(t *testing.T, data string, ids ...string) []depsEntry {
	t.Helper()
	r := depsCmd(t, "list", "--json", "--data", data)
	if r.code != 0 {
		t.Fatalf("deps list --json: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	var all []depsEntry
	if err := json.Unmarshal([]byte(r.stdout), &all); err != nil {
		t.Fatalf("deps list --json: %v\n%s", err, r.stdout)
	}
	var mine []depsEntry
	for _, e := range all {
		if slices.Contains(ids, e.Job) {
			mine = append(mine, e)
		}
	}
	return mine
}

// getJSON decodes the JSON answer of a GET of url into v.
func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s\n%s", url, resp.Status, b)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("GET %s: %v\n%s", url, err, b)
	}
}
