package ws_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"ci/jobs"
	"ci/ws"

	"github.com/coder/websocket"
)

// stubSource serves a fixed log; events past the first `live` are held
// until released, to simulate a job still running.
type stubSource struct {
	events  []jobs.Event
	release chan struct{} // nil: everything is available at once
	afters  chan int64
}

func (s *stubSource) Job(ctx context.Context, id string) (*jobs.Job, error) {
	if id != "j1" {
		return nil, jobs.Errorf(jobs.ENOTFOUND, "job %q not found", id)
	}
	return &jobs.Job{ID: id}, nil
}

func (s *stubSource) Follow(ctx context.Context, id string, after int64, fn func(jobs.Event) error) error {
	if s.afters != nil {
		s.afters <- after
	}
	for _, ev := range s.events {
		if ev.Seq <= after {
			continue
		}
		if ev.Terminal() && s.release != nil {
			select {
			case <-s.release:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		if err := fn(ev); err != nil {
			return err
		}
	}
	return nil
}

// WatchJobs sends a snapshot, then the stub's job changes, then waits.
func (s *stubSource) WatchJobs(ctx context.Context, limit int, fn func([]*jobs.Job, *jobs.Job) error) error {
	if err := fn([]*jobs.Job{{ID: "j1", Status: jobs.StatusQueued, LastSeq: 1}}, nil); err != nil {
		return err
	}
	if err := fn(nil, &jobs.Job{ID: "j1", Status: jobs.StatusRunning, LastSeq: 2}); err != nil {
		return err
	}
	<-ctx.Done()
	return ctx.Err()
}

func testEvents() []jobs.Event {
	code := 0
	return []jobs.Event{
		{Seq: 1, Type: jobs.EventStatus, Status: jobs.StatusQueued},
		{Seq: 2, Type: jobs.EventStatus, Status: jobs.StatusRunning},
		{Seq: 3, Type: jobs.EventLog, Stream: jobs.StreamStdout, Text: "."},
		{Seq: 4, Type: jobs.EventLog, Stream: jobs.StreamStderr, Text: "warn\n"},
		{Seq: 5, Type: jobs.EventStatus, Status: jobs.StatusPassed, ExitCode: &code},
	}
}

func serve(t *testing.T, src ws.Source) (*httptest.Server, *ws.Handler) {
	t.Helper()
	return serveMeasured(t, src, nil)
}

// serveMeasured is serve with the handler's Metrics set to m.
func serveMeasured(t *testing.T, src ws.Source, m ws.Metrics) (*httptest.Server, *ws.Handler) {
	t.Helper()
	h := ws.NewHandler(src, nil)
	h.Metrics = m
	mux := http.NewServeMux()
	mux.Handle("GET /api/v1/jobs/{id}/events", h)
	mux.HandleFunc("GET /api/v1/events", h.ServeJobs)
	srv := httptest.NewServer(mux)
	t.Cleanup(func() { h.Close(); srv.Close() })
	return srv, h
}

func dial(t *testing.T, srv *httptest.Server, path string) (*websocket.Conn, *http.Response, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return websocket.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http")+path, nil)
}

// readAll reads messages until the connection closes and returns them with
// the close status.
func readAll(t *testing.T, c *websocket.Conn) ([]map[string]any, websocket.StatusCode) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var msgs []map[string]any
	for {
		typ, b, err := c.Read(ctx)
		if err != nil {
			t.Logf("read end: %v", err)
			return msgs, websocket.CloseStatus(err)
		}
		if typ != websocket.MessageText {
			t.Fatalf("message type %v, want text", typ)
		}
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatalf("message %q is not JSON: %v", b, err)
		}
		msgs = append(msgs, m)
	}
}

func TestEventsReplayThenNormalClose(t *testing.T) {
	srv, _ := serve(t, &stubSource{events: testEvents()})
	c, _, err := dial(t, srv, "/api/v1/jobs/j1/events?after=2")
	if err != nil {
		t.Fatal(err)
	}
	msgs, status := readAll(t, c)
	if status != websocket.StatusNormalClosure {
		t.Fatalf("close status %v, want 1000", status)
	}
	if len(msgs) != 3 {
		t.Fatalf("%d messages, want 3 (seq 3..5): %v", len(msgs), msgs)
	}
	if msgs[0]["seq"] != 3.0 || msgs[0]["type"] != "log" || msgs[0]["stream"] != "stdout" || msgs[0]["text"] != "." || msgs[0]["time"] == nil {
		t.Fatalf("first message %v, want log seq 3 on stdout with time", msgs[0])
	}
	if msgs[2]["type"] != "status" || msgs[2]["status"] != "passed" || msgs[2]["exit_code"] != 0.0 {
		t.Fatalf("last message %v, want status passed with exit_code 0", msgs[2])
	}
}

func TestEventsUnknownJobIs404BeforeUpgrade(t *testing.T) {
	srv, _ := serve(t, &stubSource{events: testEvents()})
	_, resp, err := dial(t, srv, "/api/v1/jobs/nope/events")
	if err == nil || resp == nil || resp.StatusCode != http.StatusNotFound {
		t.Fatalf("dial err=%v resp=%v, want HTTP 404", err, resp)
	}
	var body map[string]string
	json.NewDecoder(resp.Body).Decode(&body)
	if body["code"] != jobs.ENOTFOUND || !strings.Contains(body["error"], "nope") {
		t.Fatalf("error body %v, want not_found naming the job", body)
	}
}

