package executor

import (
	"archive/zip"
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"ci/jobs"
)

// FakeScript is the name of the file, at the root of a project zip, that
// tells Fake what to do.
const FakeScript = "ci-fake-script"

// maxFakeScript bounds the size of a FakeScript.
const maxFakeScript = 1 << 20

// Fake is an Executor for tests: it runs nothing, it plays the script in
// the project's FakeScript file instead, one command a line:
//
//	stdout "text\n"   write a Go-quoted string to stdout
//	stderr "text\n"   write a Go-quoted string to stderr
//	sleep 2s          wait for a duration (time.ParseDuration)
//	exit 3            end with that exit code (the default is 0)
//	fail "message"    end with an error: the tests could not be run
//	block             wait until the context is canceled
//
// Blank lines and lines starting with # are skipped. Without a script it
// writes "fake: no ci-fake-script\n" to stdout and exits 0. Like Docker it
// checks the whole zip (a corrupt or unsafe archive is an error) and, when
// ctx is done, returns promptly an error matching ctx.Err() and
// context.Cause(ctx). The zero value is ready to use and safe for
// concurrent use.
type Fake struct {
	live atomic.Int64
}

var _ jobs.Executor = (*Fake)(nil)

// Live returns how many runs are in progress, so tests can check that
// none is left behind.
func (f *Fake) Live() int {
	return int(f.live.Load())
}

// Run implements jobs.Executor by playing the project's FakeScript.
func (f *Fake) Run(ctx context.Context, spec jobs.Spec, out jobs.Output) (jobs.Result, error) {
	f.live.Add(1)
	defer f.live.Add(-1)
	if ctx.Err() != nil {
		return jobs.Result{}, ctxError(ctx)
	}
	script, err := readFakeScript(spec.Archive)
	if err != nil {
		return jobs.Result{}, err
	}
	if script == nil {
		if err := out.Write(jobs.StreamStdout, []byte("fake: no "+FakeScript+"\n")); err != nil {
			return jobs.Result{}, fmt.Errorf("write %s: %w", jobs.StreamStdout, err)
		}
		return jobs.Result{}, nil
	}
	cmds, err := parseFakeScript(script)
	if err != nil {
		return jobs.Result{}, err
	}
	return playFakeScript(ctx, cmds, out)
}

// readFakeScript checks the archive like Docker does (names, types and
// content) and returns the content of its FakeScript, nil if it has none.
func readFakeScript(archive string) ([]byte, error) {
	zr, err := zip.OpenReader(archive)
	if err != nil {
		return nil, fmt.Errorf("open project archive: %w", err)
	}
	defer zr.Close()
	entries, err := planTar(&zr.Reader)
	if err != nil {
		return nil, fmt.Errorf("project archive: %w", err)
	}
	if err := writeTar(io.Discard, entries); err != nil {
		return nil, fmt.Errorf("project archive: %w", err)
	}
	for _, e := range entries {
		if e.file == nil || e.hdr.Name != FakeScript {
			continue
		}
		rc, err := e.file.Open()
		if err != nil {
			return nil, fmt.Errorf("project archive: %w", err)
		}
		defer rc.Close()
		b, err := io.ReadAll(io.LimitReader(rc, maxFakeScript+1))
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", FakeScript, err)
		}
		if len(b) > maxFakeScript {
			return nil, fmt.Errorf("%s: larger than %d bytes", FakeScript, maxFakeScript)
		}
		return b, nil
	}
	return nil, nil
}

// fakeCmd is one parsed line of a FakeScript.
type fakeCmd struct {
	op   string // stdout, stderr, sleep, exit, fail, block
	text string
	d    time.Duration
	code int
}

func parseFakeScript(script []byte) ([]fakeCmd, error) {
	var cmds []fakeCmd
	sc := bufio.NewScanner(strings.NewReader(string(script)))
	sc.Buffer(nil, maxFakeScript)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		op, arg, _ := strings.Cut(line, " ")
		arg = strings.TrimSpace(arg)
		c := fakeCmd{op: op}
		var err error
		switch op {
		case "stdout", "stderr", "fail":
			c.text, err = strconv.Unquote(arg)
		case "sleep":
			c.d, err = time.ParseDuration(arg)
		case "exit":
			c.code, err = strconv.Atoi(arg)
		case "block":
			if arg != "" {
				err = errors.New("block takes no argument")
			}
		default:
			err = fmt.Errorf("unknown command %q", op)
		}
		if err != nil {
			return nil, fmt.Errorf("%s line %d: %w", FakeScript, n, err)
		}
		cmds = append(cmds, c)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", FakeScript, err)
	}
	return cmds, nil
}

func playFakeScript(ctx context.Context, cmds []fakeCmd, out jobs.Output) (jobs.Result, error) {
	for _, c := range cmds {
		if ctx.Err() != nil {
			return jobs.Result{}, ctxError(ctx)
		}
		switch c.op {
		case "stdout", "stderr":
			stream := jobs.StreamStdout
			if c.op == "stderr" {
				stream = jobs.StreamStderr
			}
			if c.text == "" {
				continue // Docker never writes empty chunks
			}
			if err := out.Write(stream, []byte(c.text)); err != nil {
				return jobs.Result{}, fmt.Errorf("write %s: %w", stream, err)
			}
		case "sleep":
			t := time.NewTimer(c.d)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return jobs.Result{}, ctxError(ctx)
			}
		case "exit":
			return jobs.Result{ExitCode: c.code}, nil
		case "fail":
			return jobs.Result{}, errors.New(c.text)
		case "block":
			<-ctx.Done()
			return jobs.Result{}, ctxError(ctx)
		}
	}
	return jobs.Result{}, nil
}
