// Package api routes ci-server's HTTP API: job upload, status, list, log
// text, health and metrics. It mounts the WebSocket event streams, the
// metrics handler and the web UI.
package api

import (
	"context"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"

	"ci/internal/ansi"
	"ci/jobs"
)

// Service is what the API needs from the jobs service.
type Service interface {
	Submit(ctx context.Context, r io.Reader, opts jobs.SubmitOptions) (*jobs.Job, error)
	Job(ctx context.Context, id string) (*jobs.Job, error)
	Jobs(ctx context.Context, opts jobs.ListOptions) ([]*jobs.Job, error)
	Events(ctx context.Context, id string, after int64, limit int) ([]jobs.Event, error)
	Cancel(ctx context.Context, id string) (*jobs.Job, error)
	Tests(ctx context.Context, id string) ([]jobs.TestCase, error)
}

// Config holds the parts and limits of the API.
type Config struct {
	// Events serves GET /api/v1/jobs/{id}/events (the WebSocket stream).
	Events http.Handler
	// JobEvents serves GET /api/v1/events (the WebSocket feed of job
	// status changes).
	JobEvents http.Handler
	// UI serves the web pages: GET / and GET /jobs/{id}.
	UI http.Handler
	// Metrics serves GET /metrics (Prometheus). Like an API read, it needs
	// the token when Private is set.
	Metrics http.Handler
	// Uploads, when set, receives measurements of uploads.
	Uploads UploadMetrics
	// MaxUpload is the largest accepted archive in bytes; 0 means
	// DefaultMaxUpload.
	MaxUpload int64
	// Token, when set, must come with every request that changes state
	// (submit, cancel) as "Authorization: Bearer <Token>", or, for a
	// WebSocket from a browser, as a subprotocol "bearer.<base64url of the
	// token>" offered beside "ci.v1".
	Token string
	// Private makes every API read (jobs, logs, event streams) need the
	// token too. The pages themselves load without it and ask for it.
	Private bool
	// Logger receives request errors; nil discards them.
	Logger *slog.Logger
}

// UploadMetrics receives measurements of uploads. Its methods must be safe
// for concurrent use and must not block.
type UploadMetrics interface {
	// UploadReceived counts the bytes of an upload's body the server read,
	// whether the upload was accepted or not; once per upload.
	UploadReceived(bytes int64)
	// UploadRejected counts an upload refused for reason, one of the
	// Reject constants.
	UploadRejected(reason string)
}

// Why an upload is refused, as UploadMetrics names it.
const (
	RejectUnsupportedType = "unsupported_type" // 415: not a zip content type
	RejectTooLarge        = "too_large"        // 413: larger than MaxUpload
	RejectInvalid         = "invalid"          // 400: not a zip, unsafe entries, too many files, unpacks too big, bad options
	RejectQueueFull       = "queue_full"       // 503: the queue is full
)

// DefaultMaxUpload is the default limit on an uploaded archive.
const DefaultMaxUpload = 100 << 20

// List page sizes.
const (
	defaultListLimit = 50
	maxListLimit     = 1000
)

// Handler serves the API.
type Handler struct {
	svc Service
	cfg Config
	log *slog.Logger
	mux *http.ServeMux
}

