package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"ci/client"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	dockerclient "github.com/docker/docker/client"
)

// TestSubmitFixtures runs `ci submit test` on each fixture project and
// checks exit code and output.
func TestSubmitFixtures(t *testing.T) {
	needEngine(t)
	s := startServer(t, t.TempDir())
	for _, tc := range []struct {
		fixture string
		code    int
		stdout  []string // substrings of stdout
		reason  string   // substring of stderr
	}{
		{"passing", 0, []string{"test_math.py ..", "2 passed"}, ""},
		{"failing", 1, []string{"FAILED test_broken.py::test_wrong_answer", "the answer is wrong", "1 failed, 1 passed"}, "ci: 2 tests: 1 passed, 1 failed, 0 errors, 0 skipped"},
		{"invalid", 2, []string{"SyntaxError", "1 error"}, "interrupted"},
		{"notests", 5, []string{"no tests ran"}, "no tests"},
		{"srclayout", 0, []string{"tests/test_greeter.py .", "1 passed"}, "ci: 1 tests: 1 passed"},
	} {
		t.Run(tc.fixture, func(t *testing.T) {
			r := s.ci(t, fixture(t, tc.fixture), "submit", "test")
			if r.code != tc.code {
				t.Fatalf("exit code %d, want %d\nstdout:\n%s\nstderr:\n%s", r.code, tc.code, r.stdout, r.stderr)
			}
			for _, want := range tc.stdout {
				if !strings.Contains(r.stdout, want) {
					t.Errorf("stdout lacks %q:\n%s", want, r.stdout)
				}
			}
			if strings.Contains(r.stdout, "\x1b") {
				t.Errorf("piped stdout holds escape codes (colour must be stripped on a pipe):\n%q", r.stdout)
			}
			if !regexp.MustCompile(`Job \S+ submitted: http://\S+/jobs/\S+`).MatchString(r.stderr) {
				t.Errorf("stderr lacks the job id and web URL:\n%s", r.stderr)
			}
			if !strings.Contains(r.stderr, tc.reason) {
				t.Errorf("stderr lacks %q:\n%s", tc.reason, r.stderr)
			}
		})
	}
}

// TestIgnoredFilesStayHome checks the zip rules end to end: files that
// .gitignore, dot-directories or __pycache__ hold would fail the run if they
// were uploaded.
func TestIgnoredFilesStayHome(t *testing.T) {
	needEngine(t)
	s := startServer(t, t.TempDir())
	dir := copyFixture(t, "passing")
	failing := "def test_must_not_run():\n    assert False, 'ignored file was uploaded'\n"
	writeFile(t, filepath.Join(dir, "build", "test_built.py"), failing)
	writeFile(t, filepath.Join(dir, ".venv", "test_venv.py"), failing)
	writeFile(t, filepath.Join(dir, "__pycache__", "test_cached.py"), failing)
	r := s.ci(t, dir, "submit", "test", "--", "-v")
	if r.code != 0 || strings.Contains(r.stdout, "must_not_run") {
		t.Fatalf("exit %d, want 0 with no ignored test collected:\n%s%s", r.code, r.stdout, r.stderr)
	}
}

// TestArgsPassThrough passes pytest arguments after --.
func TestArgsPassThrough(t *testing.T) {
	needEngine(t)
	s := startServer(t, t.TempDir())
	r := s.ci(t, fixture(t, "failing"), "submit", "test", "--", "-k", "test_ok", "-v")
	if r.code != 0 || !strings.Contains(r.stdout, "test_broken.py::test_ok PASSED") || !strings.Contains(r.stdout, "1 deselected") {
		t.Fatalf("exit %d, want 0 running only test_ok verbosely:\n%s%s", r.code, r.stdout, r.stderr)
	}
}

// TestAsyncThenWait submits with --async, then replays and follows with
// `ci wait`, twice (the second time the job has long ended).
func TestAsyncThenWait(t *testing.T) {
	needEngine(t)
	s := startServer(t, t.TempDir())
	id := jobIDFromAsync(t, s.ci(t, fixture(t, "failing"), "submit", "test", "--async"))
	for range 2 {
		r := s.ci(t, t.TempDir(), "wait", id)
		if r.code != 1 || !strings.Contains(r.stdout, "1 failed, 1 passed") {
			t.Fatalf("wait: exit %d, want 1 with the full output:\n%s%s", r.code, r.stdout, r.stderr)
		}
	}
	st := s.ci(t, t.TempDir(), "status", id, "--json")
	if st.code != 0 || !strings.Contains(st.stdout, `"status": "failed"`) {
		t.Fatalf("status --json: exit %d:\n%s%s", st.code, st.stdout, st.stderr)
	}
	l := s.ci(t, t.TempDir(), "list")
	if l.code != 0 || !strings.Contains(l.stdout, id) {
		t.Fatalf("list: exit %d, want the job listed:\n%s%s", l.code, l.stdout, l.stderr)
	}
}

