package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"

	"ci/executor"
)

// depsCommand runs "ci-server deps list|prune": the dependency cache's
// housekeeping by hand, on the engine of DOCKER_HOST (the server's), with
// the last-use times of the server's data dir. It returns the exit code.
func depsCommand(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := pflag.NewFlagSet("ci-server deps", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	dataDir := fs.String("data", "./data", "the server's data directory (for when each entry was last used)")
	asJSON := fs.Bool("json", false, "list: print JSON")
	unusedFor := fs.Duration("unused-for", 0, "prune: only entries not used for this long (default: every entry not in use)")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: ci-server deps list [--json] [--data DIR]\n"+
			"       ci-server deps prune [--unused-for DURATION] [--data DIR]\n\n"+
			"Lists or removes the cached dependency venvs (Docker volumes ci-deps-*) that jobs with a\n"+
			"requirements.txt use. Entries a container uses are never removed. Flags:\n%s", fs.FlagUsages())
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(stderr, "ci-server deps:", err)
		return 64
	}
	if fs.NArg() != 1 || fs.Arg(0) != "list" && fs.Arg(0) != "prune" {
		fmt.Fprintln(stderr, "ci-server deps: want list or prune (see ci-server deps --help)")
		return 64
	}
	d, err := executor.NewDocker(executor.DockerConfig{Deps: depsConfig(*dataDir, "", 0, 0)})
	if err != nil {
		fmt.Fprintln(stderr, "ci-server deps:", err)
		return 1
	}
	defer d.Close()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	if err := d.Ping(ctx); err != nil {
		fmt.Fprintln(stderr, "ci-server deps:", err)
		return 1
	}
	if fs.Arg(0) == "list" {
		list, err := d.DepsEntries(ctx)
		if err != nil {
			fmt.Fprintln(stderr, "ci-server deps:", err)
			return 1
		}
		if *asJSON {
			if list == nil {
				list = []executor.DepsEntry{}
			}
			enc := json.NewEncoder(stdout)
			enc.SetIndent("", "  ")
			if err := enc.Encode(list); err != nil {
				fmt.Fprintln(stderr, "ci-server deps:", err)
				return 1
			}
			return 0
		}
		printDeps(stdout, list)
		return 0
	}
	removed, err := d.PruneDeps(ctx, executor.PruneOptions{UnusedFor: *unusedFor})
	var total int64
	for _, e := range removed {
		total += e.Size
		fmt.Fprintf(stdout, "removed %s (%s)\n", e.Key[:12], humanBytes(e.Size))
	}
	fmt.Fprintf(stdout, "%d entries removed, %s freed\n", len(removed), humanBytes(total))
	if err != nil {
		fmt.Fprintln(stderr, "ci-server deps:", err)
		return 1
	}
	return 0
}

// printDeps prints the cache as a table, least recently used first.
func printDeps(w io.Writer, list []executor.DepsEntry) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "KEY\tSIZE\tLAST USED\tINSTALLED BY\tSTATE")
	for _, e := range list {
		state := "ready"
		if !e.Ready {
			state = "incomplete"
		}
		if e.InUse > 0 {
			state += fmt.Sprintf(", in use by %d", e.InUse)
		}
		used := "-"
		if !e.LastUsed.IsZero() {
			used = e.LastUsed.Local().Format("2006-01-02 15:04:05")
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", e.Key[:12], humanBytes(e.Size), used, e.Job, state)
	}
	tw.Flush()
	if len(list) == 0 {
		fmt.Fprintln(w, "(no cached dependencies)")
	}
}

// humanBytes formats n bytes with one decimal in the largest fitting
// binary unit.
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
