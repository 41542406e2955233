package jobs

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"
)

func TestUTF8SplitterHoldsBackIncompleteRunes(t *testing.T) {
	text := "héllo → wörld ✓ 𝄞 done"
	b := []byte(text)
	// Every way of cutting the text in two must give it back whole, with
	// each piece valid UTF-8 on its own.
	for cut := 0; cut <= len(b); cut++ {
		var s utf8Splitter
		a := s.Next(b[:cut])
		c := s.Next(b[cut:])
		d := s.Flush()
		for _, part := range []string{a, c, d} {
			if !utf8.ValidString(part) {
				t.Fatalf("cut %d: invalid UTF-8 chunk %q", cut, part)
			}
		}
		if got := a + c + d; got != text {
			t.Fatalf("cut %d: got %q, want %q", cut, got, text)
		}
	}
}

func TestUTF8SplitterByteByByte(t *testing.T) {
	text := "∑ añb 🙂"
	var s utf8Splitter
	var got strings.Builder
	for _, c := range []byte(text) {
		got.WriteString(s.Next([]byte{c}))
	}
	got.WriteString(s.Flush())
	if got.String() != text {
		t.Fatalf("got %q, want %q", got.String(), text)
	}
}

func TestUTF8SplitterReplacesInvalidBytes(t *testing.T) {
	var s utf8Splitter
	got := s.Next([]byte{'a', 0xff, 'b'}) + s.Flush()
	if !utf8.ValidString(got) || !strings.HasPrefix(got, "a") || !strings.HasSuffix(got, "b") {
		t.Fatalf("got %q, want valid UTF-8 a?b", got)
	}
	// An incomplete rune at the very end of a stream is replaced, not lost.
	s = utf8Splitter{}
	got = s.Next([]byte{'x', 0xe2, 0x82}) + s.Flush()
	if !utf8.ValidString(got) || !strings.HasPrefix(got, "x") || len(got) < 2 {
		t.Fatalf("got %q, want x followed by replacement characters", got)
	}
}

func newTestJob(t *testing.T, st *memStore) *Job {
	t.Helper()
	job := &Job{Status: StatusQueued, LastSeq: 1}
	if err := st.CreateJob(context.Background(), job, []Event{{Seq: 1, Type: EventStatus, Status: StatusQueued}}); err != nil {
		t.Fatal(err)
	}
	return job
}

