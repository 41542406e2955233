package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"ci/client"
)

// server is a ci-server process started by the benchmark on a free
// loopback port with a temporary data dir.
type server struct {
	cmd     *exec.Cmd
	url     string
	dir     string // data dir and log file
	logPath string
	exited  chan struct{}
	client  *client.Client
	jobs    []string // submitted, for cleaning up their containers
	// watchVia, when set, is the server whose event streams runWatched's
	// watchers read: another replica on the same database.
	watchVia *server
}

// startServer starts bin/ci-server with the image and extra flags and waits
// until /healthz answers.
func startServer(ctx context.Context, cfg *config, extra ...string) (*server, error) {
	dir, err := os.MkdirTemp(cfg.dataParent, "ci-bench-load-")
	if err != nil {
		return nil, fmt.Errorf("start server: %w", err)
	}
	port, err := freePort()
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("start server: %w", err)
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	s := &server{
		url:     "http://" + addr,
		dir:     dir,
		logPath: filepath.Join(dir, "server.log"),
		exited:  make(chan struct{}),
	}
	logFile, err := os.Create(s.logPath)
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("start server: %w", err)
	}
	args := append([]string{"--addr", addr, "--data", filepath.Join(dir, "data"),
		"--image", cfg.image, "--log-level", "warn"}, extra...)
	args = append(args, cfg.serverArgs...)
	s.cmd = exec.Command(filepath.Join(cfg.bin, "ci-server"), args...)
	s.cmd.Stdout, s.cmd.Stderr = logFile, logFile
	if err := s.cmd.Start(); err != nil {
		logFile.Close()
		os.RemoveAll(dir)
		return nil, fmt.Errorf("start server: %w (run `make build` first)", err)
	}
	go func() {
		s.cmd.Wait()
		logFile.Close()
		close(s.exited)
	}()
	// Event streams are long: no client timeout. Many watchers dial at
	// once: no limit on connections per host.
	s.client = client.New(s.url, client.WithHTTPClient(&http.Client{}))

	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(s.url + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return s, nil
			}
		}
		select {
		case <-s.exited:
			s.stop()
			return nil, fmt.Errorf("start server: ci-server exited: %s", s.logTail())
		case <-ctx.Done():
			s.stop()
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.stop()
			return nil, fmt.Errorf("start server: /healthz did not answer within 30 s: %s", s.logTail())
		}
	}
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// pid is the server's process id.
func (s *server) pid() int { return s.cmd.Process.Pid }

// memKB returns a field of /proc/<pid>/status in KiB: VmRSS (resident now)
// or VmHWM (peak resident).
func (s *server) memKB(field string) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", s.pid()))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), ":")
		if !ok || name != field {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(value), " kB"), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("parse %s %q: %w", field, value, err)
		}
		return n, nil
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", field, s.pid())
}

// cpu returns the CPU time (user + system) the server has used.
func (s *server) cpu() time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", s.pid()))
	if err != nil {
		return 0
	}
	// The fields after the command name, which is in parentheses: utime
	// and stime are the 12th and 13th, in clock ticks (100 a second).
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	k, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+k) * 10 * time.Millisecond
}

// selfCPU returns the CPU time (user + system) this process has used.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// logTail returns the end of the server's log.
func (s *server) logTail() string {
	b, _ := os.ReadFile(s.logPath)
	b = bytes.TrimSpace(b)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	if len(b) == 0 {
		return "(no log output)"
	}
	return string(b)
}

// submit uploads a project zip and returns the job ID.
func (s *server) submit(ctx context.Context, zip []byte, timeout time.Duration) (string, error) {
	j, err := s.client.SubmitWith(ctx, bytes.NewReader(zip), client.SubmitOptions{Timeout: timeout})
	if err != nil {
		return "", err
	}
	s.jobs = append(s.jobs, j.ID)
	return j.ID, nil
}

// wait polls job id until it has ended and returns it.
func (s *server) wait(ctx context.Context, id string, within time.Duration) (*client.Job, error) {
	deadline := time.Now().Add(within)
	for {
		j, err := s.client.Job(ctx, id)
		if err != nil {
			return nil, err
		}
		if j.Terminal() {
			return j, nil
		}
		if time.Now().After(deadline) {
			return j, fmt.Errorf("job %s still %s after %s", id, j.Status, within)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// stop ends the server (SIGTERM, then SIGKILL after 20 s), removes any
// container left of its jobs and its data dir.
func (s *server) stop() {
	if s.cmd.Process != nil {
		s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.exited:
		case <-time.After(20 * time.Second):
			s.cmd.Process.Kill()
			<-s.exited
		}
	}
	for _, id := range s.jobs {
		out, err := exec.Command("docker", "ps", "-aq", "--filter", "label=ci.job="+id).Output()
		if err != nil || len(bytes.TrimSpace(out)) == 0 {
			continue
		}
		args := append([]string{"rm", "-fv"}, strings.Fields(string(out))...)
		if err := exec.Command("docker", args...).Run(); err != nil {
			fmt.Fprintf(os.Stderr, "load: remove containers of job %s: %v\n", id, err)
		}
	}
	os.RemoveAll(s.dir)
}

// errServerDied is returned when the server process is gone mid-benchmark.
var errServerDied = errors.New("ci-server exited")

// alive returns errServerDied with the log's tail once the server exited.
func (s *server) alive() error {
	select {
	case <-s.exited:
		return fmt.Errorf("%w: %s", errServerDied, s.logTail())
	default:
		return nil
	}
}
