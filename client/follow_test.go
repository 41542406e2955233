package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/coder/websocket/wsjson"

	"ci/client"
)

// Ways a fake events connection ends after sending its events.
const (
	endNormal    = "normal"     // close 1000
	endAbrupt    = "abrupt"     // drop the TCP connection, no close frame
	endGoingAway = "going_away" // close 1001
	endHang      = "hang"       // send nothing more until the client leaves
)

// eventsServer is a fake ci-server for one job "J1" with the given events.
// plan decides, for the i-th connection (from 0) that asked for after,
// up to which seq it sends and how it ends.
type eventsServer struct {
	events []client.Event
	job    client.Job
	plan   func(i int, after int64) (upTo int64, end string)

	mu     sync.Mutex
	afters []int64
}

func (s *eventsServer) Afters() []int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]int64(nil), s.afters...)
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]string{"error": msg, "code": code})
}

func (s *eventsServer) handler(t *testing.T) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/v1/jobs/{id}", func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("id") != "J1" {
			writeError(w, 404, "not_found", "job not found")
			return
		}
		json.NewEncoder(w).Encode(s.job)
	})
	mux.HandleFunc("GET /api/v1/jobs/{id}/events", func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("id") != "J1" {
			writeError(w, 404, "not_found", "job not found")
			return
		}
		after, err := strconv.ParseInt(r.URL.Query().Get("after"), 10, 64)
		if err != nil || after < 0 {
			writeError(w, 400, "invalid", "bad after")
			return
		}
		s.mu.Lock()
		i := len(s.afters)
		s.afters = append(s.afters, after)
		s.mu.Unlock()
		upTo, end := s.plan(i, after)

		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			t.Errorf("accept: %v", err)
			return
		}
		ctx := r.Context()
		for _, ev := range s.events {
			if ev.Seq > after && ev.Seq <= upTo {
				if err := wsjson.Write(ctx, c, ev); err != nil {
					c.CloseNow()
					return
				}
			}
		}
		switch end {
		case endNormal:
			c.Close(websocket.StatusNormalClosure, "")
		case endGoingAway:
			c.Close(websocket.StatusGoingAway, "server shutting down")
		case endHang:
			c.Read(ctx) // returns when the client drops the connection
			c.CloseNow()
		default:
			c.CloseNow()
		}
	})
	return mux
}

// makeEvents returns n events: queued, running, logs, and a terminal
// failed status with exit code 1.
func makeEvents(n int) []client.Event {
	evs := make([]client.Event, n)
	for i := range evs {
		seq := int64(i + 1)
		switch {
		case i == 0:
			evs[i] = client.Event{Seq: seq, Type: "status", Status: "queued"}
		case i == 1:
			evs[i] = client.Event{Seq: seq, Type: "status", Status: "running"}
		case i == n-1:
			code := 1
			evs[i] = client.Event{Seq: seq, Type: "status", Status: "failed", ExitCode: &code, Reason: "tests failed"}
		default:
			evs[i] = client.Event{Seq: seq, Type: "log", Stream: "stdout", Text: fmt.Sprintf("chunk %d.", seq)}
		}
		evs[i].Time = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	}
	return evs
}

