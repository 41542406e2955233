// Command load measures issue 7's benchmarks 2 to 5 against the real
// ci-server, which it starts (bin/ci-server, built beforehand) as a separate
// process on a free loopback port with a temporary data dir:
//
//	go run ./bench/load [flags] [latency] [flood] [fanout] [upload]
//
// (all four when none is named). It needs a Docker engine and the image
// (--image, default $CI_TEST_IMAGE or ci-python:latest).
//
//   - latency: from a test's write of a line (time.time_ns() in the line) to
//     a WebSocket client's receipt of the event holding its newline; p50,
//     p99 and max with 1 and with 100 watchers.
//   - flood: 200,000 lines through `ci submit test` against a bare `docker
//     run` of the same files, interleaved pairs; then 1,000,000 lines to one
//     watcher: lines per second and ci-server's peak RSS.
//   - fanout: 200, 2,000 and 10,000 (or as many as the fd limit allows)
//     watchers on one job: every watcher gets every event; server memory
//     per connection; latency across all watchers.
//   - upload: a 200 MiB incompressible project streamed through the client
//     library: ci-server's RSS growth.
//
// Every watcher checks its stream (seqs gapless from 1, every marker line
// once and in order, terminal status, normal close); a correctness failure
// makes the exit status 1. Missed performance targets are reported, not
// failed.
package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"syscall"
	"time"

	"github.com/spf13/pflag"
)

// config is the benchmark's settings, from flags.
type config struct {
	bin        string
	image      string
	dataParent string // where the servers' temporary data dirs go

	latencyLines    int
	latencyInterval time.Duration
	latencyWatchers []int
	latencyRuns     int

	pairs      int
	floodLines int
	bigLines   int

	fanoutLines    int
	fanoutInterval time.Duration
	fanoutWatchers []int

	uploadMiB int

	cpuProfile string
	serverArgs []string // more flags for every ci-server

	postgres string // database of the replica benchmark
}

// bench runs the benchmarks and collects their verdicts.
type bench struct {
	cfg      *config
	targets  []string // one line per performance target or noted figure
	failures []string // correctness failures
}

// failf reports a correctness failure.
func (b *bench) failf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	fmt.Printf("FAIL: %s\n", msg)
	b.failures = append(b.failures, msg)
}

// target records whether a performance target is met.
func (b *bench) target(ok bool, format string, args ...any) {
	line := fmt.Sprintf(format, args...) + ": " + metOrNot(ok)
	b.targets = append(b.targets, line)
}

// note records a figure that has no target, for the summary.
func (b *bench) note(format string, args ...any) {
	b.targets = append(b.targets, fmt.Sprintf(format, args...))
}

