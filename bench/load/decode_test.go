package main

import (
	"encoding/json"
	"math/rand/v2"
	"testing"
	"time"

	"ci/jobs"
)

// TestDecodeEvent checks the fast decoder against encoding/json on what the
// server sends.
func TestDecodeEvent(t *testing.T) {
	code := 1
	texts := []string{"", "plain", "a\nb\r\n", "quote \" backslash \\ slash /", "tab\tbell\x07\x00nul",
		"<html> & \u2028\u2029", "é ü ß 日本 🎉", "\x1b[32mgreen\x1b[0m\n", "ci-bench 000000001 xxxx\n"}
	var evs []jobs.Event
	for i, text := range texts {
		evs = append(evs, jobs.Event{Seq: int64(i + 1), Time: time.Now(), Type: jobs.EventLog, Stream: jobs.StreamStdout, Text: text})
	}
	evs = append(evs,
		jobs.Event{Seq: 1, Time: time.Now(), Type: jobs.EventStatus, Status: jobs.StatusQueued},
		jobs.Event{Seq: 99, Type: jobs.EventResult, ExitCode: &code, DurationS: 1.5,
			Tests:    &jobs.TestCounts{Total: 3, Passed: 1, Failed: 2},
			Failures: []jobs.Failure{{NodeID: "t.py::a", Message: "assert 1 == 2 {\"x\": [1]}"}}},
		jobs.Event{Seq: 100, Type: jobs.EventStatus, Status: jobs.StatusFailed, ExitCode: &code, Reason: "tests \"failed\""},
	)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 200 {
		b := make([]rune, rng.IntN(40))
		for k := range b {
			b[k] = rune(rng.IntN(0x1F700))
		}
		evs = append(evs, jobs.Event{Seq: int64(i), Type: jobs.EventLog, Stream: jobs.StreamStderr, Text: string(b)})
	}
	var ev event
	for _, e := range evs {
		data, err := json.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		var want struct {
			Seq                        int64
			Type, Stream, Status, Text string
		}
		if err := json.Unmarshal(data, &want); err != nil {
			t.Fatal(err)
		}
		if d := (decoder{b: data}); !d.object(&event{}) {
			t.Errorf("fast path refused %s", data)
		}
		if err := decodeEvent(data, &ev); err != nil {
			t.Fatalf("decode %s: %v", data, err)
		}
		if ev.Seq != want.Seq || ev.Type != want.Type || ev.Stream != want.Stream || ev.Status != want.Status || string(ev.Text) != want.Text {
			t.Errorf("decode %s:\ngot  %d %q %q %q %q\nwant %d %q %q %q %q", data,
				ev.Seq, ev.Type, ev.Stream, ev.Status, ev.Text, want.Seq, want.Type, want.Stream, want.Status, want.Text)
		}
	}
	if err := decodeEvent([]byte(`{"seq":1,`), &ev); err == nil {
		t.Error("decoded a truncated message")
	}
}

// TestLines checks marker line parsing across chunk boundaries.
func TestLines(t *testing.T) {
	w := &watcher{timestamps: true}
	now := time.Unix(0, 5_000_000)
	for _, chunk := range []string{"test_x.py ", "ci-bench 0 1000000\nci-bench 1 2", "000000\n", "\nci-bench 2 3000000 pad\n"} {
		w.text(jobs.StreamStdout, []byte(chunk), now)
	}
	if w.err != nil || w.lines != 3 {
		t.Fatalf("lines=%d err=%v, want 3 and no error", w.lines, w.err)
	}
	if w.lat[0] != 4000 || w.lat[1] != 3000 || w.lat[2] != 2000 {
		t.Errorf("latencies %v µs, want [4000 3000 2000]", w.lat)
	}
	w.text(jobs.StreamStdout, []byte("ci-bench 4 1\n"), now)
	if w.err == nil {
		t.Error("a skipped line went unnoticed")
	}
}
