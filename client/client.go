// Package client is the Go client of ci-server's HTTP and WebSocket API: it
// submits projects, reads jobs and their logs, and follows a job's events
// with automatic reconnect-and-resume. It also builds the project zip that
// the CLI uploads (see ZipProject).
//
// A Client is safe for concurrent use once configured; do not change its
// fields while requests are in flight.
package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Defaults of the reconnect policy of Follow.
const (
	DefaultMinBackoff  = 100 * time.Millisecond
	DefaultMaxBackoff  = 5 * time.Second
	DefaultGiveUpAfter = 5 * time.Minute
	// DefaultIdleTimeout is how long Follow waits without a message or a
	// ping from the server before it treats the connection as dead. The
	// server pings every 30 s.
	DefaultIdleTimeout = 90 * time.Second
)

// Client talks to one ci-server.
type Client struct {
	// BaseURL is the server's root, e.g. http://localhost:8000. A path
	// prefix is kept: http://host/ci yields http://host/ci/api/v1/...
	BaseURL string
	// HTTPClient makes every request, including WebSocket handshakes. It
	// should have no Timeout: uploads and event streams are long.
	HTTPClient *http.Client

	// MinBackoff and MaxBackoff bound the exponential delay between
	// reconnect attempts of Follow. The delay starts at MinBackoff, doubles
	// up to MaxBackoff and is reset when events arrive again.
	MinBackoff, MaxBackoff time.Duration
	// GiveUpAfter is how long Follow keeps trying to reconnect without
	// receiving an event before it returns an error.
	GiveUpAfter time.Duration
	// IdleTimeout is how long Follow waits without any message or ping
	// before it drops the connection and reconnects.
	IdleTimeout time.Duration
	// OnReconnect, when set, is called by Follow before each reconnect
	// attempt with the error that ended the previous attempt, the attempt
	// number within the current outage (1 for the first) and the delay
	// before it. It is called on Follow's goroutine.
	OnReconnect func(err error, attempt int, delay time.Duration)
	// Token, when set, is sent as "Authorization: Bearer <Token>" with every
	// request, WebSocket handshakes included (ci-server --token).
	Token string
}

// Option configures a Client made by New.
type Option func(*Client)

// WithHTTPClient makes the Client use hc for every request.
func WithHTTPClient(hc *http.Client) Option {
	return func(c *Client) { c.HTTPClient = hc }
}

// WithBackoff sets the minimum and maximum delay between reconnect attempts.
func WithBackoff(min, max time.Duration) Option {
	return func(c *Client) { c.MinBackoff, c.MaxBackoff = min, max }
}

// WithGiveUpAfter sets how long Follow retries without progress.
func WithGiveUpAfter(d time.Duration) Option {
	return func(c *Client) { c.GiveUpAfter = d }
}

// WithIdleTimeout sets how long Follow tolerates a silent connection.
func WithIdleTimeout(d time.Duration) Option {
	return func(c *Client) { c.IdleTimeout = d }
}

// WithReconnectNotice sets the Client's OnReconnect callback.
func WithReconnectNotice(fn func(err error, attempt int, delay time.Duration)) Option {
	return func(c *Client) { c.OnReconnect = fn }
}

// New returns a Client for the server at baseURL (http or https) with the
// default reconnect policy, changed by opts. An invalid baseURL is reported
// by the first request.
func New(baseURL string, opts ...Option) *Client {
	c := &Client{
		BaseURL:     baseURL,
		HTTPClient:  http.DefaultClient,
		MinBackoff:  DefaultMinBackoff,
		MaxBackoff:  DefaultMaxBackoff,
		GiveUpAfter: DefaultGiveUpAfter,
		IdleTimeout: DefaultIdleTimeout,
	}
	for _, o := range opts {
		o(c)
	}
	return c
}