// TestAfterN checks that the event stream from after=N holds exactly the
// events N+1..last of the job, for several N.
func TestAfterN(t *testing.T) {
	needEngine(t)
	s := startServer(t, t.TempDir())
	id := jobIDFromAsync(t, s.ci(t, fixture(t, "passing"), "submit", "test", "--async"))
	c := client.New(s.url)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var all []client.Event
	if _, err := c.Follow(ctx, id, 0, func(ev client.Event) error { all = append(all, ev); return nil }); err != nil {
		t.Fatal(err)
	}
	for i, ev := range all {
		if ev.Seq != int64(i+1) {
			t.Fatalf("event %d has seq %d, want %d (gapless from 1)", i, ev.Seq, i+1)
		}
	}
	last := all[len(all)-1]
	if last.Type != "status" || last.Status != "passed" {
		t.Fatalf("last event %+v, want status passed", last)
	}
	for _, n := range []int64{1, 2, last.Seq / 2, last.Seq - 1} {
		var got []int64
		if _, err := c.Follow(ctx, id, n, func(ev client.Event) error { got = append(got, ev.Seq); return nil }); err != nil {
			t.Fatal(err)
		}
		if len(got) != int(last.Seq-n) || got[0] != n+1 || got[len(got)-1] != last.Seq {
			t.Fatalf("after=%d: got seqs %v, want %d..%d", n, got, n+1, last.Seq)
		}
	}
}

// TestProgressDotsAreLive checks that pytest's progress dots reach the
// terminal as each test finishes, not when the line ends: the fixture's
// three tests take a second each.
func TestProgressDotsAreLive(t *testing.T) {
	needEngine(t)
	s := startServer(t, t.TempDir())
	cmd := exec.Command(filepath.Join(bin, "ci"), "submit", "test", "--server", s.url)
	cmd.Dir = fixture(t, "dots")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	chunks := make(chan chunk, 1024)
	go readChunks(stdout, chunks)
	var text strings.Builder
	var firstDot, summary time.Time
	for c := range chunks {
		text.WriteString(c.text)
		if firstDot.IsZero() && strings.Contains(text.String(), "test_dots.py .") {
			firstDot = c.at
		}
		if summary.IsZero() && strings.Contains(text.String(), "3 passed") {
			summary = c.at
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("ci exited: %v\n%s", err, text.String())
	}
	if firstDot.IsZero() || summary.IsZero() {
		t.Fatalf("did not see a progress dot and the summary:\n%s", text.String())
	}
	// Two more tests of a second each run after the first dot.
	if gap := summary.Sub(firstDot); gap < 1500*time.Millisecond {
		t.Fatalf("first dot arrived only %v before the summary, want it live (>= 1.5s before)", gap)
	}
}

// TestRestartKeepsJobs checks that finished and queued jobs survive a
// server restart, and that queued jobs then run.
func TestRestartKeepsJobs(t *testing.T) {
	needEngine(t)
	data := t.TempDir()
	s := startServer(t, data, "--concurrency", "1")

	finished := jobIDFromAsync(t, s.ci(t, fixture(t, "failing"), "submit", "test", "--async"))
	if r := s.ci(t, t.TempDir(), "wait", finished); r.code != 1 {
		t.Fatalf("wait finished job: exit %d, want 1\n%s", r.code, r.stderr)
	}
	// One slow job takes the only slot; two more queue behind it.
	slow := jobIDFromAsync(t, s.ci(t, fixture(t, "slow"), "submit", "test", "--async"))
	waitStatus(t, s, slow, "running")
	q1 := jobIDFromAsync(t, s.ci(t, fixture(t, "passing"), "submit", "test", "--async"))
	q2 := jobIDFromAsync(t, s.ci(t, fixture(t, "notests"), "submit", "test", "--async"))
	waitStatus(t, s, q2, "queued")

	// A follower of a queued job is connected across the restart: it must
	// reconnect by itself and print everything exactly once.
	follower := exec.Command(filepath.Join(bin, "ci"), "wait", q1, "--server", s.url)
	var fout, ferr strings.Builder
	follower.Stdout, follower.Stderr = &fout, &ferr
	if err := follower.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return strings.Contains(s.logs.String(), "job="+q1+" after=0") })

	s.restart()
	// The slow job holds the only slot again after the restart; the checks
	// below on the queued jobs cancel it first.
	if r := s.ci(t, t.TempDir(), "cancel", slow); r.code != 0 {
		t.Fatalf("cancel the re-attached job: exit %d\n%s", r.code, r.stderr)
	}

	// The finished job replays in full with its exit code.
	if r := s.ci(t, t.TempDir(), "wait", finished); r.code != 1 || !strings.Contains(r.stdout, "1 failed, 1 passed") {
		t.Fatalf("finished job after restart: exit %d, want 1 with its output:\n%s%s", r.code, r.stdout, r.stderr)
	}
	// The queued ones run after the restart.
	if r := s.ci(t, t.TempDir(), "wait", q1); r.code != 0 || !strings.Contains(r.stdout, "2 passed") {
		t.Fatalf("queued job after restart: exit %d, want 0:\n%s%s", r.code, r.stdout, r.stderr)
	}
	if err := follower.Wait(); err != nil {
		t.Fatalf("follower across the restart: %v\n%s%s", err, fout.String(), ferr.String())
	}
	if n := strings.Count(fout.String(), "2 passed"); n != 1 || !strings.Contains(fout.String(), "test_math.py ..") {
		t.Fatalf("follower printed the summary %d times, want once with the progress line:\n%s", n, fout.String())
	}
	if !strings.Contains(ferr.String(), "reconnecting") {
		t.Fatalf("follower did not say it was reconnecting:\n%s", ferr.String())
	}
	if r := s.ci(t, t.TempDir(), "wait", q2); r.code != 5 {
		t.Fatalf("queued job after restart: exit %d, want 5:\n%s%s", r.code, r.stdout, r.stderr)
	}
	// The job that was running when the server stopped was left running,
	// re-attached after the restart, and then canceled above.
	if r := s.ci(t, t.TempDir(), "wait", slow); r.code != 130 || !strings.Contains(r.stderr, "canceled by user") {
		t.Fatalf("re-attached job after cancel: exit %d, want 130:\n%s", r.code, r.stderr)
	}
}

