package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"

	"ci/client"
	"ci/internal/ansi"
)

// cli holds what every command needs.
type cli struct {
	stdout, stderr io.Writer
	server         string // --server, $CI_SERVER or defaultServer
}

// command is one subcommand of ci.
type command struct {
	usage string // the synopsis, without "usage: "
	help  string // what it does
	run   func(c *cli, ctx context.Context, args []string) int
}

var commands map[string]*command

func init() {
	commands = map[string]*command{
		"submit": {
			usage: "ci submit test [--async] [--timeout D] [--dir PATH] [--server URL] [-- PYTEST ARGS]",
			help: `Zips the project in --dir (leaving out dot-files, __pycache__ and what .gitignore
ignores), uploads it to ci-server, which runs pytest on it, and streams pytest's
output here as it happens. Exits with pytest's exit code. Arguments after --
are passed to pytest. Ctrl-C cancels the job (and still shows how it ended);
a second Ctrl-C leaves at once. A project with a requirements.txt first has
its dependencies installed: "==> install" and "==> test" on stderr mark
where pip's output ends and pytest's begins.`,
			run: (*cli).submit,
		},
		"wait": {
			usage: "ci wait <id> [--after N] [--server URL]",
			help: `Prints a job's output from event N on (all of it by default), follows it
until the job ends and exits like ci submit test.`,
			run: (*cli).wait,
		},
		"cancel": {
			usage: "ci cancel <id> [--server URL]",
			help:  `Cancels a job: a queued one at once, a running one within a few seconds.`,
			run:   (*cli).cancel,
		},
		"status": {
			usage: "ci status <id> [--json] [--server URL]",
			help:  `Shows a job's status. Exits 1 if there is no such job.`,
			run:   (*cli).status,
		},
		"list": {
			usage: "ci list [--limit N] [--before ID] [--server URL]",
			help:  `Lists jobs, newest first.`,
			run:   (*cli).list,
		},
	}
}

const mainUsage = `ci runs a Python project's tests with pytest on ci-server and streams the output.

Usage:
  ci submit test [--async] [--timeout D] [--dir PATH] [--server URL] [-- PYTEST ARGS]
  ci wait <id> [--after N] [--server URL]
  ci cancel <id> [--server URL]
  ci status <id> [--json] [--server URL]
  ci list [--limit N] [--before ID] [--server URL]
  ci help [command]

The server is --server URL, else $CI_SERVER, else ` + defaultServer + `.
A server started with --token needs $CI_TOKEN.

Exit codes: 0 tests passed; pytest's code when they failed (1 tests failed,
5 no tests collected, ...); 124 timed out; 125 ci could not run the tests;
130 canceled or interrupted; 64 bad command line.
`

// usageError prints a command-line problem with the right usage and
// returns 64. cmd is "" for ci itself.
func (c *cli) usageError(cmd string, format string, args ...any) int {
	fmt.Fprintf(c.stderr, "ci: "+format+"\n", args...)
	if cmd == "" {
		fmt.Fprintf(c.stderr, "usage: ci <submit|wait|status|list|help> ...\nRun 'ci help' for details.\n")
	} else {
		fmt.Fprintf(c.stderr, "usage: %s\nRun 'ci help %s' for details.\n", commands[cmd].usage, cmd)
	}
	return exitUsage
}

