package main

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"net/url"
	"slices"
	"time"

	"ci/client"

	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" database/sql driver
)

// replicas measures output latency across replicas: two ci-servers share
// a PostgreSQL database (a schema made for the run), replica A runs the
// latency test and the watchers read it from replica B, so that every
// event goes A -> PostgreSQL (commit, NOTIFY) -> B (read back) -> watcher.
// For comparison, the same with the watchers on A.
func (b *bench) replicas(ctx context.Context) error {
	cfg := b.cfg
	if cfg.postgres == "" {
		b.note("replicas: skipped (no --postgres or $CI_TEST_POSTGRES)")
		return nil
	}
	fmt.Printf("\n== Replicas: latency through the replica that does not run the job, %d lines, one every %s (load %s) ==\n",
		cfg.latencyLines, cfg.latencyInterval, loadavg())
	dsn, drop, err := benchSchema(ctx, cfg.postgres)
	if err != nil {
		return err
	}
	defer drop()
	zip, err := zipFiles(ctx, map[string]string{
		"pytest.ini":      pytestINI,
		"test_latency.py": pacedTest(cfg.latencyLines, cfg.latencyInterval),
	})
	if err != nil {
		return err
	}
	blockZip, err := zipFiles(ctx, map[string]string{"test_block.py": blockerTest})
	if err != nil {
		return err
	}
	// B first, kept busy by a blocker of its own: it runs nothing else,
	// so A (concurrency 1 too) runs every measured job.
	rb, err := startServer(ctx, cfg, "--db", dsn, "--replica", "bench-b", "--concurrency", "1", "--warm", "0")
	if err != nil {
		return err
	}
	defer rb.stop()
	blocker, err := rb.submit(ctx, blockZip, 30*time.Minute)
	if err != nil {
		return fmt.Errorf("submit B's blocker: %w", err)
	}
	if j, err := waitStatus(ctx, rb, blocker, client.StatusRunning); err != nil {
		return fmt.Errorf("blocker of replica B: %w", err)
	} else if j.Replica != "bench-b" {
		return fmt.Errorf("blocker of replica B runs on %q", j.Replica)
	}
	defer rb.client.Cancel(context.WithoutCancel(ctx), blocker)
	ra, err := startServer(ctx, cfg, "--db", dsn, "--replica", "bench-a", "--concurrency", "1")
	if err != nil {
		return err
	}
	defer ra.stop()

	fmt.Printf("%-28s %-8s %-10s %-10s %-10s\n", "watchers", "lines", "p50", "p99", "max")
	for _, via := range []*server{ra, rb} {
		ra.watchVia = via
		name := "on A (runs the job)"
		if via == rb {
			name = "on B (through PostgreSQL)"
		}
		var p99s []time.Duration
		for range cfg.latencyRuns {
			r, err := runWatched(ctx, ra, zip, 1, true, cfg.latencyLines)
			if err != nil {
				return fmt.Errorf("watcher %s: %w", name, err)
			}
			if err := r.checkAll(int64(cfg.latencyLines)); err != nil {
				b.failf("replicas, watcher %s: %v", name, err)
				continue
			}
			if r.job.Replica != "bench-a" {
				b.failf("replicas: the measured job ran on %q, want bench-a", r.job.Replica)
			}
			p := percentilesOf(r.latencies())
			p99s = append(p99s, p.p99)
			fmt.Printf("%-28s %-8d %-10s %-10s %-10s\n", name, p.n, ms(p.p50), ms(p.p99), ms(p.max))
		}
		if len(p99s) > 0 {
			slices.Sort(p99s)
			b.note("replicas: latency p99, 1 watcher %s: median of %d runs %s, worst run %s (no target)",
				name, len(p99s), ms(p99s[(len(p99s)-1)/2]), ms(p99s[len(p99s)-1]))
		}
	}
	return nil
}

// benchSchema creates a schema of its own for the run in the database
// base names and returns a URL that uses it, and a function that drops
// it.
func benchSchema(ctx context.Context, base string) (string, func(), error) {
	u, err := url.Parse(base)
	if err != nil {
		return "", nil, fmt.Errorf("--postgres: %w", err)
	}
	var r [6]byte
	rand.Read(r[:])
	schema := "bench_" + hex.EncodeToString(r[:])
	db, err := sql.Open("pgx", base)
	if err != nil {
		return "", nil, err
	}
	if _, err := db.ExecContext(ctx, "CREATE SCHEMA "+schema); err != nil {
		db.Close()
		return "", nil, fmt.Errorf("create schema: %w", err)
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	drop := func() {
		defer db.Close()
		if _, err := db.ExecContext(context.Background(), "DROP SCHEMA "+schema+" CASCADE"); err != nil {
			fmt.Printf("replicas: drop schema %s: %v\n", schema, err)
		}
	}
	return u.String(), drop, nil
}