func TestEventsBadAfterIs400(t *testing.T) {
	srv, _ := serve(t, &stubSource{events: testEvents()})
	for _, after := range []string{"x", "-1", "1.5"} {
		resp, err := http.Get(srv.URL + "/api/v1/jobs/j1/events?after=" + after)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("after=%s: status %d, want 400", after, resp.StatusCode)
		}
	}
}

func TestEventsCloseGoingAwayOnShutdown(t *testing.T) {
	src := &stubSource{events: testEvents(), release: make(chan struct{}), afters: make(chan int64, 1)}
	srv, h := serve(t, src)
	c, _, err := dial(t, srv, "/api/v1/jobs/j1/events")
	if err != nil {
		t.Fatal(err)
	}
	if a := <-src.afters; a != 0 {
		t.Fatalf("after=%d, want 0 by default", a)
	}
	// Read the four events before the (held) terminal one, then shut down.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for i := range 4 {
		if _, _, err := c.Read(ctx); err != nil {
			t.Fatalf("read %d: %v", i, err)
		}
	}
	closed := make(chan struct{})
	go func() { h.Close(); close(closed) }()
	_, status := readAll(t, c)
	<-closed
	if status != websocket.StatusGoingAway {
		t.Fatalf("close status %v, want 1001", status)
	}
}

func TestJobsFeedSnapshotThenChanges(t *testing.T) {
	srv, h := serve(t, &stubSource{events: testEvents()})
	c, _, err := dial(t, srv, "/api/v1/events?limit=5")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var msgs []map[string]any
	for range 2 {
		_, b, err := c.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		json.Unmarshal(b, &m)
		msgs = append(msgs, m)
	}
	snap, _ := msgs[0]["jobs"].([]any)
	if msgs[0]["type"] != "snapshot" || len(snap) != 1 {
		t.Fatalf("first message %v, want a snapshot of one job", msgs[0])
	}
	job, _ := msgs[1]["job"].(map[string]any)
	if msgs[1]["type"] != "job" || job["status"] != "running" || job["last_seq"] != 2.0 {
		t.Fatalf("second message %v, want a change to running with last_seq 2", msgs[1])
	}
	closed := make(chan struct{})
	go func() { h.Close(); close(closed) }()
	_, status := readAll(t, c)
	<-closed
	if status != websocket.StatusGoingAway {
		t.Fatalf("close status %v on shutdown, want 1001", status)
	}
}

func TestJobsFeedBadLimit(t *testing.T) {
	srv, _ := serve(t, &stubSource{})
	resp, err := http.Get(srv.URL + "/api/v1/events?limit=0")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("status %d, want 400", resp.StatusCode)
	}
}

// streamCounter counts open streams by kind.
type streamCounter struct {
	mu   sync.Mutex
	open map[string]int
}

func (c *streamCounter) StreamOpened(kind string) { c.add(kind, 1) }
func (c *streamCounter) StreamClosed(kind string) { c.add(kind, -1) }

func (c *streamCounter) add(kind string, d int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.open[kind] += d
}

func (c *streamCounter) is(events, jobs int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.open[ws.StreamEvents] == events && c.open[ws.StreamJobs] == jobs
}

// waitOpen waits until c counts events and jobs streams open.
func waitOpen(t *testing.T, c *streamCounter, events, jobs int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !c.is(events, jobs) {
		if time.Now().After(deadline) {
			c.mu.Lock()
			defer c.mu.Unlock()
			t.Fatalf("open streams %v, want %d events and %d jobs", c.open, events, jobs)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestMetricsCountOpenStreams checks that each kind of stream is counted
// while it is open, whichever side ends it.
func TestMetricsCountOpenStreams(t *testing.T) {
	src := &stubSource{events: testEvents(), release: make(chan struct{})}
	m := &streamCounter{open: map[string]int{}}
	srv, _ := serveMeasured(t, src, m)
	events, _, err := dial(t, srv, "/api/v1/jobs/j1/events")
	if err != nil {
		t.Fatal(err)
	}
	feed, _, err := dial(t, srv, "/api/v1/events")
	if err != nil {
		t.Fatal(err)
	}
	waitOpen(t, m, 1, 1)
	if resp, err := http.Get(srv.URL + "/api/v1/jobs/nope/events"); err == nil {
		resp.Body.Close() // refused before the upgrade: never counted
	}
	close(src.release) // the job ends: the server closes the stream
	if _, status := readAll(t, events); status != websocket.StatusNormalClosure {
		t.Fatalf("close status %v, want 1000", status)
	}
	waitOpen(t, m, 0, 1)
	feed.Close(websocket.StatusNormalClosure, "bye") // the client leaves
	waitOpen(t, m, 0, 0)
}

// TestEventsRawSentAsIs checks that an event encoded once by the recorder
// (Raw) is sent byte for byte, not encoded again.
func TestEventsRawSentAsIs(t *testing.T) {
	evs := testEvents()
	raw := `{"seq":3,"time":"2026-12-03T00:00:00Z","type":"log","stream":"stdout","text":"pre-encoded"}`
	for i := range evs {
		if evs[i].Seq == 3 {
			evs[i].Raw = []byte(raw)
		}
	}
	srv, _ := serve(t, &stubSource{events: evs})
	c, _, err := dial(t, srv, "/api/v1/jobs/j1/events?after=2")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, b, err := c.Read(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != raw {
		t.Fatalf("first message %s, want the event's Raw %s", b, raw)
	}
	c.CloseNow()
}