func (c *cli) main(ctx context.Context, args []string) int {
	fs := pflag.NewFlagSet("ci", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.SetInterspersed(false) // flags after the command are the command's
	fs.StringVar(&c.server, "server", c.server, "")
	help := fs.BoolP("help", "h", false, "")
	if err := fs.Parse(args); err != nil {
		return c.usageError("", "%v", err)
	}
	if *help {
		io.WriteString(c.stdout, mainUsage)
		return exitOK
	}
	if fs.NArg() == 0 {
		return c.usageError("", "missing command")
	}
	name, rest := fs.Arg(0), fs.Args()[1:]
	if name == "help" {
		return c.help(rest)
	}
	cmd, ok := commands[name]
	if !ok {
		return c.usageError("", "unknown command %q", name)
	}
	return cmd.run(c, ctx, rest)
}

func (c *cli) help(args []string) int {
	if len(args) == 0 {
		io.WriteString(c.stdout, mainUsage)
		return exitOK
	}
	if len(args) > 1 {
		return c.usageError("", "too many arguments to help")
	}
	if _, ok := commands[args[0]]; !ok {
		return c.usageError("", "no help for unknown command %q", args[0])
	}
	c.printHelp(args[0])
	return exitOK
}

// printHelp prints the help of command name, flags included, to stdout.
func (c *cli) printHelp(name string) {
	fs, _ := c.flags(name) // the flags it parses, for listing
	fmt.Fprintf(c.stdout, "usage: %s\n\n%s\n\nFlags:\n%s", commands[name].usage, commands[name].help, fs.FlagUsages())
}

// flags returns the flag set of command name, with the flags every command
// has (--server, --help) and those that name defines, and a pointer to the
// help flag's value.
func (c *cli) flags(name string) (*pflag.FlagSet, *bool) {
	fs := pflag.NewFlagSet("ci "+name, pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.SortFlags = false
	switch name {
	case "submit":
		fs.Bool("async", false, "print the job id and return without waiting for the job")
		fs.String("dir", ".", "the project directory to upload")
		fs.Duration("timeout", 0, "stop the tests after `D` (e.g. 90s, 10m); the server caps it")
	case "wait":
		fs.Int64("after", 0, "print only events after event `N`")
	case "status":
		fs.Bool("json", false, "print the job as JSON")
	case "list":
		fs.Int("limit", 20, "show at most `N` jobs")
		fs.String("before", "", "show jobs older than job `ID`")
	}
	fs.StringVar(&c.server, "server", c.server, "ci-server `URL`, else $CI_SERVER, else "+defaultServer)
	help := fs.BoolP("help", "h", false, "show this help")
	return fs, help
}

// parse parses the args of command name. done is true when the command
// should return code at once (help, or a usage error).
func (c *cli) parse(name string, args []string) (fs *pflag.FlagSet, code int, done bool) {
	fs, help := c.flags(name)
	if err := fs.Parse(args); err != nil {
		if name == "submit" && strings.Contains(err.Error(), "unknown") {
			return fs, c.usageError(name, "%v (pytest arguments go after --, e.g. ci submit test -- -k NAME)", err), true
		}
		return fs, c.usageError(name, "%v", err), true
	}
	if *help {
		c.printHelp(name)
		return fs, exitOK, true
	}
	if err := checkServer(c.server); err != nil {
		return fs, c.usageError(name, "%v", err), true
	}
	return fs, 0, false
}

// checkServer reports whether s is a usable server URL.
func checkServer(s string) error {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("invalid server URL %q: want http://host[:port]", s)
	}
	return nil
}

// client returns a client of the server, with a reconnect notice on stderr.
func (c *cli) client() *client.Client {
	return client.New(c.server, client.WithToken(os.Getenv("CI_TOKEN")), client.WithReconnectNotice(func(err error, attempt int, _ time.Duration) {
		if attempt == 1 {
			fmt.Fprintf(c.stderr, "ci: connection to ci-server lost (%v); reconnecting…\n", rootCause(err))
		}
	}))
}

// failure prints err, the failure of what (e.g. "submit", "job X"), and
// returns ci's exit code for it.
func (c *cli) failure(what string, err error) int {
	var apiErr *client.Error
	var opErr *net.OpError
	var dnsErr *net.DNSError
	switch {
	case errors.As(err, &apiErr):
		fmt.Fprintf(c.stderr, "ci: %s: %s\n", what, apiErr.Message)
		if client.IsNotFound(err) {
			return exitNotFound
		}
	case errors.As(err, &opErr), errors.As(err, &dnsErr):
		fmt.Fprintf(c.stderr, "ci: cannot reach ci-server at %s: %v; is it running? (make run)\n", c.server, rootCause(err))
	default:
		fmt.Fprintf(c.stderr, "ci: %s: %v\n", what, err)
	}
	return exitSystem
}

// rootCause returns the innermost network error in err, or err: the part
// of a long error chain that says what went wrong.
func rootCause(err error) error {
	var opErr *net.OpError
	var dnsErr *net.DNSError
	switch {
	case errors.As(err, &opErr):
		return opErr
	case errors.As(err, &dnsErr):
		return dnsErr
	}
	return err
}

// errUploadEnded stops the zipper when Submit returns before reading all.
var errUploadEnded = errors.New("upload ended")

func (c *cli) submit(ctx context.Context, args []string) int {
	fs, code, done := c.parse("submit", args)
	if done {
		return code
	}
	async, _ := fs.GetBool("async")
	dir, _ := fs.GetString("dir")
	timeout, _ := fs.GetDuration("timeout")
	pos, pytestArgs := fs.Args(), []string(nil)
	if n := fs.ArgsLenAtDash(); n >= 0 {
		pos, pytestArgs = pos[:n], pos[n:]
	}
	switch {
	case len(pos) == 0:
		return c.usageError("submit", "submit what? ('test' is the only thing to submit)")
	case pos[0] != "test":
		return c.usageError("submit", "cannot submit %q, only 'test'", pos[0])
	case len(pos) > 1:
		return c.usageError("submit", "unexpected argument %q; pytest arguments go after --, e.g. ci submit test -- %s",
			pos[1], strings.Join(pos[1:], " "))
	}
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return c.usageError("submit", "--dir %s: not a directory", dir)
	}
	if timeout < 0 {
		return c.usageError("submit", "--timeout %s: must be positive", timeout)
	}

	// The zip streams through a pipe into the upload: never all in memory.
	pr, pw := io.Pipe()
	type zipResult struct {
		files int
		err   error
	}
	zipped := make(chan zipResult, 1)
	go func() {
		n, err := client.ZipProject(ctx, dir, pw)
		pw.CloseWithError(err)
		zipped <- zipResult{n, err}
	}()
	job, err := c.client().SubmitWith(ctx, pr, client.SubmitOptions{Args: pytestArgs, Timeout: timeout})
	pr.CloseWithError(errUploadEnded)
	z := <-zipped
	switch {
	case ctx.Err() != nil:
		fmt.Fprintln(c.stderr, "ci: interrupted; nothing submitted")
		return exitInterrupted
	case z.err != nil && !errors.Is(z.err, errUploadEnded) && !errors.Is(z.err, io.ErrClosedPipe):
		fmt.Fprintf(c.stderr, "ci: %v\n", z.err)
		return exitSystem
	case err != nil:
		return c.failure("submit", err)
	}
	if z.files == 0 {
		fmt.Fprintf(c.stderr, "ci: warning: no files uploaded from %s (all ignored?)\n", dir)
	}
	if async {
		fmt.Fprintf(c.stdout, "Job submitted: %s\n", job.ID)
		return exitOK
	}
	if job.WebURL != "" {
		fmt.Fprintf(c.stderr, "Job %s submitted: %s\n", job.ID, job.WebURL)
	} else {
		fmt.Fprintf(c.stderr, "Job %s submitted\n", job.ID)
	}
	code, last, interrupted := c.follow(ctx, job.ID, 0)
	if !interrupted {
		return code
	}
	// Ctrl-C: cancel the job, then keep following (no longer bound to the
	// interrupted ctx) so the user sees how it ended. main makes a second
	// Ctrl-C end ci at once.
	fmt.Fprintf(c.stderr, "\nci: canceling job %s (Ctrl-C again to leave at once)\n", job.ID)
	cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.client().Cancel(cctx, job.ID); err != nil {
		var apiErr *client.Error
		if !errors.As(err, &apiErr) || apiErr.Code != "conflict" {
			fmt.Fprintf(c.stderr, "ci: could not cancel job %s: %v\n", job.ID, rootCause(err))
			return exitInterrupted
		}
	}
	fctx, fcancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer fcancel()
	code, _, _ = c.follow(fctx, job.ID, last)
	return code
}