// TestRecorderConcurrentEmittersGapless hammers one recorder from many
// goroutines: the stored log must be gapless from 1 and hold every chunk.
func TestRecorderConcurrentEmittersGapless(t *testing.T) {
	st := newMemStore()
	job := newTestJob(t, st)
	b := NewBroker()
	rec := newRecorder(st, b, nopMetrics{}, slog.New(slog.DiscardHandler), job)

	const writers, perWriter = 8, 500
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			stream := StreamStdout
			if w%2 == 1 {
				stream = StreamStderr
			}
			for i := range perWriter {
				if err := rec.Log(stream, fmt.Sprintf("w%d-%d\n", w, i), nil); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := rec.Status(StatusPassed, nil); err != nil {
		t.Fatal(err)
	}
	if err := rec.Close(); err != nil {
		t.Fatal(err)
	}

	evs, _ := st.Events(context.Background(), job.ID, 0, 1<<30)
	var text strings.Builder
	for i, ev := range evs {
		if ev.Seq != int64(i+1) {
			t.Fatalf("event %d has seq %d, want %d", i, ev.Seq, i+1)
		}
		text.WriteString(ev.Text)
	}
	if !evs[len(evs)-1].Terminal() {
		t.Fatalf("last event %+v is not terminal", evs[len(evs)-1])
	}
	all := text.String()
	for w := range writers {
		for i := range perWriter {
			if n := strings.Count(all, fmt.Sprintf("w%d-%d\n", w, i)); n != 1 {
				t.Fatalf("chunk w%d-%d stored %d times, want 1", w, i, n)
			}
		}
	}
	got, _ := st.Job(context.Background(), job.ID)
	if got.LastSeq != evs[len(evs)-1].Seq || got.Status != StatusPassed {
		t.Fatalf("job last_seq=%d status=%s, want %d passed", got.LastSeq, got.Status, evs[len(evs)-1].Seq)
	}
}

// TestRecorderPersistsBeforePublishing checks that a subscriber never
// hears of an event the store does not have yet.
func TestRecorderPersistsBeforePublishing(t *testing.T) {
	st := newMemStore()
	job := newTestJob(t, st)
	b := NewBroker()
	sub := b.Subscribe(job.ID, 100000)
	defer sub.Close()
	rec := newRecorder(st, b, nopMetrics{}, slog.New(slog.DiscardHandler), job)
	for i := range 2000 {
		if err := rec.Log(StreamStdout, fmt.Sprintf("%d ", i), nil); err != nil {
			t.Fatal(err)
		}
	}
	rec.Status(StatusPassed, nil)
	if err := rec.Close(); err != nil {
		t.Fatal(err)
	}
	for {
		ev := <-sub.C
		stored, _ := st.Events(context.Background(), job.ID, ev.Seq-1, 1)
		if len(stored) != 1 || stored[0].Seq != ev.Seq || stored[0].Text != ev.Text {
			t.Fatalf("published seq %d (%q) is not the stored one (%+v)", ev.Seq, ev.Text, stored)
		}
		if ev.Terminal() {
			break
		}
	}
}

// TestRecorderGroupCommit checks that output arriving while a commit is in
// flight is batched (fewer transactions than chunks) and merged into fewer
// events, without losing or reordering any byte.
func TestRecorderGroupCommit(t *testing.T) {
	st := newMemStore()
	job := newTestJob(t, st)
	release := make(chan struct{})
	var commits int
	first := true
	st.onAppend = func(string, []Event) {
		commits++
		if first {
			first = false
			<-release // hold the first commit open while more output arrives
		}
	}
	rec := newRecorder(st, NewBroker(), nopMetrics{}, slog.New(slog.DiscardHandler), job)
	rec.Log(StreamStdout, "start\n", nil)
	// Wait until the writer is inside the first commit, so everything below
	// queues behind it.
	waitFor(t, func() bool {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		return len(rec.pending) == 0 && rec.job.LastSeq == 2
	})
	var want strings.Builder
	want.WriteString("start\n")
	for i := range 1000 {
		s := fmt.Sprintf("line %d\n", i)
		want.WriteString(s)
		rec.Log(StreamStdout, s, nil)
	}
	close(release)
	rec.Status(StatusPassed, nil)
	if err := rec.Close(); err != nil {
		t.Fatal(err)
	}
	evs, _ := st.Events(context.Background(), job.ID, 1, 1<<30)
	var got strings.Builder
	for _, ev := range evs {
		got.WriteString(ev.Text)
	}
	if got.String() != want.String() {
		t.Fatalf("stored text differs from what was written")
	}
	if commits > 3 {
		t.Fatalf("%d commits for 1001 chunks written behind one slow commit, want <= 3", commits)
	}
	if len(evs) > 10 {
		t.Fatalf("%d events for chunks that queued together, want them merged", len(evs))
	}
}

// TestPublishedEventsCarryTheirJSON checks that the recorder encodes each
// committed event once (Raw) and that the encoding is the event's own.
func TestPublishedEventsCarryTheirJSON(t *testing.T) {
	st := newMemStore()
	broker := NewBroker()
	job := &Job{Status: StatusQueued, CreatedAt: time.Now()}
	if err := st.CreateJob(context.Background(), job, nil); err != nil {
		t.Fatal(err)
	}
	sub := broker.Subscribe(job.ID, 16)
	defer sub.Close()
	rec := newRecorder(st, broker, nopMetrics{}, slog.New(slog.DiscardHandler), job)
	rec.Log(StreamStdout, "hello\n", nil)
	rec.Status(StatusPassed, nil)
	rec.Close()
	n := 0
	for n < 2 {
		ev, ok := <-sub.C
		if !ok {
			t.Fatal("subscription closed early")
		}
		n++
		plain := *ev
		plain.Raw = nil
		want, _ := json.Marshal(&plain)
		if string(ev.Raw) != string(want) {
			t.Fatalf("event %d Raw %s, want %s", ev.Seq, ev.Raw, want)
		}
	}
}
