package persistence

import (
	"context"
	"database/sql"
	"fmt"
	"math/bits"
	"strconv"
	"strings"

	"ci/jobs"
)

// The hot path, AppendEvents, uses database/sql directly with statements
// prepared once on the write connection: GORM prepares a statement anew in
// every transaction (a statement prepared on a sql.Tx dies with it) and
// reflects over every row, which together cost more than SQLite's own
// work. The tables themselves are still defined and migrated by GORM.

// insertShift is log2(maxInsertRows): there is one prepared INSERT for
// each row count 1, 2, 4, ..., maxInsertRows, so a batch of any size takes
// few statements (a batch of 300 takes 64+64+64+64+32+8+4).
const insertShift = 6

// maxInsertRows is the most event rows in one INSERT. A row binds 9
// variables plus one shared job ID, so 64 rows bind 577: below even the
// limit of 999 of SQLite before 3.32. Larger statements were not faster.
const maxInsertRows = 1 << insertShift

// updateJobSQL saves a job's mutable fields if its stored log ends at the
// expected seq.
const updateJobSQL = `UPDATE jobs SET status = ?1, started_at = ?2, finished_at = ?3, exit_code = ?4, reason = ?5, last_seq = ?6,
stdout_bytes = ?9, stderr_bytes = ?10, phase = ?11
WHERE id = ?7 AND last_seq = ?8`

// writeStmts are the statements of AppendEvents, prepared once.
type writeStmts struct {
	update *sql.Stmt
	// insert[k] inserts 1<<k event rows.
	insert [insertShift + 1]*sql.Stmt
}

// prepare prepares the statements on db.
func (ws *writeStmts) prepare(ctx context.Context, db *sql.DB) error {
	var err error
	if ws.update, err = db.PrepareContext(ctx, updateJobSQL); err != nil {
		return fmt.Errorf("prepare update: %w", err)
	}
	for k := range ws.insert {
		if ws.insert[k], err = db.PrepareContext(ctx, insertEventsSQL(1<<k)); err != nil {
			return fmt.Errorf("prepare insert: %w", err)
		}
	}
	return nil
}

// close closes the prepared statements.
func (ws *writeStmts) close() {
	for _, st := range append(ws.insert[:], ws.update) {
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

// insertEvents inserts events of the job with the given ID in tx, with as
// few statements as the power-of-two row counts allow.
func (ws *writeStmts) insertEvents(ctx context.Context, tx *sql.Tx, jobID string, events []jobs.Event) error {
	args := make([]any, 0, 1+9*min(len(events), maxInsertRows))
	for len(events) > 0 {
		k := min(bits.Len(uint(len(events)))-1, insertShift)
		n := 1 << k
		args = append(args[:0], jobID)
		for i := range events[:n] {
			e := &events[i]
			data, err := eventData(e)
			if err != nil {
				return err
			}
			args = append(args, e.Seq, e.Time.UTC(), string(e.Type), string(e.Status),
				intArg(e.ExitCode), e.Reason, e.Stream, e.Text, data)
		}
		if _, err := tx.StmtContext(ctx, ws.insert[k]).ExecContext(ctx, args...); err != nil {
			return err
		}
		events = events[n:]
	}
	return nil
}