// Error is an error answered by the server: its HTTP status and the code and
// message of its JSON error body.
type Error struct {
	// StatusCode is the HTTP status of the response.
	StatusCode int
	// Code is one of the API's error codes: not_found, invalid, conflict,
	// unavailable, internal. When the body carried none it is derived from
	// StatusCode.
	Code string
	// Message is the server's human message.
	Message string
}

// The API's error codes.
const (
	ENOTFOUND    = "not_found"
	EINVALID     = "invalid"
	ECONFLICT    = "conflict"
	EUNAVAILABLE = "unavailable"
	EINTERNAL    = "internal"
)

// Error implements the error interface.
func (e *Error) Error() string {
	return fmt.Sprintf("%s (HTTP %d, %s)", e.Message, e.StatusCode, e.Code)
}

// IsNotFound reports whether err is an *Error with code not_found or HTTP
// status 404.
func IsNotFound(err error) bool {
	var e *Error
	return errors.As(err, &e) && (e.Code == ENOTFOUND || e.StatusCode == http.StatusNotFound)
}

// errorFrom builds an *Error from a non-success response and consumes its
// body (at most 64 KiB of it).
func errorFrom(resp *http.Response) *Error {
	e := &Error{StatusCode: resp.StatusCode}
	var b []byte
	if resp.Body != nil {
		b, _ = io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	}
	var body struct {
		Error string `json:"error"`
		Code  string `json:"code"`
	}
	if json.Unmarshal(b, &body) == nil && body.Error != "" {
		e.Message, e.Code = body.Error, body.Code
	} else if s := strings.TrimSpace(string(b)); s != "" && len(s) < 512 {
		e.Message = s
	} else {
		e.Message = strings.ToLower(http.StatusText(resp.StatusCode))
	}
	if e.Code == "" {
		switch {
		case resp.StatusCode == http.StatusNotFound:
			e.Code = ENOTFOUND
		case resp.StatusCode == http.StatusConflict:
			e.Code = ECONFLICT
		case resp.StatusCode == http.StatusServiceUnavailable, resp.StatusCode == http.StatusTooManyRequests:
			e.Code = EUNAVAILABLE
		case resp.StatusCode >= 400 && resp.StatusCode < 500:
			e.Code = EINVALID
		default:
			e.Code = EINTERNAL
		}
	}
	return e
}

