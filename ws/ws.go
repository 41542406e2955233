// Package ws serves a job's events over WebSocket: everything after a given
// seq from the store, then live events as they are committed, then a normal
// close after the terminal event.
package ws

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"

	"ci/jobs"

	"github.com/coder/websocket"
)

// Source is what the handler needs from the jobs service.
type Source interface {
	Job(ctx context.Context, id string) (*jobs.Job, error)
	Follow(ctx context.Context, id string, after int64, fn func(jobs.Event) error) error
	WatchJobs(ctx context.Context, limit int, fn func(snapshot []*jobs.Job, change *jobs.Job) error) error
}

// Subprotocol is the WebSocket subprotocol the server selects when a
// client offers it (browsers offer it beside their token).
const Subprotocol = "ci.v1"

// Defaults of a Handler.
const (
	DefaultPingInterval = 30 * time.Second
	DefaultWriteTimeout = 10 * time.Second
)

// The kinds of stream a Handler serves, as Metrics names them.
const (
	StreamEvents = "events" // a job's events (ServeHTTP)
	StreamJobs   = "jobs"   // the job list feed (ServeJobs)
)

// Metrics receives a Handler's measurements. Its methods must be safe for
// concurrent use and must not block.
type Metrics interface {
	// StreamOpened is called when a WebSocket stream of kind
	// (StreamEvents or StreamJobs) is upgraded, and StreamClosed when it
	// has ended, once per opened stream.
	StreamOpened(kind string)
	StreamClosed(kind string)
}

// Handler serves GET /api/v1/jobs/{id}/events?after=N. It expects the job
// ID in the request's "id" path value.
type Handler struct {
	src Source
	log *slog.Logger

	// PingInterval is how often an idle connection is pinged.
	PingInterval time.Duration
	// WriteTimeout bounds every single write, so a dead peer can't hold a
	// stream forever.
	WriteTimeout time.Duration
	// Metrics, when set before the handler serves, counts its open
	// streams.
	Metrics Metrics

	ctx    context.Context // canceled by Close
	cancel context.CancelFunc
	mu     sync.Mutex
	closed bool           // set by Close, guarded by mu
	wg     sync.WaitGroup // open streams; Add only under mu while !closed
}

// NewHandler returns a handler serving events from src.
func NewHandler(src Source, log *slog.Logger) *Handler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Handler{
		src:          src,
		log:          log,
		PingInterval: DefaultPingInterval,
		WriteTimeout: DefaultWriteTimeout,
		ctx:          ctx,
		cancel:       cancel,
	}
}

// Close ends every open stream with status 1001 (going away), so clients
// resume later or elsewhere, and waits for them to finish.
func (h *Handler) Close() {
	h.mu.Lock()
	h.closed = true
	h.mu.Unlock()
	h.cancel()
	h.wg.Wait()
}

// enter registers a stream about to open, for Close to wait for; false
// when the handler is closed.
func (h *Handler) enter() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return false
	}
	h.wg.Add(1)
	return true
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	after := int64(0)
	if s := r.URL.Query().Get("after"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n < 0 {
			writeError(w, http.StatusBadRequest, jobs.EINVALID, "after must be a non-negative integer, got "+strconv.Quote(s))
			return
		}
		after = n
	}
	// Refuse unknown jobs before the upgrade, with a plain HTTP status.
	if _, err := h.src.Job(r.Context(), id); err != nil {
		if jobs.ErrorCode(err) == jobs.ENOTFOUND {
			writeError(w, http.StatusNotFound, jobs.ENOTFOUND, jobs.ErrorMessage(err))
			return
		}
		h.log.Error("load job", "job", id, "err", err)
		writeError(w, http.StatusInternalServerError, jobs.EINTERNAL, "internal error")
		return
	}
	if h.ctx.Err() != nil {
		writeError(w, http.StatusServiceUnavailable, jobs.EUNAVAILABLE, "server is shutting down")
		return
	}

	log := h.log.With("job", id)
	log.Debug("events stream opened", "after", after)
	h.stream(w, r, StreamEvents, log, func(ctx context.Context, write func(v any) error) error {
		return h.src.Follow(ctx, id, after, func(ev jobs.Event) error {
			if ev.Raw != nil {
				return write(json.RawMessage(ev.Raw)) // encoded once for every watcher
			}
			return write(ev)
		})
	})
}

// Job list feed limits.
const (
	defaultJobsLimit = 50
	maxJobsLimit     = 1000
)

