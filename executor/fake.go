package executor

import (
	"archive/zip"
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
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
//	block             wait until the run is canceled
//	phase install     announce a phase (jobs.Output's Phase)
//	report "{...}"    a Go-quoted JSON jobs.TestReport: the Result's Report
//	                  when the script ends or exits (the last one wins)
//
// Blank lines and lines starting with # are skipped. Without a script it
// writes "fake: no ci-fake-script\n" to stdout and exits 0. Like Docker it
// checks the whole zip (a corrupt or unsafe archive is an error) and, when
// ctx is done, returns promptly an error matching ctx.Err() and
// context.Cause(ctx). The zero value is ready to use and safe for
// concurrent use.
//
// Fake is a jobs.Reattacher too. Each Run plays its script in a "process"
// of its own, which records every chunk it writes, and follows it. When
// Run's ctx ends with the cause jobs.ErrDetach, Run returns and the process
// plays on in the background, recording; Reattach with the same job ID then
// replays the recorded chunks from the first one (the same chunks Run
// handed out, in the same order) and follows the process to its end, which
// may have come meanwhile. Any other end of ctx (or a failed out.Write)
// cancels the process, which then ends at its current command. A process
// is kept until a Reattach that does not detach collects it, so there is
// one Reattach at a time per job; job IDs must be unique.
type Fake struct {
	live atomic.Int64 // calls of Run and Reattach in progress

	mu       sync.Mutex
	detached map[string]*fakeProc // by job ID
}

var (
	_ jobs.Executor   = (*Fake)(nil)
	_ jobs.Reattacher = (*Fake)(nil)
)

// Live returns how many runs are in progress or left behind: calls of Run
// and Reattach that have not returned, plus processes of detached runs
// (running or ended) that no Reattach has collected yet. Tests check that
// it is back to 0 once everything returned.
func (f *Fake) Live() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return int(f.live.Load()) + len(f.detached)
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
	cmds := []fakeCmd{{op: "stdout", text: "fake: no " + FakeScript + "\n"}}
	if script != nil {
		if cmds, err = parseFakeScript(script); err != nil {
			return jobs.Result{}, err
		}
	}
	return f.follow(ctx, spec.JobID, startFakeProc(cmds), out, 0)
}

// Reattach implements jobs.Reattacher: it replays the whole output of the
// process a detached Run (or Reattach) of spec.JobID left, then follows it
// to its end. Without one it returns an error wrapping jobs.ErrGone.
func (f *Fake) Reattach(ctx context.Context, spec jobs.Spec, out jobs.Output) (jobs.Result, error) {
	f.live.Add(1)
	defer f.live.Add(-1)
	if detached(ctx) {
		return jobs.Result{}, ctxError(ctx)
	}
	f.mu.Lock()
	p := f.detached[spec.JobID]
	delete(f.detached, spec.JobID)
	f.mu.Unlock()
	if p == nil {
		return jobs.Result{}, fmt.Errorf("fake: no detached run of job %s: %w", spec.JobID, jobs.ErrGone)
	}
	// Like Docker's, the replay is the test phase's: from the chunk after
	// the last phase announced, with no phase of its own.
	p.mu.Lock()
	from := 0
	for i, c := range p.chunks {
		if c.phase != "" {
			from = i + 1
		}
	}
	p.mu.Unlock()
	return f.follow(ctx, spec.JobID, p, out, from)
}