// NewHandler returns the HTTP handler of the whole server.
func NewHandler(svc Service, cfg Config) *Handler {
	if cfg.MaxUpload <= 0 {
		cfg.MaxUpload = DefaultMaxUpload
	}
	h := &Handler{svc: svc, cfg: cfg, log: cfg.Logger, mux: http.NewServeMux()}
	if h.log == nil {
		h.log = slog.New(slog.DiscardHandler)
	}
	m := h.mux
	m.HandleFunc("POST /api/v1/jobs", h.submit)
	m.HandleFunc("GET /api/v1/jobs", h.list)
	m.HandleFunc("GET /api/v1/jobs/{id}", h.job)
	m.HandleFunc("GET /api/v1/jobs/{id}/log", h.logText)
	m.HandleFunc("POST /api/v1/jobs/{id}/cancel", h.cancel)
	m.HandleFunc("GET /api/v1/jobs/{id}/tests", h.tests)
	if cfg.Events != nil {
		m.Handle("GET /api/v1/jobs/{id}/events", cfg.Events)
	}
	if cfg.JobEvents != nil {
		m.Handle("GET /api/v1/events", cfg.JobEvents)
	}
	m.HandleFunc("GET /healthz", h.health)
	paths := []string{"/api/v1/jobs", "/api/v1/jobs/{id}", "/api/v1/jobs/{id}/log", "/api/v1/jobs/{id}/cancel", "/api/v1/jobs/{id}/tests", "/api/v1/jobs/{id}/events", "/api/v1/events", "/healthz"}
	if cfg.Metrics != nil {
		m.Handle("GET /metrics", cfg.Metrics)
		paths = append(paths, "/metrics")
	}
	// Known paths with a wrong method, and unknown API paths, answer in
	// JSON like every other API error.
	for _, p := range paths {
		m.HandleFunc(p, func(w http.ResponseWriter, r *http.Request) {
			writeError(w, http.StatusMethodNotAllowed, jobs.EINVALID, "method "+r.Method+" is not allowed on "+r.URL.Path)
		})
	}
	m.HandleFunc("/api/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, jobs.ENOTFOUND, "no such API endpoint: "+r.URL.Path)
	})
	if cfg.UI != nil {
		m.Handle("/", cfg.UI)
	}
	return h
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if h.cfg.Token != "" && h.needsToken(r) {
		if err := h.checkToken(r); err != "" {
			w.Header().Set("WWW-Authenticate", `Bearer realm="ci"`)
			writeError(w, http.StatusUnauthorized, "unauthorized", err)
			return
		}
	}
	h.mux.ServeHTTP(w, r)
}

// needsToken reports whether r must carry the token: API calls that change
// state, and with Private every API call and the metrics.
func (h *Handler) needsToken(r *http.Request) bool {
	if r.URL.Path == "/metrics" {
		return h.cfg.Private
	}
	if !strings.HasPrefix(r.URL.Path, "/api/") {
		return false // pages, health
	}
	return h.cfg.Private || (r.Method != http.MethodGet && r.Method != http.MethodHead)
}

// checkToken returns "" when r carries the right token, else what is
// wrong, for the user. Tokens are compared in constant time and never
// logged.
func (h *Handler) checkToken(r *http.Request) string {
	var got string
	if a := r.Header.Get("Authorization"); a != "" {
		t, ok := strings.CutPrefix(a, "Bearer ")
		if !ok {
			return "the Authorization header must be \"Bearer <token>\""
		}
		got = t
	} else if t, ok := tokenFromSubprotocols(r); ok {
		got = t
	} else {
		return "this server needs a token: set CI_TOKEN (sent as Authorization: Bearer <token>)"
	}
	if subtle.ConstantTimeCompare([]byte(got), []byte(h.cfg.Token)) != 1 {
		return "the token is not valid for this server (check CI_TOKEN)"
	}
	return ""
}

// tokenFromSubprotocols finds a token offered as WebSocket subprotocol
// "bearer.<base64url>", the one way a browser can send a secret with a
// WebSocket handshake without putting it in the URL.
func tokenFromSubprotocols(r *http.Request) (string, bool) {
	for _, h := range r.Header.Values("Sec-WebSocket-Protocol") {
		for _, p := range strings.Split(h, ",") {
			if enc, ok := strings.CutPrefix(strings.TrimSpace(p), "bearer."); ok {
				b, err := base64.RawURLEncoding.DecodeString(enc)
				if err != nil {
					return "", false
				}
				return string(b), true
			}
		}
	}
	return "", false
}

// jobView is a job as the API shows it: with the URLs to follow it.
type jobView struct {
	*jobs.Job
	// Timeout is the job's time limit as a Go duration ("30m0s").
	Timeout   string `json:"timeout,omitempty"`
	EventsURL string `json:"events_url"`
	WebURL    string `json:"web_url"`
}