func main() {
	image := os.Getenv("CI_TEST_IMAGE")
	if image == "" {
		image = "ci-python:latest"
	}
	cfg := &config{}
	fs := pflag.NewFlagSet("load", pflag.ContinueOnError)
	fs.StringVar(&cfg.bin, "bin", "bin", "directory holding ci and ci-server (go build -o bin/ ./cmd/ci ./cmd/ci-server)")
	fs.StringVar(&cfg.image, "image", image, "image the tests run in (default $CI_TEST_IMAGE, else ci-python:latest)")
	fs.StringVar(&cfg.dataParent, "data-parent", "", "directory for the servers' temporary data dirs (default $TMPDIR or /tmp; /dev/shm takes disk syncs out)")
	fs.IntVar(&cfg.latencyLines, "latency-lines", 2000, "lines the latency test prints")
	fs.DurationVar(&cfg.latencyInterval, "latency-interval", 2*time.Millisecond, "pace of the latency test's lines")
	fs.IntSliceVar(&cfg.latencyWatchers, "latency-watchers", []int{1, 100}, "watcher counts of the latency benchmark")
	fs.IntVar(&cfg.latencyRuns, "latency-runs", 3, "runs of each latency measurement (the target is judged on the median p99)")
	fs.IntVar(&cfg.pairs, "pairs", 5, "interleaved ci / docker run pairs of the flood benchmark (0 skips that part)")
	fs.IntVar(&cfg.floodLines, "flood-lines", 200_000, "lines of the ci / docker run flood")
	fs.IntVar(&cfg.bigLines, "big-lines", 1_000_000, "lines of the flood to one watcher")
	fs.IntVar(&cfg.fanoutLines, "fanout-lines", 1000, "lines the fan-out test prints")
	fs.DurationVar(&cfg.fanoutInterval, "fanout-interval", 5*time.Millisecond, "pace of the fan-out test's lines")
	fs.IntSliceVar(&cfg.fanoutWatchers, "fanout-watchers", []int{200, 2000, 10000}, "watcher counts of the fan-out benchmark (capped by the fd limit)")
	fs.IntVar(&cfg.uploadMiB, "upload-mib", 200, "size of the uploaded project's data in MiB")
	fs.StringArrayVar(&cfg.serverArgs, "server-arg", nil, "a further flag for every ci-server started, e.g. --server-arg=--pprof=127.0.0.1:6060 (repeatable)")
	fs.StringVar(&cfg.cpuProfile, "cpuprofile", "", "write this program's (the watchers') CPU profile to the file")
	fs.StringVar(&cfg.postgres, "postgres", os.Getenv("CI_TEST_POSTGRES"),
		"PostgreSQL URL for the replicas benchmark, whose user may create schemas (default $CI_TEST_POSTGRES; none skips it)")
	fs.Usage = func() {
		fmt.Fprintf(os.Stderr, "Usage: load [flags] [latency] [flood] [fanout] [upload] [replicas]\n\n%s", fs.FlagUsages())
	}
	if err := fs.Parse(os.Args[1:]); err != nil {
		if err == pflag.ErrHelp {
			os.Exit(0)
		}
		os.Exit(64)
	}
	all := map[string]func(*bench, context.Context) error{
		"latency":  (*bench).latency,
		"flood":    (*bench).flood,
		"fanout":   (*bench).fanout,
		"upload":   (*bench).upload,
		"replicas": (*bench).replicas,
	}
	names := fs.Args()
	if len(names) == 0 {
		names = []string{"latency", "flood", "fanout", "upload", "replicas"}
	}
	for _, n := range names {
		if all[n] == nil {
			fmt.Fprintf(os.Stderr, "load: unknown benchmark %q (latency, flood, fanout, upload, replicas)\n", n)
			os.Exit(64)
		}
	}
	if _, err := os.Stat(filepath.Join(cfg.bin, "ci-server")); err != nil {
		fmt.Fprintf(os.Stderr, "load: %v (build first: go build -o bin/ ./cmd/ci ./cmd/ci-server)\n", err)
		os.Exit(1)
	}
	if err := exec.Command("docker", "image", "inspect", cfg.image).Run(); err != nil {
		fmt.Fprintf(os.Stderr, "load: image %s: %v (scripts/build-image builds it)\n", cfg.image, err)
		os.Exit(1)
	}
	raiseFDLimit()
	if cfg.cpuProfile != "" {
		f, err := os.Create(cfg.cpuProfile)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "load: cpu profile: %v\n", err)
			os.Exit(1)
		}
		defer pprof.StopCPUProfile()
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	b := &bench{cfg: cfg}
	fmt.Printf("load: image %s, %d CPUs, fd limit %d, load average %s, %s\n",
		cfg.image, runtime.NumCPU(), fdLimit(), loadavg(), time.Now().Format(time.RFC3339))
	for _, n := range names {
		if err := all[n](b, ctx); err != nil {
			b.failf("%s: %v", n, err)
		}
		if ctx.Err() != nil {
			break
		}
	}

	fmt.Printf("\n== Summary (load average now %s) ==\n", loadavg())
	for _, t := range b.targets {
		fmt.Println(t)
	}
	if len(b.failures) > 0 {
		fmt.Printf("%d correctness failure(s):\n", len(b.failures))
		for _, f := range b.failures {
			fmt.Println("  " + f)
		}
		pprof.StopCPUProfile()
		os.Exit(1)
	}
	fmt.Println("all correctness checks passed")
}

// raiseFDLimit raises the soft limit on open files to the hard limit; the
// ci-server started later inherits it.
func raiseFDLimit() {
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		return
	}
	if r.Cur < r.Max {
		r.Cur = r.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
			fmt.Fprintf(os.Stderr, "load: raise the fd limit: %v\n", err)
		}
	}
}

// fdLimit is the soft limit on open files.
func fdLimit() int {
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		return 1024
	}
	return int(min(r.Cur, 1<<30))
}

// sizeFlag formats a byte count for a ci-server flag.
func sizeFlag(n int64) string { return strconv.FormatInt(n, 10) }
