package main

import (
	"context"
	"fmt"
)

// fdReserve is what each process keeps of its fd limit for other files
// (the server's database, Docker connections, the client's own).
const fdReserve = 256

// fanout is benchmark 4: many watchers on one job; each must get every
// event. It reports server memory per connection and latency across all.
func (b *bench) fanout(ctx context.Context) error {
	cfg := b.cfg
	fmt.Printf("\n== 4. Fan-out: one job printing %d lines, one every %s, to N watchers (load %s) ==\n",
		cfg.fanoutLines, cfg.fanoutInterval, loadavg())
	zip, err := zipFiles(ctx, map[string]string{
		"pytest.ini":     pytestINI,
		"test_fanout.py": pacedTest(cfg.fanoutLines, cfg.fanoutInterval),
	})
	if err != nil {
		return err
	}
	// Each watcher takes one fd here and one in ci-server, which inherits
	// this process's limit.
	maxWatchers := fdLimit() - fdReserve
	largest := 0
	for _, n := range cfg.fanoutWatchers {
		if n > maxWatchers {
			fmt.Printf("%d watchers: over the fd limit (%d per process, %d kept for other files): running %d\n",
				n, fdLimit(), fdReserve, maxWatchers)
			n = maxWatchers
		}
		r, err := b.fanoutRun(ctx, zip, n)
		if err != nil {
			return fmt.Errorf("%d watchers: %w", n, err)
		}
		if r.connected < n {
			fmt.Printf("%d watchers: only %d connected; first error: %v\n", n, r.connected, r.dialErr)
			b.target(false, "4. fan-out to %d watchers: %d reached", n, r.connected)
		}
		if r.connected > largest {
			largest = r.connected
		}
	}
	b.note("4. fan-out: largest watcher count reached: %d", largest)
	return nil
}

// fanoutRun runs one fan-out with n watchers on a fresh server.
func (b *bench) fanoutRun(ctx context.Context, zip []byte, n int) (*watchedRun, error) {
	cfg := b.cfg
	s, err := startServer(ctx, cfg, "--concurrency", "1")
	if err != nil {
		return nil, err
	}
	defer s.stop()
	r, err := runWatched(ctx, s, zip, n, true, cfg.fanoutLines)
	if err != nil {
		return nil, err
	}
	if err := r.checkAll(int64(cfg.fanoutLines)); err != nil {
		b.failf("fan-out, %d watchers: %v", n, err)
		return r, nil
	}
	var events int64
	for _, w := range r.watchers {
		events += w.events
	}
	p := percentilesOf(r.latencies())
	perConn := float64(r.rssLive-r.rssBefore) / float64(r.connected)
	perConnPeak := float64(r.hwmAfter-r.rssBefore) / float64(r.connected)
	fmt.Printf("%d watchers: all got all %d events (%d lines) in order and the terminal status; connecting took %.2f s\n",
		r.connected, r.job.LastSeq, cfg.fanoutLines, r.connect.Seconds())
	fmt.Printf("  ci-server RSS: %s before, %s with all connected (%.1f KiB per connection), peak %s (%.1f KiB per connection)\n",
		mib(r.rssBefore), mib(r.rssLive), perConn, mib(r.hwmAfter), perConnPeak)
	fmt.Printf("  latency over %d lines: p50 %s  p99 %s  max %s\n", p.n, ms(p.p50), ms(p.p99), ms(p.max))
	fmt.Printf("  %d messages in %.2f s (%.0f messages/s); CPU over it: ci-server %.2f s, watchers %.2f s\n",
		events, r.wall.Seconds(), float64(events)/r.wall.Seconds(), r.serverCPU.Seconds(), r.clientCPU.Seconds())
	b.note("4. fan-out %d watchers: %.1f KiB per connection (peak %.1f), latency p50 %s p99 %s max %s",
		r.connected, perConn, perConnPeak, ms(p.p50), ms(p.p99), ms(p.max))
	return r, s.alive()
}