// waitStatus polls the job until it has the given status.
func waitStatus(t *testing.T, s *server, id, status string) {
	t.Helper()
	c := client.New(s.url)
	deadline := time.Now().Add(2 * time.Minute)
	for {
		j, err := c.Job(context.Background(), id)
		if err == nil && j.Status == status {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("job %s not %s before the deadline (last: %+v, %v)", id, status, j, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestUsageErrors checks that misuse of ci exits 64 with help.
func TestUsageErrors(t *testing.T) {
	s := &server{url: "http://127.0.0.1:1"}
	for _, args := range [][]string{{}, {"submit"}, {"submit", "lint"}, {"wait"}, {"frobnicate"}, {"wait", "x", "--after", "-3"}} {
		r := s.ci(t, t.TempDir(), args...)
		if r.code != 64 || !strings.Contains(strings.ToLower(r.stderr), "usage") {
			t.Errorf("ci %s: exit %d, want 64 with usage:\n%s", strings.Join(args, " "), r.code, r.stderr)
		}
	}
}

// TestMissingImage runs a server whose image can't be had: the job ends
// error (exit 125) with a message naming the image and how to build one.
func TestMissingImage(t *testing.T) {
	needEngine(t)
	s := startServer(t, t.TempDir(), "--image", "localhost:1/ci-missing:latest")
	r := s.ci(t, fixture(t, "passing"), "submit", "test")
	if r.code != 125 || !strings.Contains(r.stderr, "localhost:1/ci-missing:latest") || !strings.Contains(r.stderr, "scripts/build-image") {
		t.Fatalf("exit %d, want 125 naming the image and scripts/build-image:\n%s", r.code, r.stderr)
	}
}

// jobContainers lists the containers of a job, running or not: a cold one
// carries the label ci.job=<id>; a warm one the job claimed is named
// ci-job-<id> instead (labels can't be added after creation).
func jobContainers(t *testing.T, id string) ([]container.Summary, error) {
	t.Helper()
	cli := dockerClient(t)
	byLabel, err := cli.ContainerList(context.Background(), container.ListOptions{All: true,
		Filters: filters.NewArgs(filters.Arg("label", "ci.job="+id))})
	if err != nil {
		return nil, err
	}
	byName, err := cli.ContainerList(context.Background(), container.ListOptions{All: true,
		Filters: filters.NewArgs(filters.Arg("name", "^/ci-job-"+id+"$"))})
	return append(byLabel, byName...), err
}

// containersOf returns how many containers (running or not) the job has.
func containersOf(t *testing.T, id string) int {
	t.Helper()
	list, err := jobContainers(t, id)
	if err != nil {
		t.Fatal(err)
	}
	return len(list)
}

// engineClient is one Engine API client shared by the tests.
var engineClient = sync.OnceValues(func() (*dockerclient.Client, error) {
	return dockerclient.NewClientWithOpts(dockerclient.FromEnv, dockerclient.WithAPIVersionNegotiation())
})

// dockerClient returns the shared Engine API client.
func dockerClient(t *testing.T) *dockerclient.Client {
	t.Helper()
	cli, err := engineClient()
	if err != nil {
		t.Fatal(err)
	}
	return cli
}

var submittedRE = regexp.MustCompile(`Job (\S+) submitted`)

// TestTimeoutAndCancel runs the slow fixture past a short time limit, and
// cancels it running and queued: exit codes 124 and 130, and no container
// left behind.
func TestTimeoutAndCancel(t *testing.T) {
	needEngine(t)
	s := startServer(t, t.TempDir(), "--concurrency", "1")

	r := s.ci(t, fixture(t, "slow"), "submit", "test", "--timeout", "3s")
	m := submittedRE.FindStringSubmatch(r.stderr)
	if r.code != 124 || m == nil || !strings.Contains(r.stderr, "time limit of 3s") {
		t.Fatalf("timeout: exit %d, want 124 naming the 3s limit:\n%s", r.code, r.stderr)
	}
	if n := containersOf(t, m[1]); n != 0 {
		t.Fatalf("%d containers left behind by the timed-out job", n)
	}

	running := jobIDFromAsync(t, s.ci(t, fixture(t, "slow"), "submit", "test", "--async"))
	waitStatus(t, s, running, "running")
	queued := jobIDFromAsync(t, s.ci(t, fixture(t, "passing"), "submit", "test", "--async"))
	if r := s.ci(t, t.TempDir(), "cancel", queued); r.code != 0 || !strings.Contains(r.stdout, "canceled") {
		t.Fatalf("cancel queued: exit %d:\n%s%s", r.code, r.stdout, r.stderr)
	}
	if r := s.ci(t, t.TempDir(), "wait", queued); r.code != 130 || r.stdout != "" {
		t.Fatalf("wait canceled queued job: exit %d, stdout %q; want 130 and no output", r.code, r.stdout)
	}
	if r := s.ci(t, t.TempDir(), "cancel", running); r.code != 0 {
		t.Fatalf("cancel running: exit %d:\n%s%s", r.code, r.stdout, r.stderr)
	}
	if r := s.ci(t, t.TempDir(), "wait", running); r.code != 130 || !strings.Contains(r.stderr, "canceled by user") {
		t.Fatalf("wait canceled running job: exit %d, want 130:\n%s", r.code, r.stderr)
	}
	if n := containersOf(t, running); n != 0 {
		t.Fatalf("%d containers left behind by the canceled job", n)
	}
	if r := s.ci(t, t.TempDir(), "cancel", running); r.code != 1 || !strings.Contains(r.stderr, "already ended") {
		t.Fatalf("cancel an ended job: exit %d, want 1 saying it already ended:\n%s", r.code, r.stderr)
	}
}

// TestCtrlCCancelsSubmit sends SIGINT to a synchronous `ci submit test`:
// the job is canceled and ci exits 130 once it has ended.
func TestCtrlCCancelsSubmit(t *testing.T) {
	needEngine(t)
	s := startServer(t, t.TempDir())
	cmd := exec.Command(filepath.Join(bin, "ci"), "submit", "test", "--server", s.url)
	cmd.Dir = fixture(t, "slow")
	var stderr syncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var id string
	waitFor(t, func() bool {
		m := submittedRE.FindStringSubmatch(stderr.String())
		if m != nil {
			id = m[1]
		}
		return m != nil
	})
	waitStatus(t, s, id, "running")
	cmd.Process.Signal(os.Interrupt)
	err := cmd.Wait()
	ee, ok := err.(*exec.ExitError)
	if !ok || ee.ExitCode() != 130 {
		t.Fatalf("ci after Ctrl-C: %v, want exit 130\n%s", err, stderr.String())
	}
	j, err := client.New(s.url).Job(context.Background(), id)
	if err != nil || j.Status != "canceled" {
		t.Fatalf("job after Ctrl-C: %+v %v, want canceled", j, err)
	}
	if n := containersOf(t, id); n != 0 {
		t.Fatalf("%d containers left behind after Ctrl-C", n)
	}
}

// TestSandbox runs a fixture whose tests pass only inside ci's sandbox:
// non-root, read-only project and root fs, loopback only, no
// capabilities, no new privileges, memory and pids limits.
func TestSandbox(t *testing.T) {
	needEngine(t)
	s := startServer(t, t.TempDir())
	r := s.ci(t, fixture(t, "sandbox"), "submit", "test", "--", "-v")
	if r.code != 0 || !strings.Contains(r.stdout, "8 passed") {
		t.Fatalf("exit %d, want 0 with every defence holding:\n%s%s", r.code, r.stdout, r.stderr)
	}
}
