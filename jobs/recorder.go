package jobs

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"
	"unicode/utf8"
)

// Limits of the recorder's group commit.
const (
	// maxPending and maxPendingBytes bound what may wait for a commit
	// before emitters block: back-pressure on the executor instead of
	// unbounded memory when the store is slower than the output.
	maxPending      = 4096
	maxPendingBytes = 4 << 20
	// maxBatch is the most events written in one transaction.
	maxBatch = 1024
	// maxMergedText is how large a pending log event may grow by merging
	// chunks of the same stream that arrive while a commit is in flight.
	// It also bounds what one event costs a subscriber's buffer.
	maxMergedText = 16 << 10
)

// recorder is the single writer of one job's event log. It assigns seqs,
// persists events in batched transactions (group commit: whatever arrives
// while one transaction is in flight goes into the next one) and publishes
// each batch to the broker only after it is committed.
//
// Emitters never wait for a commit unless maxPending events are already
// waiting. A log chunk that arrives while its predecessor of the same stream
// is still pending is merged into it, so a flood of output makes fewer,
// larger events without delaying anything: merging happens only while the
// writer is busy anyway.
type recorder struct {
	store   Store
	broker  *Broker
	metrics Metrics
	log     *slog.Logger

	mu           sync.Mutex
	cond         *sync.Cond // signals: pending drained, or closing
	job          Job        // latest state, including changes not yet persisted
	saved        Job        // state as of the last event handed to the writer
	pending      []pendingEvent
	pendingBytes int // text bytes in pending
	closing      bool
	err          error // first commit error; once set, nothing more is recorded

	wake chan struct{} // capacity 1: there is pending work
	done chan struct{} // closed when the writer goroutine exits
}

// pendingEvent is an event waiting for its commit. job is set on status and
// phase events: the job's state right after the change, persisted with the
// event.
type pendingEvent struct {
	ev   Event
	job  *Job
	offs Offsets // the job's output offsets right after this event
	// text is a log event's text while it waits: chunks merged into it are
	// appended in place, and it becomes ev.Text once, when committed.
	text []byte
}

// newRecorder starts the writer of job's event log; job.LastSeq must be the
// seq of its last persisted event.
func newRecorder(store Store, broker *Broker, metrics Metrics, log *slog.Logger, job *Job) *recorder {
	r := &recorder{
		store:   store,
		broker:  broker,
		metrics: metrics,
		log:     log,
		job:     *job,
		wake:    make(chan struct{}, 1),
		done:    make(chan struct{}),
	}
	r.job.Args = append([]string(nil), job.Args...)
	r.saved = r.job
	r.cond = sync.NewCond(&r.mu)
	go r.run()
	return r
}

// emitLocked assigns the next seq to ev and queues it, with a snapshot of
// the job when it is a status event. r.mu must be held.
func (r *recorder) emitLocked(ev Event, offs *Offsets) error {
	for (len(r.pending) >= maxPending || r.pendingBytes >= maxPendingBytes) && r.err == nil && !r.closing {
		r.cond.Wait()
	}
	if r.err != nil {
		return r.err
	}
	if r.closing {
		return fmt.Errorf("record event: recorder closed")
	}
	if offs != nil {
		r.job.Offsets = *offs
	}
	if n := len(r.pending); n > 0 && ev.Type == EventLog {
		last := &r.pending[n-1]
		if last.ev.Type == EventLog && last.ev.Stream == ev.Stream && len(last.text)+len(ev.Text) <= maxMergedText {
			last.text = append(last.text, ev.Text...)
			last.offs = r.job.Offsets
			r.pendingBytes += len(ev.Text)
			return nil
		}
	}
	r.job.LastSeq++
	ev.JobID = r.job.ID
	ev.Seq = r.job.LastSeq
	if ev.Time.IsZero() {
		ev.Time = utcNow()
	}
	pe := pendingEvent{ev: ev, offs: r.job.Offsets}
	if ev.Type == EventLog {
		pe.text = []byte(ev.Text)
		pe.ev.Text = ""
	}
	if ev.Type == EventStatus || ev.Type == EventPhase {
		snap := r.job
		pe.job = &snap
	}
	r.pending = append(r.pending, pe)
	r.pendingBytes += len(ev.Text)
	select {
	case r.wake <- struct{}{}:
	default:
	}
	return nil
}

// Log records a chunk of output. text must be valid UTF-8 (see
// utf8Splitter). offs, when not nil, are the raw output offsets the job
// has reached with this chunk; they are persisted with it.
func (r *recorder) Log(stream, text string, offs *Offsets) error {
	if text == "" {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.emitLocked(Event{Type: EventLog, Stream: stream, Text: text}, offs)
}

// Result records a result event (the summary of pytest's per-test
// results).
func (r *recorder) Result(ev Event) error {
	ev.Type = EventResult
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.emitLocked(ev, nil)
}

// Phase records that the job enters phase name, whose output offsets
// start at offs, and saves both on the job with the event.
func (r *recorder) Phase(name string, offs Offsets) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.job.Phase = name
	return r.emitLocked(Event{Type: EventPhase, Phase: name}, &offs)
}

