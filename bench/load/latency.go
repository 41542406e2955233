package main

import (
	"context"
	"fmt"
	"time"
)

// latency is benchmark 2: the time from a test's write of a line to a
// WebSocket client's receipt of it, with 1 and with 100 watchers.
func (b *bench) latency(ctx context.Context) error {
	cfg := b.cfg
	fmt.Printf("\n== 2. Output latency: %d lines, one every %s, write -> WebSocket receipt (load %s) ==\n",
		cfg.latencyLines, cfg.latencyInterval, loadavg())
	s, err := startServer(ctx, cfg, "--concurrency", "1")
	if err != nil {
		return err
	}
	defer s.stop()
	zip, err := zipFiles(ctx, map[string]string{
		"pytest.ini":      pytestINI,
		"test_latency.py": pacedTest(cfg.latencyLines, cfg.latencyInterval),
	})
	if err != nil {
		return err
	}
	fmt.Printf("%-9s %-8s %-15s %-10s %-10s %-10s %-9s %s\n", "watchers", "lines", "events/watcher", "p50", "p99", "max", "job wall", "CPU: server, watchers")
	for _, n := range cfg.latencyWatchers {
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
		fmt.Printf("%-9d %-8d %-15d %-10s %-10s %-10s %-9s %.2f s, %.2f s\n", n, p.n, r.watchers[0].events,
			ms(p.p50), ms(p.p99), ms(p.max), r.wall.Round(time.Millisecond), r.serverCPU.Seconds(), r.clientCPU.Seconds())
		if n == 1 {
			b.target(p.p99 <= 10*time.Millisecond, "2. latency p99, 1 watcher: %s (target <= 10 ms)", ms(p.p99))
		} else {
			b.note("2. latency p99, %d watchers: %s (no target)", n, ms(p.p99))
		}
	}
	return nil
}