// snapshotMessage and changeMessage are the messages of the job list feed.
type snapshotMessage struct {
	Type string      `json:"type"` // "snapshot"
	Jobs []*jobs.Job `json:"jobs"`
}

type changeMessage struct {
	Type string    `json:"type"` // "job"
	Job  *jobs.Job `json:"job"`
}

// ServeJobs serves GET /api/v1/events?limit=N, the feed of job status
// changes: first {"type":"snapshot","jobs":[...newest first...]}, then
// {"type":"job","job":{...}} for every job created or changing status. A
// client that falls behind gets a fresh snapshot. The stream ends only
// when the client leaves or the server shuts down (1001).
func (h *Handler) ServeJobs(w http.ResponseWriter, r *http.Request) {
	limit := defaultJobsLimit
	if s := r.URL.Query().Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > maxJobsLimit {
			writeError(w, http.StatusBadRequest, jobs.EINVALID, "limit must be an integer from 1 to "+strconv.Itoa(maxJobsLimit)+", got "+strconv.Quote(s))
			return
		}
		limit = n
	}
	if h.ctx.Err() != nil {
		writeError(w, http.StatusServiceUnavailable, jobs.EUNAVAILABLE, "server is shutting down")
		return
	}
	h.stream(w, r, StreamJobs, h.log.With("stream", "jobs"), func(ctx context.Context, write func(v any) error) error {
		return h.src.WatchJobs(ctx, limit, func(snapshot []*jobs.Job, change *jobs.Job) error {
			if change != nil {
				return write(changeMessage{Type: "job", Job: change})
			}
			return write(snapshotMessage{Type: "snapshot", Jobs: snapshot})
		})
	})
}

// stream upgrades the request and runs produce, which writes JSON messages
// with write until it returns. A nil return closes the stream normally
// (1000); server shutdown closes it with 1001. kind names the stream for
// Metrics.
func (h *Handler) stream(w http.ResponseWriter, r *http.Request, kind string, log *slog.Logger, produce func(ctx context.Context, write func(v any) error) error) {
	// Registered before the upgrade: Close must not start waiting while a
	// stream is being added (a WaitGroup forbids that).
	if !h.enter() {
		writeError(w, http.StatusServiceUnavailable, jobs.EUNAVAILABLE, "server is shutting down")
		return
	}
	defer h.wg.Done()
	// Browsers that send a token as a subprotocol (see api) must get one
	// protocol back, or they drop the connection.
	c, err := websocket.Accept(w, r, &websocket.AcceptOptions{Subprotocols: []string{Subprotocol}})
	if err != nil {
		return // Accept has written the HTTP error
	}
	if h.Metrics != nil {
		h.Metrics.StreamOpened(kind)
		defer h.Metrics.StreamClosed(kind)
	}
	defer c.CloseNow()

	// We only write; CloseRead handles the client's control frames and
	// cancels ctx when the client goes away.
	ctx := c.CloseRead(r.Context())
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(h.ctx, cancel) // server shutdown ends the stream too
	defer stop()

	go h.ping(ctx, c)

	err = produce(ctx, func(v any) error {
		b, ok := v.(json.RawMessage) // already encoded: sent as it is
		if !ok {
			if b, err = json.Marshal(v); err != nil {
				return err
			}
		}
		// Not derived from ctx: the library closes the connection when a
		// write's context ends, even just after the write, which would
		// turn a clean 1001 on shutdown into a dropped connection.
		wctx, wcancel := context.WithTimeout(context.Background(), h.WriteTimeout)
		defer wcancel()
		return c.Write(wctx, websocket.MessageText, b)
	})
	switch {
	case err == nil:
		c.Close(websocket.StatusNormalClosure, "end of stream")
	case h.ctx.Err() != nil:
		c.Close(websocket.StatusGoingAway, "server shutting down")
	case errors.Is(err, context.Canceled) || websocket.CloseStatus(err) != -1:
		// The client went away: a normal ending.
	case errors.Is(err, context.DeadlineExceeded):
		log.Info("stream: write timed out; dropping the client")
	default:
		log.Error("stream", "err", err)
		c.Close(websocket.StatusInternalError, "internal error")
	}
}

func (h *Handler) ping(ctx context.Context, c *websocket.Conn) {
	t := time.NewTicker(h.PingInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			pctx, cancel := context.WithTimeout(context.Background(), h.WriteTimeout)
			err := c.Ping(pctx)
			cancel()
			if err != nil {
				c.CloseNow()
				return
			}
		}
	}
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]string{"error": msg, "code": code})
}