// follow writes p's output to out from chunk next and waits for its end.
// On a detach it keeps p for Reattach; on any other end of ctx, or a
// failed write, it cancels p and waits for it.
func (f *Fake) follow(ctx context.Context, jobID string, p *fakeProc, out jobs.Output, next int) (jobs.Result, error) {
	for {
		p.mu.Lock()
		chunks := p.chunks[next:]
		ended, res, err := p.ended, p.res, p.err
		changed := p.changed
		p.mu.Unlock()
		for _, c := range chunks {
			if c.phase != "" {
				if werr := out.Phase(c.phase); werr != nil {
					werr = fmt.Errorf("phase %s: %w", c.phase, werr)
					p.stop(werr)
					return jobs.Result{}, werr
				}
				next++
				continue
			}
			if werr := out.Write(c.stream, c.p); werr != nil {
				werr = fmt.Errorf("write %s: %w", c.stream, werr)
				p.stop(werr)
				return jobs.Result{}, werr
			}
			next++
		}
		if ended {
			return res, err
		}
		select {
		case <-changed:
		case <-ctx.Done():
			if detached(ctx) {
				f.mu.Lock()
				if f.detached == nil {
					f.detached = make(map[string]*fakeProc)
				}
				f.detached[jobID] = p
				f.mu.Unlock()
			} else {
				p.stop(context.Cause(ctx))
			}
			return jobs.Result{}, ctxError(ctx)
		}
	}
}

// fakeProc is the "test process" of a Fake run: its script playing in a
// goroutine of its own, and everything it wrote.
type fakeProc struct {
	cancel context.CancelCauseFunc
	done   chan struct{} // closed when the script has ended

	mu      sync.Mutex
	chunks  []fakeChunk
	changed chan struct{} // closed (and replaced) when chunks or ended change
	ended   bool
	res     jobs.Result
	err     error
}

// fakeChunk is one write of a fakeProc, or a phase it announced.
type fakeChunk struct {
	stream string
	p      []byte
	phase  string
}

// startFakeProc starts playing cmds.
func startFakeProc(cmds []fakeCmd) *fakeProc {
	ctx, cancel := context.WithCancelCause(context.Background())
	p := &fakeProc{cancel: cancel, done: make(chan struct{}), changed: make(chan struct{})}
	go func() {
		defer close(p.done)
		res, err := playFakeScript(ctx, cmds, p)
		cancel(nil)
		p.mu.Lock()
		defer p.mu.Unlock()
		p.ended, p.res, p.err = true, res, err
		close(p.changed)
		p.changed = make(chan struct{})
	}()
	return p
}

// Write records a chunk; it implements jobs.Output for the script.
func (p *fakeProc) Write(stream string, b []byte) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.chunks = append(p.chunks, fakeChunk{stream: stream, p: bytes.Clone(b)})
	close(p.changed)
	p.changed = make(chan struct{})
	return nil
}

// Phase records a phase; it implements jobs.Output for the script.
func (p *fakeProc) Phase(name string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.chunks = append(p.chunks, fakeChunk{phase: name})
	close(p.changed)
	p.changed = make(chan struct{})
	return nil
}

// stop cancels the script with cause and waits until it has ended.
func (p *fakeProc) stop(cause error) {
	p.cancel(cause)
	<-p.done
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
	op     string // stdout, stderr, sleep, exit, fail, block, report, phase
	text   string
	d      time.Duration
	code   int
	report *jobs.TestReport
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
		case "phase":
			c.text = arg
			if arg != jobs.PhaseInstall && arg != jobs.PhaseTest {
				err = fmt.Errorf("unknown phase %q", arg)
			}
		case "sleep":
			c.d, err = time.ParseDuration(arg)
		case "exit":
			c.code, err = strconv.Atoi(arg)
		case "report":
			if c.text, err = strconv.Unquote(arg); err == nil {
				c.report = new(jobs.TestReport)
				err = json.Unmarshal([]byte(c.text), c.report)
			}
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
	var report *jobs.TestReport
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
		case "report":
			report = c.report
		case "phase":
			if err := out.Phase(c.text); err != nil {
				return jobs.Result{}, fmt.Errorf("phase %s: %w", c.text, err)
			}
		case "exit":
			return jobs.Result{ExitCode: c.code, Report: report}, nil
		case "fail":
			return jobs.Result{}, errors.New(c.text)
		case "block":
			<-ctx.Done()
			return jobs.Result{}, ctxError(ctx)
		}
	}
	return jobs.Result{Report: report}, nil
}