func (c *cli) cancel(ctx context.Context, args []string) int {
	fs, code, done := c.parse("cancel", args)
	if done {
		return code
	}
	switch {
	case fs.NArg() == 0:
		return c.usageError("cancel", "missing job id")
	case fs.NArg() > 1:
		return c.usageError("cancel", "unexpected argument %q", fs.Arg(1))
	}
	id := fs.Arg(0)
	j, err := c.client().Cancel(ctx, id)
	if err != nil {
		var apiErr *client.Error
		if errors.As(err, &apiErr) && apiErr.Code == "conflict" {
			fmt.Fprintf(c.stderr, "ci: %s\n", apiErr.Message)
			return exitNotFound
		}
		return c.failure("cancel job "+id, err)
	}
	if j.Status == client.StatusCanceled {
		fmt.Fprintf(c.stdout, "Job %s canceled\n", id)
	} else {
		fmt.Fprintf(c.stdout, "Job %s is being canceled (it was %s)\n", id, j.Status)
	}
	return exitOK
}

func (c *cli) wait(ctx context.Context, args []string) int {
	fs, code, done := c.parse("wait", args)
	if done {
		return code
	}
	after, _ := fs.GetInt64("after")
	switch {
	case fs.NArg() == 0:
		return c.usageError("wait", "missing job id")
	case fs.NArg() > 1:
		return c.usageError("wait", "unexpected argument %q", fs.Arg(1))
	case after < 0:
		return c.usageError("wait", "--after %d: must be 0 or more", after)
	}
	id := fs.Arg(0)
	// Fail fast on an unknown job or a server that is down, rather than
	// retrying to connect for minutes.
	if _, err := c.client().Job(ctx, id); err != nil {
		if ctx.Err() != nil {
			return exitInterrupted
		}
		return c.failure("job "+id, err)
	}
	code, last, interrupted := c.follow(ctx, id, after)
	if interrupted {
		// Ctrl-C during wait only detaches: the job keeps running.
		fmt.Fprintf(c.stderr, "\nci: detached from job %s, which keeps running; follow it again with: ci wait %s --after %d\n", id, id, last)
	}
	return code
}

