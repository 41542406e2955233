package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// flood is benchmark 3: a test that prints as fast as it can, end to end
// through the CLI against a bare docker run; then a larger flood to one
// watcher, with ci-server's peak memory.
func (b *bench) flood(ctx context.Context) error {
	if b.cfg.pairs > 0 {
		if err := b.floodCLI(ctx); err != nil {
			return err
		}
	}
	for _, block := range []int{1, 1000} {
		if err := b.floodWatcher(ctx, block); err != nil {
			return err
		}
	}
	return nil
}

// floodCLI times `ci submit test` (stdout to /dev/null) against `docker run
// --rm --network none` of the same files, interleaved.
func (b *bench) floodCLI(ctx context.Context) error {
	cfg := b.cfg
	fmt.Printf("\n== 3a. Flood: %d lines of 60 bytes, `ci submit test` vs `docker run`, %d pairs (load %s) ==\n",
		cfg.floodLines, cfg.pairs, loadavg())
	tmp, err := os.MkdirTemp("", "ci-bench-flood-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	dir, err := writeProject(tmp, "flood", map[string]string{
		"pytest.ini":    pytestINI,
		"test_flood.py": floodTest(cfg.floodLines, 1),
	})
	if err != nil {
		return err
	}
	s, err := startServer(ctx, cfg)
	if err != nil {
		return err
	}
	defer s.stop()

	ci, err := filepath.Abs(filepath.Join(cfg.bin, "ci"))
	if err != nil {
		return err
	}
	// run runs a command with stdout to w (nil: /dev/null) and returns its
	// wall time.
	run := func(w io.Writer, name string, args ...string) (time.Duration, error) {
		var stderr bytes.Buffer
		cmd := exec.CommandContext(ctx, name, args...)
		cmd.Stdout, cmd.Stderr = w, &stderr
		t0 := time.Now()
		err := cmd.Run()
		d := time.Since(t0)
		if err != nil {
			return d, fmt.Errorf("%s %s: %v: %s", filepath.Base(name), args[0], err, tail(stderr.String()))
		}
		return d, nil
	}
	ciRun := func(w io.Writer) (time.Duration, error) {
		return run(w, ci, "submit", "test", "--dir", dir, "--server", s.url)
	}
	dockerRun := func(w io.Writer) (time.Duration, error) {
		return run(w, "docker", dockerRunArgs(cfg, dir)...)
	}

	// The warm-up runs, not timed, check the output of both.
	for _, r := range []struct {
		name string
		run  func(io.Writer) (time.Duration, error)
	}{{"ci submit test", ciRun}, {"docker run", dockerRun}} {
		var out bytes.Buffer
		if _, err := r.run(&out); err != nil {
			return err
		}
		n, err := bytesLines(out.Bytes())
		if err == nil && n != int64(cfg.floodLines) {
			err = fmt.Errorf("%d marker lines, want %d", n, cfg.floodLines)
		}
		if err != nil {
			b.failf("flood: %s output: %v", r.name, err)
			return nil
		}
	}
	fmt.Printf("warm-up: both outputs hold all %d lines in order\n", cfg.floodLines)

	var cis, dockers, ratios []float64
	for i := 1; i <= cfg.pairs; i++ {
		c, err := ciRun(nil)
		if err != nil {
			return err
		}
		d, err := dockerRun(nil)
		if err != nil {
			return err
		}
		cis, dockers = append(cis, c.Seconds()), append(dockers, d.Seconds())
		ratios = append(ratios, c.Seconds()/d.Seconds())
		fmt.Printf("pair %d: ci %.3f s  docker run %.3f s  ratio %.2f\n", i, c.Seconds(), d.Seconds(), c.Seconds()/d.Seconds())
	}
	ratio := median(ratios)
	fmt.Printf("median: ci %.3f s  docker run %.3f s  ratio %.2f (targets <= 1.5, aim <= 1.2)\n",
		median(cis), median(dockers), ratio)
	b.target(ratio <= 1.5, "3. flood %d lines, ci / docker run median ratio: %.2f (target <= 1.5; aim <= 1.2: %s)",
		cfg.floodLines, ratio, metOrNot(ratio <= 1.2))
	return s.alive()
}

// floodWatcher floods one WebSocket watcher, block lines per write, and
// reports lines per second and ci-server's peak RSS.
func (b *bench) floodWatcher(ctx context.Context, block int) error {
	cfg := b.cfg
	fmt.Printf("\n== 3b. Flood: %d lines of 60 bytes, %d per write, to one WebSocket watcher (load %s) ==\n",
		cfg.bigLines, block, loadavg())
	// The output passes the default 50 MiB cap: raise it, so every line is
	// kept and streamed.
	s, err := startServer(ctx, cfg, "--concurrency", "1", "--max-output", sizeFlag(1<<30))
	if err != nil {
		return err
	}
	defer s.stop()
	zip, err := zipFiles(ctx, map[string]string{
		"pytest.ini":    pytestINI,
		"test_flood.py": floodTest(cfg.bigLines, block),
	})
	if err != nil {
		return err
	}
	r, err := runWatched(ctx, s, zip, 1, false, cfg.bigLines)
	if err != nil {
		return err
	}
	if err := r.checkAll(int64(cfg.bigLines)); err != nil {
		b.failf("flood to one watcher: %v", err)
		return nil
	}
	w := r.watchers[0]
	span := w.last.Sub(w.first)
	rate := float64(cfg.bigLines-1) / span.Seconds()
	fmt.Printf("all %d lines received in order, once each, in %d events (%.0f lines per event)\n",
		cfg.bigLines, w.events, float64(cfg.bigLines)/float64(w.events))
	fmt.Printf("first to last line at the watcher: %.3f s = %.0f lines/s (%.1f MB/s)\n",
		span.Seconds(), rate, rate*60/1e6)
	for _, l := range w.stderr {
		fmt.Printf("the test says: %s\n", strings.TrimSpace(l[strings.Index(l, "ci-bench-"):]))
	}
	fmt.Printf("job released to stream end: %.3f s; CPU over it: ci-server %.2f s, watcher %.2f s\n",
		r.wall.Seconds(), r.serverCPU.Seconds(), r.clientCPU.Seconds())
	fmt.Printf("ci-server RSS: %s before, peak (VmHWM) %s (target <= 200 MB)\n", mib(r.rssBefore), mib(r.hwmAfter))
	b.note("3. flood %d lines (%d per write) to one watcher: %.0f lines/s", cfg.bigLines, block, rate)
	b.target(r.hwmAfter*1024 <= 200e6, "3. flood %d lines (%d per write), ci-server peak RSS: %s (target <= 200 MB)",
		cfg.bigLines, block, mib(r.hwmAfter))
	return nil
}

// tail returns the last few hundred bytes of s.
func tail(s string) string {
	s = strings.TrimSpace(s)
	if len(s) > 600 {
		s = "..." + s[len(s)-600:]
	}
	return s
}