func newTestClient(url string, opts ...client.Option) *client.Client {
	opts = append([]client.Option{
		client.WithBackoff(time.Millisecond, 4*time.Millisecond),
		client.WithGiveUpAfter(20 * time.Second),
		client.WithIdleTimeout(20 * time.Second),
	}, opts...)
	return client.New(url, opts...)
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// follow runs Follow and returns the seqs delivered to fn.
func follow(t *testing.T, c *client.Client, after int64) ([]int64, client.Event, error) {
	t.Helper()
	var got []int64
	term, err := c.Follow(testContext(t), "J1", after, func(ev client.Event) error {
		got = append(got, ev.Seq)
		return nil
	})
	return got, term, err
}

func seqs(from, to int64) []int64 {
	var s []int64
	for i := from; i <= to; i++ {
		s = append(s, i)
	}
	return s
}

func TestFollow(t *testing.T) {
	const n = 10
	tests := []struct {
		name       string
		after      int64
		plan       func(i int, after int64) (int64, string)
		wantAfters []int64
	}{
		{
			name:       "one connection",
			plan:       func(int, int64) (int64, string) { return n, endNormal },
			wantAfters: []int64{0},
		},
		{
			name:       "from after",
			after:      4,
			plan:       func(int, int64) (int64, string) { return n, endNormal },
			wantAfters: []int64{4},
		},
		{
			name: "dropped mid-stream",
			plan: func(i int, _ int64) (int64, string) {
				if i == 0 {
					return 3, endAbrupt
				}
				return n, endNormal
			},
			wantAfters: []int64{0, 3},
		},
		{
			name: "dropped twice, once before any event",
			plan: func(i int, _ int64) (int64, string) {
				switch i {
				case 0:
					return 4, endAbrupt
				case 1:
					return 4, endAbrupt
				case 2:
					return 7, endAbrupt
				}
				return n, endNormal
			},
			wantAfters: []int64{0, 4, 4, 7},
		},
		{
			name: "going away",
			plan: func(i int, _ int64) (int64, string) {
				if i == 0 {
					return 5, endGoingAway
				}
				return n, endNormal
			},
			wantAfters: []int64{0, 5},
		},
		{
			name: "normal close before the end",
			plan: func(i int, _ int64) (int64, string) {
				if i == 0 {
					return 6, endNormal
				}
				return n, endNormal
			},
			wantAfters: []int64{0, 6},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			es := &eventsServer{events: makeEvents(n), plan: tt.plan, job: client.Job{ID: "J1", Status: "running", LastSeq: 6}}
			srv := httptest.NewServer(es.handler(t))
			defer srv.Close()

			var notices []int
			c := newTestClient(srv.URL, client.WithReconnectNotice(func(err error, attempt int, _ time.Duration) {
				if err == nil {
					t.Errorf("reconnect notice without an error")
				}
				notices = append(notices, attempt)
			}))
			got, term, err := follow(t, c, tt.after)
			if err != nil {
				t.Fatalf("Follow: %v", err)
			}
			if want := seqs(tt.after+1, n); !reflect.DeepEqual(got, want) {
				t.Fatalf("delivered seqs %v, want %v", got, want)
			}
			if term.Seq != n || term.Status != "failed" || term.ExitCode == nil || *term.ExitCode != 1 {
				t.Fatalf("terminal event %+v, want seq %d failed exit 1", term, n)
			}
			if got := es.Afters(); !reflect.DeepEqual(got, tt.wantAfters) {
				t.Fatalf("connections asked for after=%v, want %v", got, tt.wantAfters)
			}
			if len(notices) != len(tt.wantAfters)-1 {
				t.Fatalf("%d reconnect notices, want %d", len(notices), len(tt.wantAfters)-1)
			}
		})
	}
}

func TestFollowNotFoundIsFinal(t *testing.T) {
	es := &eventsServer{plan: func(int, int64) (int64, string) { return 0, endNormal }}
	srv := httptest.NewServer(es.handler(t))
	defer srv.Close()
	c := newTestClient(srv.URL, client.WithReconnectNotice(func(error, int, time.Duration) {
		t.Errorf("reconnect after 404")
	}))
	_, err := c.Follow(testContext(t), "nope", 0, func(client.Event) error { return nil })
	var apiErr *client.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 404 || apiErr.Code != "not_found" || apiErr.Message != "job not found" {
		t.Fatalf("err = %v, want *Error 404 not_found", err)
	}
	if !client.IsNotFound(err) {
		t.Fatalf("IsNotFound(%v) = false", err)
	}
}

