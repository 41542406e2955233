package api_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"ci/api"
	"ci/jobs"
	"ci/ws"

	"github.com/coder/websocket"
)

// floodExec writes lines chunks of 1 KiB of numbered output.
type floodExec struct{ lines int }

func (f floodExec) Run(ctx context.Context, spec jobs.Spec, out jobs.Output) (jobs.Result, error) {
	for i := range f.lines {
		if err := out.Write(jobs.StreamStdout, []byte(floodLine(i))); err != nil {
			return jobs.Result{}, err
		}
	}
	return jobs.Result{}, nil
}

func floodLine(i int) string {
	head := fmt.Sprintf("%08d ", i)
	return head + strings.Repeat("x", 1023-len(head)) + "\n"
}

// heapInUse returns the live heap after a collection.
func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// TestSlowReaderBoundedAndComplete connects a WebSocket reader that stops
// reading while a job floods 96 MiB of output. The server must not buffer
// it: its heap stays far below the flood (what it holds is bounded by the
// recorder's pending bytes, one batch, one subscription buffer and one
// replay page, about 16 MiB of text). Once the reader catches up,
// the reader gets every line, in order, with gapless seqs.
func TestSlowReaderBoundedAndComplete(t *testing.T) {
	const lines = 96 << 10 // 96 MiB of 1 KiB lines
	store, arch, _ := openStore(t)
	svc := jobs.NewService(store, arch, floodExec{lines}, jobs.Config{Concurrency: 1, MaxOutput: 1 << 30})
	events := ws.NewHandler(svc, nil)
	events.WriteTimeout = 5 * time.Minute // the reader stalls on purpose
	srv := httptest.NewServer(api.NewHandler(svc, api.Config{Events: events}))
	defer srv.Close()
	defer events.Close()
	defer svc.Close()

	// Submit while no worker runs, so the reader connects before output.
	job, err := svc.Submit(context.Background(), strings.NewReader(string(project(t, 1, 0))), jobs.SubmitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http")+"/api/v1/jobs/"+job.ID+"/events", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	c.SetReadLimit(1 << 22)

	before := heapInUse()
	if err := svc.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	// The reader reads nothing until the whole flood is stored.
	var peak uint64
	for {
		j, err := store.Job(context.Background(), job.ID)
		if err != nil {
			t.Fatal(err)
		}
		peak = max(peak, heapInUse())
		if j.Status.Terminal() {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	growth := int64(peak) - int64(before)
	t.Logf("heap in use: %d MiB before, %d MiB peak while the reader stalled (flood: %d MiB)", before>>20, peak>>20, lines>>10)
	// What the server holds is bounded by constants (about 4 MiB each: the
	// recorder's pending text, the batch being committed and its SQL
	// copies, one subscription buffer, one replay page), not by the flood:
	// measured peaks are 15 to 38 MiB. Buffering the flood would be 96.
	if growth > 48<<20 {
		t.Fatalf("heap grew by %d MiB while a reader stalled during a %d MiB flood; want it bounded (< 48 MiB)", growth>>20, lines>>10)
	}

	// Catch up: every line once, in order.
	var text strings.Builder
	want := int64(1)
	for {
		_, b, err := c.Read(ctx)
		if err != nil {
			if websocket.CloseStatus(err) != websocket.StatusNormalClosure {
				t.Fatalf("read: %v, want a normal close after the last event", err)
			}
			break
		}
		var ev jobs.Event
		if err := json.Unmarshal(b, &ev); err != nil {
			t.Fatal(err)
		}
		if ev.Seq != want {
			t.Fatalf("seq %d, want %d", ev.Seq, want)
		}
		want++
		text.WriteString(ev.Text)
	}
	got := text.String()
	if len(got) != lines*1024 {
		t.Fatalf("got %d bytes of output, want %d", len(got), lines*1024)
	}
	for i := 0; i < lines; i += 997 {
		if got[i*1024:(i+1)*1024] != floodLine(i) {
			t.Fatalf("line %d is not where it belongs", i)
		}
	}
}
