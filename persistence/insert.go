package persistence

import (
	"context"
	"database/sql"
	"fmt"
	"math/bits"
	"strconv"
	"strings"
	"time"

	"ci/jobs"
)

// The hot path, AppendEvents, uses database/sql directly with statements
// prepared once on the write connection: GORM prepares a statement anew in
// every transaction (a statement prepared on a sql.Tx dies with it) and
// reflects over every row, which together cost more than SQLite's own
// work. The tables themselves are still defined and migrated by GORM.
//
// The statements are written for SQLite, with numbered placeholders (?1),
// and rewritten for PostgreSQL ($1) by dialect.sql. On PostgreSQL, times
// are bound as time.Time (the driver sends them in binary) instead of
// SQLite's text, and the update also notifies the change feed.

// insertShift is log2 of the most rows in an INSERT: there is one prepared INSERT for
// each row count 1, 2, 4, ..., maxInsertRows, so a batch of any size takes
// few statements (a batch of 300 takes 64+64+64+64+32+8+4).
const insertShift = 6

// The most event rows in one INSERT is 1 << insertShift. A row binds 9
// variables plus one shared job ID, so 64 rows bind 577: below even the
// limit of 999 of SQLite before 3.32. Larger statements were not faster.

// logShift and maxLogRows are the same for log rows, which bind only 3
// variables (time, stream, text): their seqs are consecutive (a batch is
// gapless, as AppendEvents checks), so each is the first seq plus a
// constant, and the other columns are constants. Every bound value is a
// cgo call, the largest cost of a write, so a log row costs a third of a
// general one. 256 rows bind 770 variables.
const (
	logShift   = 8
	maxLogRows = 1 << logShift
)

// updateJobSQL saves a job's mutable fields if its stored log ends at the
// expected seq.
const updateJobSQL = `UPDATE jobs SET status = ?1, started_at = ?2, finished_at = ?3, exit_code = ?4, reason = ?5, last_seq = ?6,
stdout_bytes = ?9, stderr_bytes = ?10, phase = ?11
WHERE id = ?7 AND last_seq = ?8`

// notifySQL ends updateJobSQL on PostgreSQL: the updated row (and only an
// updated row) sends the change feed's notification ?13 on channel ?12,
// which PostgreSQL delivers if and when the transaction commits.
const notifySQL = ` RETURNING pg_notify(?12, ?13)`

// writeStmts are the statements of AppendEvents, prepared once.
type writeStmts struct {
	// timeValues is set when times are bound as time.Time, not as text.
	timeValues bool
	update     *sql.Stmt
	// insert[k] inserts 1<<k event rows.
	insert [insertShift + 1]*sql.Stmt
	// insertLog[k] inserts 1<<k rows of plain log events.
	insertLog [logShift + 1]*sql.Stmt
}

// prepare prepares the statements on db, of dialect d.
func (ws *writeStmts) prepare(ctx context.Context, db *sql.DB, d dialect) error {
	ws.timeValues = d == postgresDialect
	update := updateJobSQL
	if d == postgresDialect {
		update += notifySQL
	}
	var err error
	if ws.update, err = db.PrepareContext(ctx, d.sql(update)); err != nil {
		return fmt.Errorf("prepare update: %w", err)
	}
	for k := range ws.insert {
		if ws.insert[k], err = db.PrepareContext(ctx, d.sql(insertEventsSQL(1<<k))); err != nil {
			return fmt.Errorf("prepare insert: %w", err)
		}
	}
	for k := range ws.insertLog {
		if ws.insertLog[k], err = db.PrepareContext(ctx, d.sql(insertLogsSQL(1<<k, d))); err != nil {
			return fmt.Errorf("prepare insert: %w", err)
		}
	}
	return nil
}

// close closes the prepared statements.
func (ws *writeStmts) close() {
	for _, st := range append(append(ws.insert[:], ws.insertLog[:]...), ws.update) {
		if st != nil {
			st.Close()
		}
	}
}

// insertEventsSQL returns an INSERT of n event rows of one job: ?1 is the
// job ID, then 9 variables per row.
func insertEventsSQL(n int) string {
	var b strings.Builder
	b.WriteString("INSERT INTO events (job_id, seq, time, type, status, exit_code, reason, stream, text, data) VALUES ")
	v := 2
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString("(?1")
		for range 9 {
			b.WriteString(",?")
			b.WriteString(strconv.Itoa(v))
			v++
		}
		b.WriteByte(')')
	}
	return b.String()
}

// insertLogsSQL returns an INSERT of n plain log event rows of one job
// with consecutive seqs: ?1 is the job ID, ?2 the first seq, then time,
// stream and text per row.
func insertLogsSQL(n int, d dialect) string {
	// PostgreSQL would infer ?2+i to be an integer, not a bigint.
	seq := "?2"
	if d == postgresDialect {
		seq = "?2::bigint"
	}
	var b strings.Builder
	b.WriteString("INSERT INTO events (job_id, seq, time, type, status, exit_code, reason, stream, text, data) VALUES ")
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		v := 3 + 3*i
		fmt.Fprintf(&b, "(?1,%s+%d,?%d,'log','',NULL,'',?%d,?%d,'')", seq, i, v, v+1, v+2)
	}
	return b.String()
}