func (h *Handler) view(r *http.Request, j *jobs.Job) jobView {
	if j.Args == nil {
		j.Args = []string{}
	}
	scheme, wsScheme := "http", "ws"
	if r.TLS != nil || r.Header.Get("X-Forwarded-Proto") == "https" {
		scheme, wsScheme = "https", "wss"
	}
	var timeout string
	if j.Timeout > 0 {
		timeout = j.Timeout.String()
	}
	return jobView{
		Job:       j,
		Timeout:   timeout,
		EventsURL: wsScheme + "://" + r.Host + "/api/v1/jobs/" + j.ID + "/events",
		WebURL:    scheme + "://" + r.Host + "/jobs/" + j.ID,
	}
}

// zipTypes are the content types an upload may declare.
var zipTypes = map[string]bool{
	"":                             true,
	"application/zip":              true,
	"application/x-zip-compressed": true,
	"application/octet-stream":     true,
}

func (h *Handler) submit(w http.ResponseWriter, r *http.Request) {
	ct := r.Header.Get("Content-Type")
	if ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || !zipTypes[mt] {
			h.rejected(RejectUnsupportedType)
			writeError(w, http.StatusUnsupportedMediaType, jobs.EINVALID, "upload must be a zip archive (Content-Type: application/zip), got "+strconv.Quote(ct))
			return
		}
	}
	if r.ContentLength > h.cfg.MaxUpload {
		h.rejected(RejectTooLarge)
		writeError(w, http.StatusRequestEntityTooLarge, jobs.EINVALID, tooLarge(h.cfg.MaxUpload))
		return
	}
	opts := jobs.SubmitOptions{Args: r.URL.Query()["args"]}
	if s := r.URL.Query().Get("timeout"); s != "" {
		d, err := parseTimeout(s)
		if err != nil {
			h.rejected(RejectInvalid)
			writeError(w, http.StatusBadRequest, jobs.EINVALID, err.Error())
			return
		}
		opts.Timeout = d
	}
	body := &countingReader{r: http.MaxBytesReader(w, r.Body, h.cfg.MaxUpload)}
	job, err := h.svc.Submit(r.Context(), body, opts)
	if h.cfg.Uploads != nil && body.n > 0 {
		h.cfg.Uploads.UploadReceived(body.n)
	}
	if err != nil {
		var mbe *http.MaxBytesError
		switch code := jobs.ErrorCode(err); {
		case errors.As(err, &mbe):
			h.rejected(RejectTooLarge)
			writeError(w, http.StatusRequestEntityTooLarge, jobs.EINVALID, tooLarge(h.cfg.MaxUpload))
			return
		case code == jobs.EUNAVAILABLE:
			h.rejected(RejectQueueFull)
			w.Header().Set("Retry-After", "10")
		case code == jobs.EINVALID:
			h.rejected(RejectInvalid)
		}
		h.error(w, r, err)
		return
	}
	w.Header().Set("Location", "/api/v1/jobs/"+job.ID)
	writeJSON(w, http.StatusCreated, h.view(r, job))
}