// follow prints the output of job id from event after+1 on until the job
// ends, and returns ci's exit code for its end, the last seq it printed and
// whether ctx was canceled (Ctrl-C) before the end. A heading on stderr
// (see phaseHeading) marks where each phase of the job begins.
func (c *cli) follow(ctx context.Context, id string, after int64) (code int, lastSeq int64, interrupted bool) {
	last := after
	// pytest runs with colour on; a pipe or a file gets clean text.
	stdout, stderr := colorWriter(c.stdout), colorWriter(c.stderr)
	color := useColor(c.stderr)
	// midLine is true when the output so far did not end its line: ci's
	// own lines then start with a newline, so they stand on their own.
	midLine := false
	endLine := func() {
		if midLine {
			io.WriteString(c.stderr, "\n")
			midLine = false
		}
	}
	var result *client.Event
	term, err := c.client().Follow(ctx, id, after, func(ev client.Event) error {
		last = ev.Seq
		switch ev.Type {
		case client.EventResult:
			result = &ev
		case client.EventPhase:
			if ev.Phase == "" {
				return nil
			}
			// Straight to stderr, not through the stripper: a sequence
			// the previous phase left unfinished can't swallow it.
			endLine()
			if _, err := io.WriteString(c.stderr, phaseHeading(ev.Phase, color)); err != nil {
				return fmt.Errorf("write output: %w", err)
			}
		case client.EventLog:
			w := stdout
			if ev.Stream == client.StreamStderr {
				w = stderr
			}
			if _, err := io.WriteString(w, ev.Text); err != nil {
				return fmt.Errorf("write output: %w", err)
			}
			if t := ansi.String(ev.Text); t != "" {
				midLine = t[len(t)-1] != '\n'
			}
		}
		return nil
	})
	if err != nil {
		if ctx.Err() != nil {
			return exitInterrupted, last, true
		}
		endLine()
		code := c.failure("job "+id, err)
		if code != exitNotFound {
			fmt.Fprintf(c.stderr, "ci: follow it again with: ci wait %s --after %d\n", id, last)
		}
		return code, last, false
	}
	if result != nil && result.Tests != nil {
		endLine()
		printSummary(c.stderr, result)
	}
	if term.Status != client.StatusPassed && term.Reason != "" {
		endLine()
		fmt.Fprintf(c.stderr, "ci: job %s %s: %s\n", id, humanStatus(term.Status), term.Reason)
	}
	return client.ExitCode(term.Status, term.ExitCode), last, false
}

// phaseHeading is the line ci prints where a job enters a phase:
// "==> install", "==> test", in bold when color is true.
func phaseHeading(phase string, color bool) string {
	phase = ansi.String(phase)
	if color {
		return "\x1b[1m==> " + phase + "\x1b[0m\n"
	}
	return "==> " + phase + "\n"
}

// printSummary prints a result event as one line of counts, then the
// failing tests' node ids.
func printSummary(w io.Writer, ev *client.Event) {
	t := ev.Tests
	errs := "errors"
	if t.Errors == 1 {
		errs = "error"
	}
	fmt.Fprintf(w, "ci: %d tests: %d passed, %d failed, %d %s, %d skipped in %.2fs\n",
		t.Total, t.Passed, t.Failed, t.Errors, errs, t.Skipped, ev.DurationS)
	for _, f := range ev.Failures {
		fmt.Fprintf(w, "ci: FAILED %s\n", f.NodeID)
	}
	if n := t.Failed + t.Errors - len(ev.Failures); n > 0 {
		fmt.Fprintf(w, "ci: ... and %d more (see the job's tests)\n", n)
	}
}

func humanStatus(s string) string { return strings.ReplaceAll(s, "_", " ") }

