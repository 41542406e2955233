package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"time"
)

// latency is benchmark 2: the time from a test's write of a line to a
// WebSocket client's receipt of it, with 1 and with 100 watchers, each
// measured cfg.latencyRuns times. For comparison it first measures the
// same test under a bare `docker run` whose output this process reads
// from the docker CLI: the engine's own attach stream, without ci.
func (b *bench) latency(ctx context.Context) error {
	cfg := b.cfg
	fmt.Printf("\n== 2. Output latency: %d lines, one every %s, write -> receipt, %d runs each (load %s) ==\n",
		cfg.latencyLines, cfg.latencyInterval, cfg.latencyRuns, loadavg())
	files := map[string]string{
		"pytest.ini":      pytestINI,
		"test_latency.py": pacedTest(cfg.latencyLines, cfg.latencyInterval),
	}
	zip, err := zipFiles(ctx, files)
	if err != nil {
		return err
	}
	fmt.Printf("%-22s %-8s %-7s %-10s %-10s %-10s %s\n", "reader", "lines", "events", "p50", "p99", "max", "CPU over the job: server, watchers")
	for range cfg.latencyRuns {
		p, err := dockerLatency(ctx, cfg, files)
		if err != nil {
			b.failf("latency under docker run: %v", err)
			break
		}
		fmt.Printf("%-22s %-8d %-7s %-10s %-10s %-10s\n", "docker run (no ci)", p.n, "-", ms(p.p50), ms(p.p99), ms(p.max))
	}

	s, err := startServer(ctx, cfg, "--concurrency", "1")
	if err != nil {
		return err
	}
	defer s.stop()
	for _, n := range cfg.latencyWatchers {
		var p99s []time.Duration
		for range cfg.latencyRuns {
			r, err := runWatched(ctx, s, zip, n, true, cfg.latencyLines)
			if err != nil {
				return fmt.Errorf("%d watchers: %w", n, err)
			}
			if r.connected < n {
				b.failf("latency: %d of %d watchers connected: %v", r.connected, n, r.dialErr)
			}
			if err := r.checkAll(int64(cfg.latencyLines)); err != nil {
				b.failf("latency, %d watchers: %v", n, err)
				continue
			}
			p := percentilesOf(r.latencies())
			p99s = append(p99s, p.p99)
			fmt.Printf("%-22s %-8d %-7d %-10s %-10s %-10s %.2f s, %.2f s\n", fmt.Sprintf("ci, %d watcher(s)", n), p.n, r.watchers[0].events,
				ms(p.p50), ms(p.p99), ms(p.max), r.serverCPU.Seconds(), r.clientCPU.Seconds())
		}
		if len(p99s) == 0 {
			continue
		}
		slices.Sort(p99s)
		mid, worst := p99s[(len(p99s)-1)/2], p99s[len(p99s)-1] // the lower median
		if n == 1 {
			b.target(mid <= 10*time.Millisecond, "2. latency p99, 1 watcher: median of %d runs %s, worst run %s (target <= 10 ms)",
				len(p99s), ms(mid), ms(worst))
		} else {
			b.note("2. latency p99, %d watchers: median of %d runs %s, worst run %s (no target)", n, len(p99s), ms(mid), ms(worst))
		}
	}
	return nil
}

// dockerLatency runs the latency test under `docker run` and measures
// each line from its write to this process's read of it from the docker
// CLI's stdout.
func dockerLatency(ctx context.Context, cfg *config, files map[string]string) (percentiles, error) {
	tmp, err := os.MkdirTemp("", "ci-bench-latency-")
	if err != nil {
		return percentiles{}, err
	}
	defer os.RemoveAll(tmp)
	dir, err := writeProject(tmp, "latency", files)
	if err != nil {
		return percentiles{}, err
	}
	cmd := exec.CommandContext(ctx, "docker", dockerRunArgs(cfg, dir)...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return percentiles{}, err
	}
	if err := cmd.Start(); err != nil {
		return percentiles{}, err
	}
	w := &watcher{timestamps: true, lat: make([]int32, 0, cfg.latencyLines)}
	br := bufio.NewReaderSize(out, 64<<10)
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 {
			w.line(line, time.Now())
		}
		if err != nil {
			break
		}
	}
	if err := cmd.Wait(); err != nil {
		return percentiles{}, fmt.Errorf("docker run: %w", err)
	}
	if w.err == nil && w.lines != int64(cfg.latencyLines) {
		w.err = fmt.Errorf("%d marker lines, want %d", w.lines, cfg.latencyLines)
	}
	return percentilesOf(w.lat), w.err
}

// dockerRunArgs are the arguments of `docker` that run pytest on the
// project in dir as bare as the comparison wants: the image, no network,
// the project read-only, unbuffered output like ci's containers.
func dockerRunArgs(cfg *config, dir string) []string {
	return []string{"run", "--rm", "--network", "none",
		"-e", "PYTHONUNBUFFERED=1", "-e", "PYTHONDONTWRITEBYTECODE=1",
		"-v", dir + ":/workspace:ro", "-w", "/workspace", cfg.image,
		"python", "-m", "pytest", "-p", "no:cacheprovider"}
}