func TestFollowGapIsError(t *testing.T) {
	for _, tt := range []struct {
		name string
		seqs []int64
	}{
		{"gap", []int64{1, 2, 4}},
		{"duplicate", []int64{1, 2, 2}},
		{"not from after+1", []int64{2}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			es := &eventsServer{plan: func(int, int64) (int64, string) { return 100, endNormal }}
			for _, s := range tt.seqs {
				es.events = append(es.events, client.Event{Seq: s, Type: "log", Stream: "stdout", Text: "x"})
			}
			srv := httptest.NewServer(es.handler(t))
			defer srv.Close()
			got, _, err := follow(t, newTestClient(srv.URL), 0)
			if !errors.Is(err, client.ErrSequence) {
				t.Fatalf("err = %v, want ErrSequence", err)
			}
			if want := tt.seqs[:len(tt.seqs)-1]; len(got) != len(want) {
				t.Fatalf("delivered %v, want %v", got, want)
			}
			if n := len(es.Afters()); n != 1 {
				t.Fatalf("%d connections, want 1 (no retry)", n)
			}
		})
	}
}

func TestFollowFnErrorStops(t *testing.T) {
	es := &eventsServer{events: makeEvents(6), plan: func(int, int64) (int64, string) { return 6, endNormal }}
	srv := httptest.NewServer(es.handler(t))
	defer srv.Close()
	boom := errors.New("boom")
	var got []int64
	_, err := newTestClient(srv.URL).Follow(testContext(t), "J1", 0, func(ev client.Event) error {
		got = append(got, ev.Seq)
		if ev.Seq == 3 {
			return boom
		}
		return nil
	})
	if !errors.Is(err, boom) {
		t.Fatalf("err = %v, want boom", err)
	}
	if !reflect.DeepEqual(got, []int64{1, 2, 3}) {
		t.Fatalf("delivered %v, want [1 2 3]", got)
	}
}

func TestFollowAfterTerminal(t *testing.T) {
	code := 5
	es := &eventsServer{
		events: makeEvents(4),
		plan:   func(int, int64) (int64, string) { return 4, endNormal },
		job:    client.Job{ID: "J1", Status: "failed", ExitCode: &code, Reason: "no tests", LastSeq: 4},
	}
	srv := httptest.NewServer(es.handler(t))
	defer srv.Close()
	got, term, err := follow(t, newTestClient(srv.URL), 4)
	if err != nil {
		t.Fatalf("Follow: %v", err)
	}
	if len(got) != 0 {
		t.Fatalf("delivered %v, want none", got)
	}
	if term.Seq != 4 || term.Status != "failed" || term.ExitCode == nil || *term.ExitCode != 5 || term.Reason != "no tests" {
		t.Fatalf("terminal %+v, want the job's end", term)
	}
}

func TestFollowIdleConnectionReconnects(t *testing.T) {
	es := &eventsServer{events: makeEvents(5), plan: func(i int, _ int64) (int64, string) {
		if i == 0 {
			return 2, endHang
		}
		return 5, endNormal
	}}
	srv := httptest.NewServer(es.handler(t))
	defer srv.Close()
	got, _, err := follow(t, newTestClient(srv.URL, client.WithIdleTimeout(50*time.Millisecond)), 0)
	if err != nil {
		t.Fatalf("Follow: %v", err)
	}
	if !reflect.DeepEqual(got, seqs(1, 5)) {
		t.Fatalf("delivered %v, want 1..5", got)
	}
	if got := es.Afters(); !reflect.DeepEqual(got, []int64{0, 2}) {
		t.Fatalf("afters %v, want [0 2]", got)
	}
}

// refusingTransport fails the first n dials with ECONNREFUSED.
func refusingTransport(n int32) *http.Transport {
	var dials atomic.Int32
	tr := http.DefaultTransport.(*http.Transport).Clone()
	d := &net.Dialer{}
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		if dials.Add(1) <= n {
			return nil, &net.OpError{Op: "dial", Net: network, Err: syscall.ECONNREFUSED}
		}
		return d.DialContext(ctx, network, addr)
	}
	return tr
}