// endpoint returns the URL of the API path elems under BaseURL with query q.
func (c *Client) endpoint(q url.Values, elems ...string) (string, error) {
	u, err := url.Parse(c.BaseURL)
	if err != nil {
		return "", fmt.Errorf("server URL: %w", err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("server URL %q: want http://host[:port] or https://host[:port]", c.BaseURL)
	}
	for i, e := range elems {
		elems[i] = url.PathEscape(e)
	}
	u = u.JoinPath(elems...)
	u.RawQuery = q.Encode()
	return u.String(), nil
}

// do sends req and decodes a JSON answer with one of the ok statuses into
// v; other statuses become an *Error.
func (c *Client) do(req *http.Request, v any, ok ...int) error {
	resp, err := c.send(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	good := false
	for _, s := range ok {
		good = good || resp.StatusCode == s
	}
	if !good {
		return errorFrom(resp)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return fmt.Errorf("decode response: %w", err)
	}
	return nil
}

// send sends req with the client's token.
func (c *Client) send(req *http.Request) (*http.Response, error) {
	c.authorize(req.Header)
	return c.HTTPClient.Do(req)
}

// authorize adds the token, if any, to h.
func (c *Client) authorize(h http.Header) {
	if c.Token != "" {
		h.Set("Authorization", "Bearer "+c.Token)
	}
}

// WithToken sets the bearer token sent with every request.
func WithToken(token string) Option {
	return func(c *Client) { c.Token = token }
}

// Submit uploads a project zip read from body and queues a job that runs
// pytest with args. The body is streamed as it is read, never buffered as a
// whole; if body is an io.Closer it is closed. It returns the job as
// created (status queued).
func (c *Client) Submit(ctx context.Context, body io.Reader, args []string) (*Job, error) {
	return c.SubmitWith(ctx, body, SubmitOptions{Args: args})
}

// SubmitOptions are the choices of a submitted job.
type SubmitOptions struct {
	// Args are passed to pytest.
	Args []string
	// Timeout limits how long the tests may run; 0 means the server's
	// maximum (a longer one is capped to it by the server).
	Timeout time.Duration
}

// SubmitWith is Submit with all options.
func (c *Client) SubmitWith(ctx context.Context, body io.Reader, opts SubmitOptions) (*Job, error) {
	q := url.Values{}
	for _, a := range opts.Args {
		q.Add("args", a)
	}
	if opts.Timeout > 0 {
		q.Set("timeout", opts.Timeout.String())
	}
	u, err := c.endpoint(q, "api", "v1", "jobs")
	if err != nil {
		return nil, fmt.Errorf("submit: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, body)
	if err != nil {
		return nil, fmt.Errorf("submit: %w", err)
	}
	req.Header.Set("Content-Type", "application/zip")
	req.Header.Set("Accept", "application/json")
	var j Job
	if err := c.do(req, &j, http.StatusCreated, http.StatusOK); err != nil {
		return nil, fmt.Errorf("submit: %w", err)
	}
	return &j, nil
}

// Cancel asks the server to cancel job id and returns the job as it is
// then: a queued job is canceled at once, a running one stops within the
// server's grace period. A job that has already ended gives an *Error with
// code "conflict".
func (c *Client) Cancel(ctx context.Context, id string) (*Job, error) {
	u, err := c.endpoint(nil, "api", "v1", "jobs", id, "cancel")
	if err != nil {
		return nil, fmt.Errorf("cancel: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, nil)
	if err != nil {
		return nil, fmt.Errorf("cancel: %w", err)
	}
	req.Header.Set("Accept", "application/json")
	var j Job
	if err := c.do(req, &j, http.StatusOK); err != nil {
		return nil, fmt.Errorf("cancel: %w", err)
	}
	return &j, nil
}

// Job returns the job with the given id.
func (c *Client) Job(ctx context.Context, id string) (*Job, error) {
	u, err := c.endpoint(nil, "api", "v1", "jobs", id)
	if err != nil {
		return nil, fmt.Errorf("get job: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("get job: %w", err)
	}
	var j Job
	if err := c.do(req, &j, http.StatusOK); err != nil {
		return nil, fmt.Errorf("get job %s: %w", id, err)
	}
	return &j, nil
}

// Jobs returns up to limit jobs, newest first, older than the job with id
// before (all when before is ""). A limit <= 0 leaves the page size to the
// server. JobList.Next is the before of the next page.
func (c *Client) Jobs(ctx context.Context, limit int, before string) (*JobList, error) {
	q := url.Values{}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	if before != "" {
		q.Set("before", before)
	}
	u, err := c.endpoint(q, "api", "v1", "jobs")
	if err != nil {
		return nil, fmt.Errorf("list jobs: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("list jobs: %w", err)
	}
	var l JobList
	if err := c.do(req, &l, http.StatusOK); err != nil {
		return nil, fmt.Errorf("list jobs: %w", err)
	}
	return &l, nil
}

// Log returns the plain text of all output of the job so far. The caller
// must close it.
func (c *Client) Log(ctx context.Context, id string) (io.ReadCloser, error) {
	u, err := c.endpoint(nil, "api", "v1", "jobs", id, "log")
	if err != nil {
		return nil, fmt.Errorf("get log: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("get log: %w", err)
	}
	resp, err := c.send(req)
	if err != nil {
		return nil, fmt.Errorf("get log %s: %w", id, err)
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		return nil, fmt.Errorf("get log %s: %w", id, errorFrom(resp))
	}
	return resp.Body, nil
}
