package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"ci/client"

	"github.com/coder/websocket"
)

// watcher is one WebSocket client of a job's event stream, from after=0.
// It checks that seqs are gapless from 1, that marker lines arrive in
// order, each once, and that the stream ends with a terminal status event
// and a normal close.
type watcher struct {
	timestamps bool // marker lines carry a write time: record latencies
	expect     int  // marker lines expected (room to keep their latencies)

	events   int64
	lastSeq  int64
	status   string // terminal status, once received
	lines    int64  // marker lines received
	lat      []int32
	first    time.Time // receipt of the first and the last marker line
	last     time.Time
	stderr   []string // stderr lines holding "ci-bench-"
	err      error
	partial  [2][]byte // stdout, stderr: the line so far
	closedOK bool
}

var marker = []byte("ci-bench ")

// run dials url and reads the stream to its end. live is called once the
// first event (the job's "queued" status, seq 1) has arrived: from then on
// the watcher is subscribed. live is called with the error instead if the
// watcher fails before that.
func (w *watcher) run(ctx context.Context, url string, live func(error)) {
	liveCalled := false
	defer func() {
		if !liveCalled {
			if w.err == nil {
				w.err = errors.New("stream ended before its first event")
			}
			live(w.err)
		}
	}()
	// The dial's context bounds the handshake only, not the connection.
	dctx, cancel := context.WithTimeout(ctx, time.Minute)
	c, _, err := websocket.Dial(dctx, url, &websocket.DialOptions{Subprotocols: []string{"ci.v1"}})
	cancel()
	if err != nil {
		w.err = fmt.Errorf("dial: %w", err)
		return
	}
	defer c.CloseNow()
	c.SetReadLimit(1 << 22)
	if w.timestamps {
		w.lat = make([]int32, 0, w.expect)
	}
	var ev event
	for {
		_, data, err := c.Read(ctx)
		now := time.Now()
		if err != nil {
			if w.status != "" && websocket.CloseStatus(err) == websocket.StatusNormalClosure {
				w.closedOK = true
				return
			}
			w.fail(fmt.Errorf("read after seq %d: %w", w.lastSeq, err))
			return
		}
		if err := decodeEvent(data, &ev); err != nil {
			w.fail(fmt.Errorf("decode event after seq %d: %w", w.lastSeq, err))
			return
		}
		if ev.Seq != w.lastSeq+1 {
			w.fail(fmt.Errorf("got seq %d after %d", ev.Seq, w.lastSeq))
			return
		}
		if w.status != "" {
			w.fail(fmt.Errorf("event %d after the terminal status", ev.Seq))
			return
		}
		w.lastSeq = ev.Seq
		w.events++
		if !liveCalled {
			liveCalled = true
			live(nil)
		}
		switch ev.Type {
		case client.EventLog:
			w.text(ev.Stream, ev.Text, now)
		case client.EventStatus:
			if client.Terminal(ev.Status) {
				w.status = ev.Status
			}
		}
	}
}

func (w *watcher) fail(err error) {
	if w.err == nil {
		w.err = err
	}
}

// text takes a chunk of output received at now. A line counts at the
// receipt of the event that holds its newline.
func (w *watcher) text(stream string, text []byte, now time.Time) {
	i := 0
	if stream == client.StreamStderr {
		i = 1
	}
	for len(text) > 0 {
		j := bytes.IndexByte(text, '\n')
		if j < 0 {
			w.partial[i] = append(w.partial[i], text...)
			return
		}
		line := text[:j]
		if len(w.partial[i]) > 0 {
			w.partial[i] = append(w.partial[i], line...)
			line = w.partial[i]
		}
		if i == 0 {
			w.line(line, now)
		} else if bytes.Contains(line, []byte("ci-bench-")) {
			w.stderr = append(w.stderr, string(line))
		}
		w.partial[i] = w.partial[i][:0]
		text = text[j+1:]
	}
}