func (c *cli) status(ctx context.Context, args []string) int {
	fs, code, done := c.parse("status", args)
	if done {
		return code
	}
	switch {
	case fs.NArg() == 0:
		return c.usageError("status", "missing job id")
	case fs.NArg() > 1:
		return c.usageError("status", "unexpected argument %q", fs.Arg(1))
	}
	id := fs.Arg(0)
	j, err := c.client().Job(ctx, id)
	if err != nil {
		return c.failure("job "+id, err)
	}
	if asJSON, _ := fs.GetBool("json"); asJSON {
		b, _ := json.MarshalIndent(j, "", "  ")
		fmt.Fprintf(c.stdout, "%s\n", b)
		return exitOK
	}
	w := tabwriter.NewWriter(c.stdout, 0, 0, 1, ' ', 0)
	fmt.Fprintf(w, "job:\t%s\n", j.ID)
	st := humanStatus(j.Status)
	if j.ExitCode != nil {
		st += fmt.Sprintf(" (exit code %d)", *j.ExitCode)
	}
	fmt.Fprintf(w, "status:\t%s\n", st)
	if j.Phase != "" && !j.Terminal() {
		fmt.Fprintf(w, "phase:\t%s\n", j.Phase)
	}
	if j.Reason != "" {
		fmt.Fprintf(w, "reason:\t%s\n", j.Reason)
	}
	if len(j.Args) > 0 {
		fmt.Fprintf(w, "args:\t%s\n", strings.Join(j.Args, " "))
	}
	fmt.Fprintf(w, "created:\t%s\n", formatTime(j.CreatedAt))
	if j.StartedAt != nil && j.FinishedAt != nil {
		fmt.Fprintf(w, "duration:\t%s\n", formatDuration(j.FinishedAt.Sub(*j.StartedAt)))
	} else if j.StartedAt != nil {
		fmt.Fprintf(w, "running for:\t%s\n", formatDuration(time.Since(*j.StartedAt)))
	}
	if j.WebURL != "" {
		fmt.Fprintf(w, "web:\t%s\n", j.WebURL)
	}
	w.Flush()
	return exitOK
}

func (c *cli) list(ctx context.Context, args []string) int {
	fs, code, done := c.parse("list", args)
	if done {
		return code
	}
	limit, _ := fs.GetInt("limit")
	before, _ := fs.GetString("before")
	switch {
	case fs.NArg() > 0:
		return c.usageError("list", "unexpected argument %q", fs.Arg(0))
	case limit <= 0:
		return c.usageError("list", "--limit %d: must be 1 or more", limit)
	}
	l, err := c.client().Jobs(ctx, limit, before)
	if err != nil {
		return c.failure("list jobs", err)
	}
	if len(l.Jobs) == 0 {
		fmt.Fprintln(c.stdout, "No jobs.")
		return exitOK
	}
	w := tabwriter.NewWriter(c.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "ID\tSTATUS\tCREATED\tDURATION\tEXIT")
	for _, j := range l.Jobs {
		dur, exit := "-", "-"
		if j.StartedAt != nil && j.FinishedAt != nil {
			dur = formatDuration(j.FinishedAt.Sub(*j.StartedAt))
		}
		if j.ExitCode != nil {
			exit = fmt.Sprint(*j.ExitCode)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", j.ID, humanStatus(j.Status), formatTime(j.CreatedAt), dur, exit)
	}
	w.Flush()
	if l.Next != "" {
		fmt.Fprintf(c.stderr, "More: ci list --limit %d --before %s\n", limit, l.Next)
	}
	return exitOK
}

func formatTime(t time.Time) string { return t.Local().Format("2006-01-02 15:04:05") }

func formatDuration(d time.Duration) string {
	if d < time.Minute {
		return d.Round(100 * time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}

// colorWriter returns w itself when useColor(w), and otherwise a writer
// that strips ANSI escape sequences.
func colorWriter(w io.Writer) io.Writer {
	if useColor(w) {
		return w
	}
	return ansi.NewWriter(w)
}

// useColor reports whether what ci writes to w may be in colour: when w is
// a terminal, unless NO_COLOR (any value) or CI_COLOR=never turns colour
// off; CI_COLOR=always turns it on even on a pipe.
func useColor(w io.Writer) bool {
	if os.Getenv("CI_COLOR") == "always" {
		return true
	}
	return os.Getenv("NO_COLOR") == "" && os.Getenv("CI_COLOR") != "never" && isTerminal(w)
}

// isTerminal reports whether w is a character device (a terminal).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