func TestFollowDialRefusedRetries(t *testing.T) {
	es := &eventsServer{events: makeEvents(5), plan: func(int, int64) (int64, string) { return 5, endNormal }}
	srv := httptest.NewServer(es.handler(t))
	defer srv.Close()
	var attempts []int
	c := newTestClient(srv.URL,
		client.WithHTTPClient(&http.Client{Transport: refusingTransport(3)}),
		client.WithReconnectNotice(func(err error, attempt int, _ time.Duration) {
			if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Errorf("notice error %v, want ECONNREFUSED", err)
			}
			attempts = append(attempts, attempt)
		}))
	got, _, err := follow(t, c, 0)
	if err != nil {
		t.Fatalf("Follow: %v", err)
	}
	if !reflect.DeepEqual(got, seqs(1, 5)) {
		t.Fatalf("delivered %v, want 1..5", got)
	}
	if !reflect.DeepEqual(attempts, []int{1, 2, 3}) {
		t.Fatalf("reconnect attempts %v, want [1 2 3]", attempts)
	}
}

func TestFollowGivesUp(t *testing.T) {
	c := newTestClient("http://127.0.0.1:1",
		client.WithHTTPClient(&http.Client{Transport: refusingTransport(1 << 30)}),
		client.WithGiveUpAfter(20*time.Millisecond))
	_, _, err := follow(t, c, 0)
	if err == nil || !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("err = %v, want a give-up wrapping ECONNREFUSED", err)
	}
}

func TestFollowContextCanceled(t *testing.T) {
	es := &eventsServer{events: makeEvents(5), plan: func(int, int64) (int64, string) { return 2, endHang }}
	srv := httptest.NewServer(es.handler(t))
	defer srv.Close()
	ctx, cancel := context.WithCancel(testContext(t))
	_, err := newTestClient(srv.URL).Follow(ctx, "J1", 0, func(ev client.Event) error {
		if ev.Seq == 2 {
			cancel()
		}
		return nil
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
}

func TestExitCode(t *testing.T) {
	one, five, zero := 1, 5, 0
	tests := []struct {
		status string
		code   *int
		want   int
	}{
		{"passed", nil, 0},
		{"passed", &zero, 0},
		{"failed", &one, 1},
		{"failed", &five, 5},
		{"failed", nil, 1},
		{"failed", &zero, 1},
		{"error", nil, 125},
		{"error", &one, 125},
		{"timed_out", nil, 124},
		{"canceled", nil, 130},
		{"running", nil, 125},
		{"bogus", nil, 125},
	}
	for _, tt := range tests {
		if got := client.ExitCode(tt.status, tt.code); got != tt.want {
			t.Errorf("ExitCode(%q, %v) = %d, want %d", tt.status, tt.code, got, tt.want)
		}
	}
}

// TestFollowPhaseEvents checks that phase events, as the server sends them,
// are delivered in order with their phase.
func TestFollowPhaseEvents(t *testing.T) {
	wire := []string{
		`{"seq":1,"time":"2025-01-02T03:04:05Z","type":"status","status":"running"}`,
		`{"seq":2,"time":"2025-01-02T03:04:05Z","type":"phase","phase":"install"}`,
		`{"seq":3,"time":"2025-01-02T03:04:05Z","type":"log","stream":"stdout","text":"dependencies: cached (key 3f2a)\n"}`,
		`{"seq":4,"time":"2025-01-02T03:04:06Z","type":"phase","phase":"test"}`,
		`{"seq":5,"time":"2025-01-02T03:04:07Z","type":"status","status":"passed","exit_code":0}`,
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			t.Errorf("accept: %v", err)
			return
		}
		defer c.CloseNow()
		for _, m := range wire {
			if err := c.Write(r.Context(), websocket.MessageText, []byte(m)); err != nil {
				return
			}
		}
		c.Close(websocket.StatusNormalClosure, "")
	}))
	defer srv.Close()
	var got []string
	_, err := newTestClient(srv.URL).Follow(testContext(t), "J1", 0, func(ev client.Event) error {
		got = append(got, ev.Type+":"+ev.Phase)
		return nil
	})
	if err != nil {
		t.Fatalf("Follow: %v", err)
	}
	want := []string{"status:", "phase:install", "log:", "phase:test", "status:"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("delivered %q, want %q", got, want)
	}
}