// number reads a decimal number after spaces at the start of b.
func number(b []byte) (n int64, rest []byte, ok bool) {
	i := 0
	for i < len(b) && b[i] == ' ' {
		i++
	}
	start := i
	for i < len(b) && b[i] >= '0' && b[i] <= '9' && i-start < 19 {
		n = n*10 + int64(b[i]-'0')
		i++
	}
	return n, b[i:], i > start
}

// line checks a stdout line and records its latency if it is a marker line.
func (w *watcher) line(line []byte, now time.Time) {
	k := bytes.Index(line, marker)
	if k < 0 {
		return
	}
	idx, rest, ok := number(line[k+len(marker):])
	if !ok {
		w.fail(fmt.Errorf("marker line without an index: %q", line))
		return
	}
	if idx != w.lines {
		w.fail(fmt.Errorf("line %d where line %d was due (lost, repeated or reordered)", idx, w.lines))
	}
	w.lines++
	if w.first.IsZero() {
		w.first = now
	}
	w.last = now
	if !w.timestamps {
		return
	}
	ns, _, ok := number(rest)
	if !ok {
		w.fail(fmt.Errorf("marker line without a time: %q", line))
		return
	}
	us := (now.UnixNano() - ns) / 1000
	w.lat = append(w.lat, int32(min(us, 1<<31-1)))
}

// check returns what is wrong with a watcher's stream of a job that
// ended with lastSeq and printed lines marker lines.
func (w *watcher) check(lastSeq, lines int64) error {
	switch {
	case w.err != nil:
		return w.err
	case w.status != client.StatusPassed:
		return fmt.Errorf("terminal status %q, want passed", w.status)
	case !w.closedOK:
		return errors.New("no normal close after the terminal event")
	case w.lastSeq != lastSeq || w.events != lastSeq:
		return fmt.Errorf("%d events up to seq %d, want %d up to seq %d", w.events, w.lastSeq, lastSeq, lastSeq)
	case w.lines != lines:
		return fmt.Errorf("%d marker lines, want %d", w.lines, lines)
	}
	return nil
}

// watchedRun is a job watched by many watchers, all connected and
// subscribed before it started.
type watchedRun struct {
	job      *client.Job
	watchers []*watcher
	// connected is how many watchers got live; dialErr the first failure.
	connected int
	dialErr   error
	connect   time.Duration // dialing all and getting each live
	// Server memory in KiB: resident before dialing, with all watchers
	// live (job not started), and the peak over the whole run.
	rssBefore, rssLive, hwmAfter int64
	wall                         time.Duration // from releasing the job to its end
	// CPU time used from releasing the job to its end by the server and
	// by the watchers (this process).
	serverCPU, clientCPU time.Duration
}