// rejected counts an upload refused for reason.
func (h *Handler) rejected(reason string) {
	if h.cfg.Uploads != nil {
		h.cfg.Uploads.UploadRejected(reason)
	}
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// parseTimeout reads a job time limit: a Go duration ("90s", "10m") or a
// number of seconds.
func parseTimeout(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil {
		n, nerr := strconv.ParseFloat(s, 64)
		if nerr != nil {
			return 0, errors.New("timeout must be a duration such as 90s or 10m, got " + strconv.Quote(s))
		}
		d = time.Duration(n * float64(time.Second))
	}
	if d <= 0 {
		return 0, errors.New("timeout must be positive, got " + strconv.Quote(s))
	}
	return d, nil
}

func (h *Handler) cancel(w http.ResponseWriter, r *http.Request) {
	job, err := h.svc.Cancel(r.Context(), r.PathValue("id"))
	if err != nil {
		h.error(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, h.view(r, job))
}

// tests serves a job's per-test results: every test with its outcome,
// duration and failure message, and the counts.
func (h *Handler) tests(w http.ResponseWriter, r *http.Request) {
	tests, err := h.svc.Tests(r.Context(), r.PathValue("id"))
	if err != nil {
		h.error(w, r, err)
		return
	}
	if tests == nil {
		tests = []jobs.TestCase{}
	}
	report := jobs.TestReport{Tests: tests}
	writeJSON(w, http.StatusOK, struct {
		Counts jobs.TestCounts `json:"counts"`
		Tests  []jobs.TestCase `json:"tests"`
	}{report.Counts(), tests})
}

func tooLarge(limit int64) string {
	return "upload is larger than the server's limit of " + strconv.FormatInt(limit>>20, 10) + " MiB"
}

func (h *Handler) job(w http.ResponseWriter, r *http.Request) {
	job, err := h.svc.Job(r.Context(), r.PathValue("id"))
	if err != nil {
		h.error(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, h.view(r, job))
}

func (h *Handler) list(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	limit := defaultListLimit
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > maxListLimit {
			writeError(w, http.StatusBadRequest, jobs.EINVALID, "limit must be an integer from 1 to "+strconv.Itoa(maxListLimit)+", got "+strconv.Quote(s))
			return
		}
		limit = n
	}
	list, err := h.svc.Jobs(r.Context(), jobs.ListOptions{Limit: limit, Before: q.Get("before")})
	if err != nil {
		h.error(w, r, err)
		return
	}
	resp := struct {
		Jobs []jobView `json:"jobs"`
		Next string    `json:"next"`
	}{Jobs: make([]jobView, 0, len(list))}
	for _, j := range list {
		resp.Jobs = append(resp.Jobs, h.view(r, j))
	}
	if len(list) == limit {
		resp.Next = list[len(list)-1].ID
	}
	writeJSON(w, http.StatusOK, resp)
}

// logText writes all output of a job so far as plain text, stdout and
// stderr interleaved as they were recorded. ANSI escape sequences (pytest
// runs with colour on) are stripped unless ?ansi=keep.
func (h *Handler) logText(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	var out io.Writer = w
	switch r.URL.Query().Get("ansi") {
	case "", "strip":
		out = ansi.NewWriter(w)
	case "keep":
	default:
		writeError(w, http.StatusBadRequest, jobs.EINVALID, "ansi must be strip or keep, got "+strconv.Quote(r.URL.Query().Get("ansi")))
		return
	}
	if _, err := h.svc.Job(r.Context(), id); err != nil {
		h.error(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	var after int64
	for {
		evs, err := h.svc.Events(r.Context(), id, after, 1000)
		if err != nil {
			// Headers may be out already; all we can do is stop.
			h.log.Error("log text", "job", id, "err", err)
			return
		}
		for _, ev := range evs {
			after = ev.Seq
			if ev.Type == jobs.EventLog {
				if _, err := io.WriteString(out, ev.Text); err != nil {
					return
				}
			}
		}
		if len(evs) < 1000 {
			return
		}
	}
}

func (h *Handler) health(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok", "time": time.Now().UTC().Format(time.RFC3339)})
}

// statusOf maps domain error codes to HTTP statuses.
var statusOf = map[string]int{
	jobs.ECONFLICT:    http.StatusConflict,
	jobs.EINVALID:     http.StatusBadRequest,
	jobs.ENOTFOUND:    http.StatusNotFound,
	jobs.EUNAVAILABLE: http.StatusServiceUnavailable,
	jobs.EINTERNAL:    http.StatusInternalServerError,
}

// error writes err as a JSON error and logs it when it is ours, not the
// client's.
func (h *Handler) error(w http.ResponseWriter, r *http.Request, err error) {
	code := jobs.ErrorCode(err)
	status, ok := statusOf[code]
	if !ok {
		status = http.StatusInternalServerError
	}
	if status >= 500 {
		h.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	writeError(w, status, code, jobs.ErrorMessage(err))
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, map[string]string{"error": msg, "code": code})
}
