package persistence

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"ci/jobs"
)

// The change feed: every write transaction on PostgreSQL sends a
// notification (pg_notify) on the schema's channel, which PostgreSQL
// delivers to every listener when, and only if, the transaction commits,
// in commit order. Its payload is a compact text form of a jobs.Change
// (see encodeChange).

// The change feed's connection.
const (
	// feedMinBackoff and feedMaxBackoff bound the wait before the feed
	// reconnects after an error; the wait doubles with each failure in a
	// row.
	feedMinBackoff = 100 * time.Millisecond
	feedMaxBackoff = 10 * time.Second
	// feedHealthy is how long a connection must have lasted for the
	// backoff to start over.
	feedHealthy = time.Minute
	// feedPingInterval is how long the feed waits for a notification
	// before it checks that its connection is alive (a peer that vanished
	// without closing it would otherwise never be noticed).
	feedPingInterval = 30 * time.Second
	// feedTimeout bounds connecting, LISTEN and a ping.
	feedTimeout = 10 * time.Second
)

var _ jobs.ChangeFeed = changeFeed{}

// ChangeFeed returns the store's change feed, which tells of every change
// committed by any server sharing the PostgreSQL database; nil on SQLite,
// whose database one server has to itself.
func (s *Store) ChangeFeed() jobs.ChangeFeed {
	if s.d != postgresDialect {
		return nil
	}
	return changeFeed{s: s}
}

// changeFeed is a Store's jobs.ChangeFeed: it listens for the
// notifications of its channel on a connection of its own.
type changeFeed struct {
	s *Store
}

// WatchChanges implements jobs.ChangeFeed: it calls fn with every change
// committed to the database, in commit order, from a connection of its
// own, until ctx ends, and returns ctx's error. When it loses its
// connection it reconnects, waiting longer after each failure in a row
// (100 ms to 10 s), and once listening again it calls fn with a Resync
// change: what was committed meanwhile was missed.
func (f changeFeed) WatchChanges(ctx context.Context, fn func(jobs.Change)) error {
	log := slog.Default().With("component", "persistence")
	backoff := feedMinBackoff
	resync := false
	for {
		start := time.Now()
		err := f.listen(ctx, fn, resync)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		resync = true
		if time.Since(start) >= feedHealthy {
			backoff = feedMinBackoff
		}
		log.Warn("change feed lost its connection; reconnecting", "err", err, "in", backoff)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		backoff = min(2*backoff, feedMaxBackoff)
	}
}

// listen connects, listens on the store's channel, calls fn with a Resync
// change if resync is set, then with every change notified, until ctx
// ends or the connection fails.
func (f changeFeed) listen(ctx context.Context, fn func(jobs.Change), resync bool) error {
	cctx, cancel := context.WithTimeout(ctx, feedTimeout)
	defer cancel()
	conn, err := pgx.Connect(cctx, f.s.dsn)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), feedTimeout)
		defer cancel()
		conn.Close(ctx)
	}()
	if _, err := conn.Exec(cctx, "LISTEN "+pgx.Identifier{f.s.channel}.Sanitize()); err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	if f.s.onListen != nil {
		f.s.onListen(conn.PgConn().PID())
	}
	if resync {
		fn(jobs.Change{Resync: true})
	}
	log := slog.Default().With("component", "persistence")
	for {
		wctx, cancel := context.WithTimeout(ctx, feedPingInterval)
		n, err := conn.WaitForNotification(wctx)
		timedOut := wctx.Err() != nil && ctx.Err() == nil
		cancel()
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case err != nil && timedOut:
			// Nothing for a while: is the connection still there?
			pctx, cancel := context.WithTimeout(ctx, feedTimeout)
			err := conn.Ping(pctx)
			cancel()
			if err != nil {
				return fmt.Errorf("ping: %w", err)
			}
			continue
		case err != nil:
			return fmt.Errorf("wait for notification: %w", err)
		}
		c, err := decodeChange(n.Payload)
		if err != nil {
			log.Warn("change feed: bad notification", "channel", n.Channel, "payload", n.Payload, "err", err)
			continue
		}
		fn(c)
	}
}

// encodeChange returns the payload of a notification of c: the job ID,
// the first and last seqs, and flags ("s" for a status change, "c" for a
// cancel request, "-" for neither), separated by spaces.
func encodeChange(c jobs.Change) string {
	b := make([]byte, 0, len(c.JobID)+24)
	b = append(b, c.JobID...)
	b = append(b, ' ')
	b = strconv.AppendInt(b, c.First, 10)
	b = append(b, ' ')
	b = strconv.AppendInt(b, c.Last, 10)
	b = append(b, ' ')
	switch {
	case c.Status && c.Cancel:
		b = append(b, "sc"...)
	case c.Status:
		b = append(b, 's')
	case c.Cancel:
		b = append(b, 'c')
	default:
		b = append(b, '-')
	}
	return string(b)
}

// decodeChange parses the payload of a notification (see encodeChange).
func decodeChange(payload string) (jobs.Change, error) {
	f := strings.Split(payload, " ")
	if len(f) != 4 || f[0] == "" || f[3] == "" {
		return jobs.Change{}, errors.New("want 4 fields: job, first, last, flags")
	}
	c := jobs.Change{JobID: f[0]}
	var err error
	if c.First, err = strconv.ParseInt(f[1], 10, 64); err != nil {
		return jobs.Change{}, fmt.Errorf("first seq: %w", err)
	}
	if c.Last, err = strconv.ParseInt(f[2], 10, 64); err != nil {
		return jobs.Change{}, fmt.Errorf("last seq: %w", err)
	}
	if f[3] != "-" {
		for _, flag := range f[3] {
			switch flag {
			case 's':
				c.Status = true
			case 'c':
				c.Cancel = true
			default:
				return jobs.Change{}, fmt.Errorf("unknown flag %q", flag)
			}
		}
	}
	return c, nil
}
