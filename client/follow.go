package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// ErrSequence is returned (wrapped) by Follow when the server sends an event
// whose seq is not the last one plus one: a gap or a duplicate.
var ErrSequence = errors.New("events out of sequence")

// readLimit bounds one WebSocket message; events carry up to ~64 KiB of
// text, which JSON escaping can inflate.
const readLimit = 1 << 22

// Follow streams the events of job id with seq > after: it calls fn for
// each in order and returns the terminal status event, which fn has seen
// too. Every event is delivered exactly once, in seq order.
//
// When the connection drops (network error, close 1001, server restart,
// dial refused, a silent connection), Follow reconnects with exponential
// backoff and resumes after the last delivered event. It gives up after
// GiveUpAfter without an event and returns the last error. It does not
// retry when the job is unknown (an *Error with code not_found), when the
// server rejects the request otherwise (4xx), when events arrive out of
// sequence (ErrSequence), when fn returns an error (returned wrapped) or
// when ctx is done (ctx's error, wrapped).
//
// If after is at or past the terminal event, Follow returns the job's final
// status as an Event with Seq = the job's last seq, without calling fn.
func (c *Client) Follow(ctx context.Context, id string, after int64, fn func(Event) error) (Event, error) {
	last := after
	delay := c.MinBackoff
	attempt := 0
	var outage time.Time // start of the current run of failures
	for {
		before := last
		ev, done, retry, err := c.followOnce(ctx, id, &last, fn)
		if done {
			return ev, nil
		}
		if !retry {
			return Event{}, fmt.Errorf("follow job %s: %w", id, err)
		}
		if last > before || outage.IsZero() {
			// Progress (or a first failure): a fresh outage.
			outage, delay, attempt = time.Now(), c.MinBackoff, 0
		}
		if time.Since(outage) >= c.GiveUpAfter {
			return Event{}, fmt.Errorf("follow job %s: gave up reconnecting after %s: %w",
				id, c.GiveUpAfter, err)
		}
		attempt++
		if c.OnReconnect != nil {
			c.OnReconnect(err, attempt, delay)
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return Event{}, fmt.Errorf("follow job %s: %w", id, ctx.Err())
		case <-t.C:
		}
		delay = min(2*delay, c.MaxBackoff)
	}
}

// followOnce runs one connection: it dials with after=*last and delivers
// events until the terminal one (done), or an error, which is retryable or
// not. *last is the seq of the last event delivered to fn.
func (c *Client) followOnce(ctx context.Context, id string, last *int64, fn func(Event) error) (term Event, done, retry bool, err error) {
	u, err := c.endpoint(url.Values{"after": {strconv.FormatInt(*last, 10)}}, "api", "v1", "jobs", id, "events")
	if err != nil {
		return Event{}, false, false, err
	}

	// A watchdog drops a connection on which nothing (not even a ping) has
	// arrived for IdleTimeout, e.g. after a laptop slept.
	connCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	var idle atomic.Bool
	watchdog := time.AfterFunc(c.IdleTimeout, func() { idle.Store(true); cancel() })
	defer watchdog.Stop()
	ioErr := func(err error) error {
		if idle.Load() && ctx.Err() == nil {
			return fmt.Errorf("no data from server for %s: %w", c.IdleTimeout, err)
		}
		return err
	}

	header := http.Header{}
	c.authorize(header)
	conn, resp, err := websocket.Dial(connCtx, u, &websocket.DialOptions{
		HTTPClient: c.HTTPClient,
		HTTPHeader: header,
		OnPingReceived: func(context.Context, []byte) bool {
			watchdog.Reset(c.IdleTimeout)
			return true
		},
	})
	if err != nil {
		if ctx.Err() != nil {
			return Event{}, false, false, ctx.Err()
		}
		if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols {
			apiErr := errorFrom(resp)
			s := resp.StatusCode
			final := s < 500 && s != http.StatusRequestTimeout && s != http.StatusTooManyRequests
			return Event{}, false, !final, apiErr
		}
		return Event{}, false, true, ioErr(err)
	}
	defer conn.CloseNow()
	conn.SetReadLimit(readLimit)

	for {
		typ, data, err := conn.Read(connCtx)
		if err != nil {
			if ctx.Err() != nil {
				return Event{}, false, false, ctx.Err()
			}
			switch websocket.CloseStatus(err) {
			case websocket.StatusNormalClosure:
				// The server ends a stream only after the terminal event;
				// without one, either it was at or before after, or the
				// server stopped early.
				return c.afterTerminal(ctx, id, *last, err)
			case websocket.StatusProtocolError, websocket.StatusUnsupportedData,
				websocket.StatusInvalidFramePayloadData, websocket.StatusPolicyViolation,
				websocket.StatusMessageTooBig, websocket.StatusMandatoryExtension:
				return Event{}, false, false, err
			}
			// Network errors (-1), going away, service restart, ...
			return Event{}, false, true, ioErr(err)
		}
		watchdog.Reset(c.IdleTimeout)
		if typ != websocket.MessageText {
			return Event{}, false, false, fmt.Errorf("unexpected %v message", typ)
		}
		var ev Event
		if err := json.Unmarshal(data, &ev); err != nil {
			return Event{}, false, false, fmt.Errorf("decode event: %w", err)
		}
		if ev.Seq != *last+1 {
			return Event{}, false, false, fmt.Errorf("got seq %d after %d: %w", ev.Seq, *last, ErrSequence)
		}
		if err := fn(ev); err != nil {
			return Event{}, false, false, err
		}
		*last = ev.Seq
		if ev.Terminal() {
			conn.Close(websocket.StatusNormalClosure, "")
			return ev, true, false, nil
		}
	}
}

// afterTerminal handles a normal close without a terminal event: if the job
// has ended and has no events after last, its terminal event came at or
// before last, and Follow is done; otherwise it retries.
func (c *Client) afterTerminal(ctx context.Context, id string, last int64, closeErr error) (Event, bool, bool, error) {
	j, err := c.Job(ctx, id)
	if err != nil {
		var apiErr *Error
		if ctx.Err() != nil || (errors.As(err, &apiErr) && apiErr.StatusCode < 500) {
			return Event{}, false, false, err
		}
		return Event{}, false, true, err
	}
	if j.Terminal() && j.LastSeq <= last {
		ev := Event{Seq: j.LastSeq, Type: EventStatus, Status: j.Status, ExitCode: j.ExitCode, Reason: j.Reason}
		if j.FinishedAt != nil {
			ev.Time = *j.FinishedAt
		}
		return ev, true, false, nil
	}
	return Event{}, false, true, fmt.Errorf("stream closed before the job ended: %w", closeErr)
}