// Status records a status change. update may change the job's other fields
// (times, exit code, reason) in the same step; they are persisted in the
// same transaction as the event.
func (r *recorder) Status(status Status, update func(j *Job)) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.job.Status.Terminal() {
		return fmt.Errorf("record status %s: job already ended %s", status, r.job.Status)
	}
	r.job.Status = status
	if update != nil {
		update(&r.job)
	}
	ev := Event{Type: EventStatus, Status: status}
	if status.Terminal() {
		ev.ExitCode = r.job.ExitCode
		ev.Reason = r.job.Reason
	}
	return r.emitLocked(ev, nil)
}

// Close waits until every emitted event is persisted and published, stops
// the writer and returns the first error met.
func (r *recorder) Close() error {
	r.mu.Lock()
	r.closing = true
	r.cond.Broadcast()
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
	<-r.done
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

// Job returns a copy of the job as recorded so far.
func (r *recorder) Job() Job {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.job
}

func (r *recorder) run() {
	defer close(r.done)
	for range r.wake {
		for {
			r.mu.Lock()
			if len(r.pending) == 0 || r.err != nil {
				closing := r.closing
				r.mu.Unlock()
				if closing {
					return
				}
				break
			}
			n := min(len(r.pending), maxBatch)
			batch := make([]Event, n)
			var changes []Job // the job after each status change, for PublishJob
			var offs Offsets  // the output offsets after the batch
			for i, pe := range r.pending[:n] {
				batch[i] = pe.ev
				if pe.text != nil {
					batch[i].Text = string(pe.text)
				}
				offs = pe.offs
				r.pendingBytes -= len(batch[i].Text)
				if pe.job != nil {
					r.saved = *pe.job
					change := *pe.job
					change.LastSeq = pe.ev.Seq
					changes = append(changes, change)
				}
			}
			r.pending = r.pending[n:]
			if len(r.pending) == 0 {
				r.pending = nil // let a big backlog's array go
			}
			// The row as of the batch's last event: never ahead of the
			// events that are committed with it.
			snap := r.saved
			snap.LastSeq = batch[n-1].Seq
			snap.Offsets = offs
			r.cond.Broadcast()
			r.mu.Unlock()

			start := time.Now()
			if err := r.commit(&snap, batch); err != nil {
				r.mu.Lock()
				r.err = err
				r.pending, r.pendingBytes = nil, 0
				r.cond.Broadcast()
				r.mu.Unlock()
				if ErrorCode(err) == ECONFLICT {
					// Another writer moved the log on first: a claim won
					// over a cancel, or another replica ended the job.
					r.log.Warn("job's log changed elsewhere; events not recorded", "job", snap.ID, "err", err)
				} else {
					r.log.Error("record events", "job", snap.ID, "err", err)
				}
				continue
			}
			// Measured before the batch is published: a follower told of
			// a job's end finds it counted.
			r.metrics.EventsPersisted(n, time.Since(start))
			for i := range changes {
				if changes[i].Status.Terminal() {
					r.metrics.JobFinished(&changes[i])
				}
			}
			r.broker.Publish(snap.ID, batch)
			for _, change := range changes {
				r.broker.PublishJob(change)
			}
		}
	}
}

// commit persists one batch, retrying transient failures (for example a
// busy database) a few times.
func (r *recorder) commit(job *Job, batch []Event) error {
	assertGapless(batch)
	var err error
	for attempt := range 5 {
		// Not the job's context: a canceled job still records how it ended.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err = r.store.AppendEvents(ctx, job, batch)
		cancel()
		if err == nil || ErrorCode(err) == ECONFLICT {
			return err
		}
		time.Sleep(time.Duration(attempt+1) * 50 * time.Millisecond)
	}
	return err
}

// assertGapless panics if batch is not a run of consecutive seqs: that
// would be a bug in the recorder, never a condition to handle.
func assertGapless(batch []Event) {
	for i := range batch {
		if batch[i].Seq != batch[0].Seq+int64(i) {
			panic(fmt.Sprintf("jobs: batch seq %d at %d, want %d", batch[i].Seq, i, batch[0].Seq+int64(i)))
		}
	}
}

// utf8Splitter turns a byte stream into valid UTF-8 chunks, holding back an
// incomplete multi-byte rune at the end of a chunk until the rest arrives.
type utf8Splitter struct {
	carry []byte
}

// Next returns the text of p (with what was held back before) that is safe
// to emit now.
func (s *utf8Splitter) Next(p []byte) string {
	var b []byte
	if len(s.carry) > 0 {
		b = append(s.carry, p...)
		s.carry = nil
	} else {
		b = p
	}
	cut := len(b)
	// Look back at most utf8.UTFMax-1 bytes for the start of a rune that
	// is not complete yet.
	for i := len(b) - 1; i >= 0 && i >= len(b)-(utf8.UTFMax-1); i-- {
		if utf8.RuneStart(b[i]) {
			if !utf8.FullRune(b[i:]) {
				cut = i
			}
			break
		}
	}
	if cut < len(b) {
		s.carry = append([]byte(nil), b[cut:]...)
	}
	return toValidUTF8(b[:cut])
}

// Flush returns whatever is held back (at the end of a stream).
func (s *utf8Splitter) Flush() string {
	b := s.carry
	s.carry = nil
	return toValidUTF8(b)
}

func toValidUTF8(b []byte) string {
	if utf8.Valid(b) {
		return string(b)
	}
	return string([]rune(string(b))) // replaces invalid bytes with U+FFFD
}
