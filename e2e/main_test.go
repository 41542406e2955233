// Package e2e holds end-to-end tests: the real ci-server and ci binaries,
// a real SQLite database and the real Docker engine, over the fixture
// projects in testdata/.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/client"
)

// bin holds the binaries built for this run.
var bin string

// skipReason is set when no engine or image is available (locally only).
var skipReason string

// testImage is the image the e2e server runs tests in.
var testImage = envOr("CI_TEST_IMAGE", "ci-python:latest")

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "ci-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	bin = dir
	build := exec.Command("go", "build", "-o", dir+"/", "ci/cmd/ci", "ci/cmd/ci-server")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: build binaries:", err)
		os.Exit(2)
	}
	skipReason = checkEngine()
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// checkEngine returns why Docker tests can't run here, or "".
func checkEngine() string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return "no Docker client: " + err.Error()
	}
	defer cli.Close()
	if _, err := cli.Ping(ctx); err != nil {
		return "no Docker engine answers: " + err.Error()
	}
	if _, err := cli.ImageInspect(ctx, testImage); err != nil {
		return fmt.Sprintf("image %s is missing (build it with scripts/build-image): %v", testImage, err)
	}
	return ""
}

// needEngine skips the test locally when Docker can't be used, and fails
// it in CI, where a missing engine is a failure.
func needEngine(t *testing.T) {
	t.Helper()
	if skipReason == "" {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("CI is set but Docker can't be used: %s", skipReason)
	}
	t.Skipf("skipping: %s", skipReason)
}

// server is a ci-server process.
type server struct {
	t    *testing.T
	cmd  *exec.Cmd
	url  string
	data string
	logs *syncBuffer
	args []string
	addr string
}

// startServer starts ci-server on a free port with data in dir.
func startServer(t *testing.T, data string, args ...string) *server {
	t.Helper()
	s := &server{t: t, data: data, args: args, addr: freeAddr(t)}
	s.start()
	t.Cleanup(s.stop)
	return s
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func (s *server) start() {
	t := s.t
	t.Helper()
	args := append([]string{"--addr", s.addr, "--data", s.data, "--image", testImage, "--log-level", "debug"}, s.args...)
	s.cmd = exec.Command(filepath.Join(bin, "ci-server"), args...)
	s.logs = &syncBuffer{}
	s.cmd.Stdout, s.cmd.Stderr = s.logs, s.logs
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s.url = "http://" + s.addr
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := http.Get(s.url + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("ci-server did not become healthy: %v\n%s", err, s.logs)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop ends the server with SIGTERM and waits for it.
func (s *server) stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- s.cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		s.cmd.Process.Kill()
		<-done
		s.t.Errorf("ci-server did not exit within 30s of SIGTERM\n%s", s.logs)
	}
	if s.t.Failed() {
		s.t.Logf("ci-server log:\n%s", s.logs)
	}
	s.cmd = nil
}

// restart stops the server and starts it again on the same data dir and
// address.
func (s *server) restart() {
	s.stop()
	s.start()
}

// result is how a ci command ended.
type result struct {
	code           int
	stdout, stderr string
}

// ci runs the ci CLI in dir against s and waits for it.
func (s *server) ci(t *testing.T, dir string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(bin, "ci"), args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CI_SERVER="+s.url)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	res := result{stdout: stdout.String(), stderr: stderr.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		res.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("ci %v: %v", args, err)
	}
	return res
}

// fixture returns the path of a fixture project.
func fixture(t *testing.T, name string) string {
	t.Helper()
	p, err := filepath.Abs(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// copyFixture copies a fixture project into a temp dir, so a test can add
// files to it.
func copyFixture(t *testing.T, name string) string {
	t.Helper()
	dst := t.TempDir()
	src := fixture(t, name)
	err := filepath.Walk(src, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		if info.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(target, b, info.Mode())
	})
	if err != nil {
		t.Fatal(err)
	}
	return dst
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// jobIDFromAsync parses `Job submitted: <id>` and checks it is all the
// command printed.
func jobIDFromAsync(t *testing.T, r result) string {
	t.Helper()
	if r.code != 0 {
		t.Fatalf("submit --async exited %d: %s%s", r.code, r.stdout, r.stderr)
	}
	id, ok := strings.CutPrefix(r.stdout, "Job submitted: ")
	id, nl := strings.CutSuffix(id, "\n")
	if !ok || !nl || id == "" || strings.ContainsAny(id, " \n") {
		t.Fatalf("submit --async printed %q, want exactly \"Job submitted: <id>\\n\"", r.stdout)
	}
	return id
}

// lines reads r line by line until EOF, sending each with its arrival
// time.
func readChunks(r io.Reader, out chan<- chunk) {
	br := bufio.NewReader(r)
	buf := make([]byte, 4096)
	for {
		n, err := br.Read(buf)
		if n > 0 {
			out <- chunk{at: time.Now(), text: string(buf[:n])}
		}
		if err != nil {
			close(out)
			return
		}
	}
}

type chunk struct {
	at   time.Time
	text string
}

// syncBuffer is a bytes.Buffer safe for a process writing and a test
// reading at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// waitFor polls cond until it holds, failing the test after a deadline.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met before the deadline")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