// runWatched runs the project zip as a job watched by n watchers. The
// server must run one job at a time (--concurrency 1): a blocker job holds
// the worker while the watchers connect (to the queued job, replaying its
// "queued" event, which makes them live), then is canceled, so all of the
// job's output reaches watchers that are already following.
func runWatched(ctx context.Context, s *server, zip []byte, n int, timestamps bool, lines int) (*watchedRun, error) {
	blockZip, err := zipFiles(ctx, map[string]string{"test_block.py": blockerTest})
	if err != nil {
		return nil, err
	}
	blocker, err := s.submit(ctx, blockZip, 10*time.Minute)
	if err != nil {
		return nil, fmt.Errorf("submit blocker: %w", err)
	}
	id, err := s.submit(ctx, zip, 20*time.Minute)
	if err != nil {
		return nil, fmt.Errorf("submit: %w", err)
	}
	r := &watchedRun{watchers: make([]*watcher, n)}
	// Let the blocker's container start before measuring memory.
	if _, err := waitStatus(ctx, s, blocker, client.StatusRunning); err != nil {
		return nil, fmt.Errorf("blocker: %w", err)
	}
	if r.rssBefore, err = s.memKB("VmRSS"); err != nil {
		return nil, err
	}

	base := s.url
	if s.watchVia != nil {
		base = s.watchVia.url
	}
	url := base + "/api/v1/jobs/" + id + "/events?after=0"
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	liveErrs := make(chan error, n)
	sem := make(chan struct{}, 64) // dials and replays in flight
	var nlive atomic.Int64
	start := time.Now()
	for i := range r.watchers {
		w := &watcher{timestamps: timestamps, expect: lines}
		r.watchers[i] = w
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			w.run(wctx, url, func(err error) {
				<-sem
				if err == nil {
					nlive.Add(1)
				}
				liveErrs <- err
			})
		}()
	}
	timeout := time.NewTimer(5 * time.Minute)
	defer timeout.Stop()
	for range n {
		select {
		case err := <-liveErrs:
			if err != nil {
				if r.dialErr == nil {
					r.dialErr = err
				}
			} else {
				r.connected++
			}
		case <-timeout.C:
			cancel()
			wg.Wait()
			return nil, fmt.Errorf("watchers: only %d of %d live after 5 minutes", nlive.Load(), n)
		}
	}
	r.connect = time.Since(start)
	if r.rssLive, err = s.memKB("VmRSS"); err != nil {
		return nil, err
	}

	t0, scpu, ccpu := time.Now(), s.cpu(), selfCPU()
	if _, err := s.client.Cancel(ctx, blocker); err != nil {
		return nil, fmt.Errorf("cancel blocker: %w", err)
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Minute):
		cancel()
		<-done
		return nil, errors.New("watchers: stream not ended after 20 minutes")
	}
	r.wall = time.Since(t0)
	r.serverCPU, r.clientCPU = s.cpu()-scpu, selfCPU()-ccpu
	if r.hwmAfter, err = s.memKB("VmHWM"); err != nil {
		return nil, err
	}
	if r.job, err = s.wait(ctx, id, time.Minute); err != nil {
		return nil, err
	}
	return r, s.alive()
}

// waitStatus polls job id until it has status (or has ended).
func waitStatus(ctx context.Context, s *server, id, status string) (*client.Job, error) {
	deadline := time.Now().Add(2 * time.Minute)
	for {
		j, err := s.client.Job(ctx, id)
		if err != nil {
			return nil, err
		}
		if j.Status == status {
			return j, nil
		}
		if j.Terminal() || time.Now().After(deadline) {
			return j, fmt.Errorf("job %s is %s, waited for %s (%s)", id, j.Status, status, j.Reason)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// checkAll checks every live watcher of r against the job and returns the
// first problem, naming how many watchers had one.
func (r *watchedRun) checkAll(lines int64) error {
	if r.job.Status != client.StatusPassed {
		return fmt.Errorf("job %s ended %s: %s", r.job.ID, r.job.Status, r.job.Reason)
	}
	var first error
	bad := 0
	for i, w := range r.watchers {
		if w.err != nil && w.events == 0 {
			continue // never connected: counted by connected/dialErr
		}
		if err := w.check(r.job.LastSeq, lines); err != nil {
			bad++
			if first == nil {
				first = fmt.Errorf("watcher %d: %w", i, err)
			}
		}
	}
	if first != nil {
		return fmt.Errorf("%d of %d watchers: %w", bad, r.connected, first)
	}
	return nil
}

// latencies merges the watchers' line latencies (µs).
func (r *watchedRun) latencies() []int32 {
	var all []int32
	for _, w := range r.watchers {
		all = append(all, w.lat...)
	}
	return all
}

// bytesLines is a helper for checking captured CLI output: it returns the
// number of marker lines in out and an error if they are not 0, 1, 2, ...
func bytesLines(out []byte) (int64, error) {
	w := &watcher{}
	for len(out) > 0 {
		j := bytes.IndexByte(out, '\n')
		if j < 0 {
			j = len(out)
		}
		w.line(out[:j], time.Time{})
		out = out[min(j+1, len(out)):]
	}
	return w.lines, w.err
}
