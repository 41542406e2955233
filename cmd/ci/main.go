// Command ci runs a Python project's tests on ci-server: it zips the
// project, uploads it, streams pytest's output back as it happens and exits
// with pytest's exit code. See `ci help`.
package main

import (
	"context"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop() // a second Ctrl-C kills ci at once
	}()
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// Exit codes of ci besides the job's own (see client.ExitCode).
const (
	exitOK          = 0
	exitNotFound    = 1   // ci status/wait of an unknown job
	exitUsage       = 64  // bad command line
	exitSystem      = 125 // ci could not run the tests: server unreachable, upload rejected, ...
	exitInterrupted = 130 // Ctrl-C
)

const defaultServer = "http://localhost:8000"

// run is ci without the process around it: it parses args, does the
// command, writes to stdout and stderr and returns the exit code. When ctx
// is canceled (Ctrl-C) it detaches and returns 130.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	c := &cli{stdout: stdout, stderr: stderr, server: defaultServer}
	if s := os.Getenv("CI_SERVER"); s != "" {
		c.server = s
	}
	return c.main(ctx, args)
}