// plainLog reports whether e is a log event with nothing but a stream and
// text, the kind insertLog stores.
func plainLog(e *jobs.Event) bool {
	return e.Type == jobs.EventLog && e.Status == "" && e.ExitCode == nil && e.Reason == "" &&
		e.Tests == nil && e.DurationS == 0 && len(e.Failures) == 0 && e.Phase == ""
}

// insertEvents inserts events of the job with the given ID in tx, with as
// few statements as the power-of-two row counts allow: runs of plain log
// events (almost all of them) through insertLog, the others through
// insert.
func (ws *writeStmts) insertEvents(ctx context.Context, tx *sql.Tx, jobID string, events []jobs.Event) error {
	args := make([]any, 0, 2+3*min(len(events), maxLogRows))
	var tf timeText
	for len(events) > 0 {
		// The run of events of one kind at the front.
		logs := plainLog(&events[0])
		run := 1
		for run < len(events) && plainLog(&events[run]) == logs {
			run++
		}
		var err error
		if logs {
			args, err = ws.insertLogRun(ctx, tx, jobID, events[:run], args, &tf)
		} else {
			args, err = ws.insertRun(ctx, tx, jobID, events[:run], args)
		}
		if err != nil {
			return err
		}
		events = events[run:]
	}
	return nil
}

// insertLogRun inserts plain log events; args is a buffer to reuse.
func (ws *writeStmts) insertLogRun(ctx context.Context, tx *sql.Tx, jobID string, events []jobs.Event, args []any,
	tf *timeText) ([]any, error) {
	for len(events) > 0 {
		k := min(bits.Len(uint(len(events)))-1, logShift)
		n := 1 << k
		args = append(args[:0], jobID, events[0].Seq)
		for i := range events[:n] {
			e := &events[i]
			args = append(args, ws.timeArg(tf, e.Time), e.Stream, e.Text)
		}
		if _, err := tx.StmtContext(ctx, ws.insertLog[k]).ExecContext(ctx, args...); err != nil {
			return args, err
		}
		events = events[n:]
	}
	return args, nil
}

// insertRun inserts events of any kind; args is a buffer to reuse.
func (ws *writeStmts) insertRun(ctx context.Context, tx *sql.Tx, jobID string, events []jobs.Event, args []any) ([]any, error) {
	for len(events) > 0 {
		k := min(bits.Len(uint(len(events)))-1, insertShift)
		n := 1 << k
		args = append(args[:0], jobID)
		for i := range events[:n] {
			e := &events[i]
			data, err := eventData(e)
			if err != nil {
				return args, err
			}
			args = append(args, e.Seq, e.Time.UTC(), string(e.Type), string(e.Status),
				intArg(e.ExitCode), e.Reason, e.Stream, e.Text, data)
		}
		if _, err := tx.StmtContext(ctx, ws.insert[k]).ExecContext(ctx, args...); err != nil {
			return args, err
		}
		events = events[n:]
	}
	return args, nil
}

// timeArg returns t as the statements bind a time: a time.Time in UTC on
// PostgreSQL, SQLite's text made by tf.
func (ws *writeStmts) timeArg(tf *timeText, t time.Time) any {
	if ws.timeValues {
		return t.UTC()
	}
	return tf.format(t)
}

// timeLayout is how go-sqlite3 binds a time.Time (its
// SQLiteTimestampFormats[0]), and so how stored times read back.
const timeLayout = "2006-01-02 15:04:05.999999999-07:00"

// timeText formats times in UTC exactly as go-sqlite3 binds a time.Time
// (timeLayout), at a fraction of time.Format's cost: the date and clock
// are reused while the second stays the same, as it does across a batch.
type timeText struct {
	sec    int64
	prefix []byte // "2006-01-02 15:04:05" of sec
	buf    []byte
}

func (f *timeText) format(t time.Time) string {
	t = t.UTC()
	if s := t.Unix(); s != f.sec || f.prefix == nil {
		f.sec = s
		f.prefix = t.AppendFormat(f.prefix[:0], "2006-01-02 15:04:05")
	}
	b := append(f.buf[:0], f.prefix...)
	if ns := t.Nanosecond(); ns != 0 {
		// ".999999999": nine digits with the trailing zeros trimmed.
		var d [10]byte
		d[0] = '.'
		for i := 9; i >= 1; i-- {
			d[i] = byte('0' + ns%10)
			ns /= 10
		}
		n := len(d)
		for d[n-1] == '0' {
			n--
		}
		b = append(b, d[:n]...)
	}
	b = append(b, "+00:00"...)
	f.buf = b
	return string(b)
}
