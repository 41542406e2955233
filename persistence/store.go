// Package persistence stores jobs and their events through GORM, in an
// SQLite file (one ci-server) or a PostgreSQL database (replicas sharing
// it, with a change feed), and uploaded archives as content-addressed
// files. It implements jobs.Store, jobs.ChangeFeed and jobs.Archives.
package persistence

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"runtime"
	"strings"
	"sync/atomic"
	"time"

	"gorm.io/driver/sqlite"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"ci/jobs"
)

var _ jobs.Store = (*Store)(nil)

const (
	// defaultListLimit and maxListLimit bound a page of Jobs.
	defaultListLimit = 50
	maxListLimit     = 1000
	// defaultEventsLimit and maxEventsLimit bound a page of Events.
	defaultEventsLimit = 1000
	maxEventsLimit     = 10000
	// createBatchSize is the most event rows in one INSERT of CreateJob:
	// 100 rows of 9 columns stay below SQLite's old limit of 999 variables.
	createBatchSize = 100
	// slowQuery is how long a query may take before it is logged.
	slowQuery = 200 * time.Millisecond
)

// Store is a jobs.Store backed by an SQLite database file or a PostgreSQL
// database. It is safe for concurrent use.
//
// On SQLite, all writes go through one connection (SQLite allows one writer
// at a time; queueing in Go is cheaper and fairer than spinning on
// SQLITE_BUSY), reads through a pool of read-only connections that, thanks
// to WAL, never wait for the writer. On PostgreSQL, reads and writes share
// one pool, and every write transaction also notifies the change feed
// (see ChangeFeed).
type Store struct {
	d   dialect
	w   *gorm.DB // SQLite: one connection, for writes; PostgreSQL: the pool
	wdb *sql.DB  // w's database, for the prepared statements of ws
	ws  writeStmts
	r   *gorm.DB // SQLite: a pool of query-only connections, for reads; PostgreSQL: w
	rdb *sql.DB  // r's database, for the hot reads

	// PostgreSQL: the DSN, for the change feed's own connection, and the
	// feed's notification channel.
	dsn     string
	channel string
	// onListen, when set (by tests), is called each time the change feed
	// listens on a new connection, with its backend's process ID.
	onListen func(pid uint32)

	// The checkpointer: its connection and goroutine.
	c                *gorm.DB
	cdb              *sql.DB
	stopCheckpoints  context.CancelFunc
	checkpointerDone chan struct{}
	checkpoints      atomic.Int64 // checkpoints that moved frames, for tests
}

// Checkpoints of the WAL into the database.
const (
	// checkpointInterval is how often the checkpointer runs.
	checkpointInterval = time.Second
	// backstopCheckpointPages is the WAL size, in pages (4 KiB by
	// default), at which a commit checkpoints it after all, should the
	// checkpointer fall behind: 256 MiB.
	backstopCheckpointPages = 65536
	// walSizeLimit is the size in bytes the WAL file is truncated to when
	// it starts over.
	walSizeLimit = 64 << 20
)

// checkpointLoop moves the WAL's committed frames into the database every
// checkpointInterval, until ctx ends. PASSIVE checkpoints never wait for
// the writer or readers, and the writer never waits for them: the fsync a
// checkpoint needs happens here, not in a commit. Once a checkpoint has
// caught up, the writer's next transaction starts the WAL over.
func (s *Store) checkpointLoop(ctx context.Context) {
	defer close(s.checkpointerDone)
	t := time.NewTicker(checkpointInterval)
	defer t.Stop()
	var last int // WAL frames checkpointed by the last run
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		var busy, frames, done int
		err := s.cdb.QueryRowContext(ctx, "PRAGMA wal_checkpoint(PASSIVE)").Scan(&busy, &frames, &done)
		if err != nil {
			if ctx.Err() == nil {
				slog.Warn("checkpoint the database's WAL", "component", "persistence", "err", err)
			}
			continue
		}
		if done != last {
			s.checkpoints.Add(1)
		}
		last = done
	}
}

// selectEventsSQL reads a page of a job's events. Every column read is
// three cgo calls, so the columns a log event leaves empty come as one,
// NULL for log events: a JSON array of status, exit code, reason and data.
const selectEventsSQL = `SELECT seq, time, type, stream, text,
CASE WHEN type = 'log' THEN NULL ELSE json_array(status, exit_code, reason, data) END
FROM events WHERE job_id = ? AND seq > ? ORDER BY seq LIMIT ?`

// selectEventsPostgresSQL is selectEventsSQL for PostgreSQL, whose driver
// reads columns cheaply.
const selectEventsPostgresSQL = `SELECT seq, time, type, stream, text, status, exit_code, reason, data
FROM events WHERE job_id = $1 AND seq > $2 ORDER BY seq LIMIT $3`

// dialect is the SQL dialect of a Store's database.
type dialect uint8

const (
	sqliteDialect dialect = iota
	postgresDialect
)

// String returns the dialect's name, as Dialect does.
func (d dialect) String() string {
	if d == postgresDialect {
		return "postgres"
	}
	return "sqlite"
}

// sql returns query, written with SQLite's numbered placeholders (?1, ?2,
// ...; no bare ? and no ? in literals), in d's: PostgreSQL's are $1, $2.
func (d dialect) sql(query string) string {
	if d == postgresDialect {
		return strings.ReplaceAll(query, "?", "$")
	}
	return query
}

// Dialect returns the store's SQL dialect: "sqlite" or "postgres".
func (s *Store) Dialect() string { return s.d.String() }

// Open opens the store at dsn and migrates its tables: a PostgreSQL
// database when dsn is a postgres:// or postgresql:// URL (see
// openPostgres), otherwise the SQLite database at the file path dsn,
// created if needed, which runs in WAL mode with a busy timeout of 5s and
// foreign keys on.
func Open(ctx context.Context, dsn string) (*Store, error) {
	if dsn == "" {
		return nil, errors.New("open store: empty database path")
	}
	if isPostgres(dsn) {
		return openPostgres(ctx, dsn)
	}
	return openSQLite(ctx, dsn)
}

// openSQLite opens the SQLite database at path.
func openSQLite(ctx context.Context, dsn string) (*Store, error) {
	// synchronous=NORMAL in WAL mode fsyncs only at checkpoints, not at
	// every commit: a commit survives a crash of the process, but the last
	// transactions before a power loss or OS crash may be lost (the database
	// stays consistent). That is the right trade for a CI log: it spares an
	// fsync per commit.
	pragmas := "_busy_timeout=5000&_foreign_keys=on"
	// _txlock=immediate takes the write lock at BEGIN, so that a
	// transaction never fails half-way on another process's lock.
	w, err := openDB(dsn, pragmas+"&_journal_mode=WAL&_synchronous=NORMAL&_txlock=immediate", false)
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	s := &Store{w: w}
	if s.wdb, err = setPool(s.w, 1); err != nil {
		s.Close()
		return nil, fmt.Errorf("open store: %w", err)
	}
	if err := s.w.WithContext(ctx).AutoMigrate(&jobRow{}, &eventRow{}, &testRow{}); err != nil {
		s.Close()
		return nil, fmt.Errorf("migrate: %w", err)
	}
	// The writer never checkpoints the WAL into the database itself, but
	// for a backstop far away: a checkpoint runs inside the commit that
	// triggers it, fsync included, and held up that commit's events, and
	// every line written meanwhile, by about 100 ms. The checkpointer
	// does it instead, from a connection of its own (see checkpointLoop).
	// The pragma belongs to the connection: the writer's one connection
	// is kept open for good. journal_size_limit truncates the WAL back to
	// that size once a checkpoint has let it start over.
	for _, pragma := range []string{
		fmt.Sprintf("PRAGMA wal_autocheckpoint=%d", backstopCheckpointPages),
		fmt.Sprintf("PRAGMA journal_size_limit=%d", walSizeLimit),
	} {
		if _, err := s.wdb.ExecContext(ctx, pragma); err != nil {
			s.Close()
			return nil, fmt.Errorf("open store: %s: %w", pragma, err)
		}
	}
	c, err := openDB(dsn, pragmas+"&_journal_mode=WAL&_synchronous=NORMAL", false)
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("open store: %w", err)
	}
	s.c = c
	if s.cdb, err = setPool(c, 1); err != nil {
		s.Close()
		return nil, fmt.Errorf("open store: %w", err)
	}
	cctx, stop := context.WithCancel(context.Background())
	s.stopCheckpoints, s.checkpointerDone = stop, make(chan struct{})
	go s.checkpointLoop(cctx)
	if err := s.ws.prepare(ctx, s.wdb, s.d); err != nil {
		s.Close()
		return nil, fmt.Errorf("open store: %w", err)
	}
	// Readers are opened after the writer has switched the file to WAL
	// (a persistent setting) and created the tables.
	s.r, err = openDB(dsn, pragmas+"&_query_only=true", true)
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("open store: %w", err)
	}
	if s.rdb, err = setPool(s.r, max(4, runtime.GOMAXPROCS(0))); err != nil {
		s.Close()
		return nil, fmt.Errorf("open store: %w", err)
	}
	return s, nil
}

// openDB opens a GORM handle on the database file path with the given
// go-sqlite3 DSN parameters, caching prepared statements if prepare is set.
func openDB(path, params string, prepare bool) (*gorm.DB, error) {
	// A file: URI, so that any path (with '?' or '#' in it) is taken as is.
	dsn := "file:" + (&url.URL{Path: path}).EscapedPath() + "?" + params
	return gorm.Open(sqlite.Open(dsn), gormConfig(prepare))
}

// gormConfig is the GORM configuration of every handle, caching prepared
// statements if prepare is set.
func gormConfig(prepare bool) *gorm.Config {
	return &gorm.Config{
		Logger:                 slowLogger{log: slog.Default().With("component", "persistence")},
		SkipDefaultTransaction: true,
		PrepareStmt:            prepare,
		TranslateError:         true,
		NowFunc:                func() time.Time { return time.Now().UTC() },
	}
}

// setPool sizes db's connection pool to n connections, kept open, and
// returns it.
func setPool(db *gorm.DB, n int) (*sql.DB, error) {
	sqlDB, err := db.DB()
	if err != nil {
		return nil, err
	}
	sqlDB.SetMaxOpenConns(n)
	sqlDB.SetMaxIdleConns(n)
	sqlDB.SetConnMaxLifetime(0)
	sqlDB.SetConnMaxIdleTime(0)
	return sqlDB, nil
}

// Close closes the database. The Store must not be used afterwards.
func (s *Store) Close() error {
	if s.stopCheckpoints != nil {
		s.stopCheckpoints()
		<-s.checkpointerDone
	}
	s.ws.close()
	var errs []error
	dbs := []*gorm.DB{s.r, s.c, s.w}
	if s.r == s.w {
		dbs = dbs[1:] // PostgreSQL's one pool
	}
	for _, db := range dbs {
		if db == nil {
			continue
		}
		sqlDB, err := db.DB()
		if err == nil {
			err = sqlDB.Close()
		}
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("close store: %w", err)
	}
	return nil
}

// CreateJob inserts job and its first events in one transaction and sets
// job.ID to a new lowercase ULID, and the events' JobID to it. The events
// must start at seq 1 and be gapless, and job.LastSeq must be the seq of the
// last one (0 without events); otherwise it returns an ECONFLICT error. A
// zero job.CreatedAt is set to the current time.
func (s *Store) CreateJob(ctx context.Context, job *jobs.Job, events []jobs.Event) error {
	if !job.Status.Valid() {
		return fmt.Errorf("create job: %w", jobs.Errorf(jobs.EINVALID, "invalid job status %q", job.Status))
	}
	if len(events) == 0 && job.LastSeq != 0 {
		return fmt.Errorf("create job: %w", jobs.Errorf(jobs.ECONFLICT, "job has last seq %d but no events", job.LastSeq))
	}
	if len(events) > 0 {
		if events[0].Seq != 1 {
			return fmt.Errorf("create job: %w", jobs.Errorf(jobs.ECONFLICT, "first event has seq %d, want 1", events[0].Seq))
		}
		if err := checkEvents(job, events, false); err != nil {
			return fmt.Errorf("create job: %w", err)
		}
	}

	now := time.Now()
	id, err := newID(now)
	if err != nil {
		return fmt.Errorf("create job: new id: %w", err)
	}
	j := *job
	j.ID = id
	if j.CreatedAt.IsZero() {
		j.CreatedAt = now.UTC()
	}
	row, err := newJobRow(&j)
	if err != nil {
		return fmt.Errorf("create job: %w", err)
	}
	rows := newEventRows(id, events)
	change := jobs.Change{JobID: id, Status: true}
	if len(events) > 0 {
		change.First, change.Last = events[0].Seq, job.LastSeq
	}
	err = s.w.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		if err := tx.Omit("Events").Create(&row).Error; err != nil {
			return fmt.Errorf("insert job: %w", err)
		}
		if len(rows) > 0 {
			if err := tx.CreateInBatches(rows, createBatchSize).Error; err != nil {
				return fmt.Errorf("insert events: %w", err)
			}
		}
		return s.notify(tx, change)
	})
	if err != nil {
		return fmt.Errorf("create job: %w", err)
	}
	job.ID = id
	job.CreatedAt = j.CreatedAt
	for i := range events {
		events[i].JobID = id
	}
	return nil
}

// checkEvents checks that events are for job, gapless, and end at
// job.LastSeq. With sameJob, each event's JobID must be job.ID.
func checkEvents(job *jobs.Job, events []jobs.Event, sameJob bool) error {
	first := events[0].Seq
	for i := range events {
		e := &events[i]
		if sameJob && e.JobID != job.ID {
			return jobs.Errorf(jobs.ECONFLICT, "event %d is for job %q, not %q", e.Seq, e.JobID, job.ID)
		}
		if e.Seq != first+int64(i) {
			return jobs.Errorf(jobs.ECONFLICT, "job %q: event %d has seq %d, want %d", job.ID, i, e.Seq, first+int64(i))
		}
	}
	if last := events[len(events)-1].Seq; job.LastSeq != last {
		return jobs.Errorf(jobs.ECONFLICT, "job %q: last seq is %d, last event has seq %d", job.ID, job.LastSeq, last)
	}
	return nil
}

// Job returns the job with the given ID, or an ENOTFOUND error.
func (s *Store) Job(ctx context.Context, id string) (*jobs.Job, error) {
	var rows []jobRow
	if err := s.r.WithContext(ctx).Where("id = ?", id).Limit(1).Find(&rows).Error; err != nil {
		return nil, fmt.Errorf("get job: %w", err)
	}
	if len(rows) == 0 {
		return nil, jobs.Errorf(jobs.ENOTFOUND, "job %q not found", id)
	}
	j, err := rows[0].job()
	if err != nil {
		return nil, fmt.Errorf("get job: %w", err)
	}
	return j, nil
}

// Jobs returns a page of jobs, newest first: at most opts.Limit (default 50,
// at most 1000) jobs, with IDs below opts.Before when it is set.
func (s *Store) Jobs(ctx context.Context, opts jobs.ListOptions) ([]*jobs.Job, error) {
	limit := opts.Limit
	if limit <= 0 {
		limit = defaultListLimit
	}
	limit = min(limit, maxListLimit)
	q := s.r.WithContext(ctx).Order("id DESC").Limit(limit)
	if opts.Before != "" {
		q = q.Where("id < ?", opts.Before)
	}
	var rows []jobRow
	if err := q.Find(&rows).Error; err != nil {
		return nil, fmt.Errorf("list jobs: %w", err)
	}
	js, err := toJobs(rows)
	if err != nil {
		return nil, fmt.Errorf("list jobs: %w", err)
	}
	return js, nil
}

// JobsByStatus returns every job with the given status, oldest first.
func (s *Store) JobsByStatus(ctx context.Context, status jobs.Status) ([]*jobs.Job, error) {
	var rows []jobRow
	if err := s.r.WithContext(ctx).Where("status = ?", string(status)).Order("id ASC").Find(&rows).Error; err != nil {
		return nil, fmt.Errorf("jobs by status: %w", err)
	}
	js, err := toJobs(rows)
	if err != nil {
		return nil, fmt.Errorf("jobs by status: %w", err)
	}
	return js, nil
}

// toJobs converts rows to jobs.
func toJobs(rows []jobRow) ([]*jobs.Job, error) {
	js := make([]*jobs.Job, len(rows))
	for i := range rows {
		j, err := rows[i].job()
		if err != nil {
			return nil, err
		}
		js[i] = j
	}
	return js, nil
}

// AppendEvents appends events to job's log and saves job's mutable fields
// (status, started and finished times, exit code, reason, last seq) in one
// transaction. The events must be non-empty, for job, gapless, start right
// after the stored last seq and end at job.LastSeq; otherwise it returns an
// ECONFLICT error and writes nothing. An unknown job is an ENOTFOUND error.
func (s *Store) AppendEvents(ctx context.Context, job *jobs.Job, events []jobs.Event) error {
	if len(events) == 0 {
		return fmt.Errorf("append events: %w", jobs.Errorf(jobs.ECONFLICT, "job %q: no events to append", job.ID))
	}
	if err := checkEvents(job, events, true); err != nil {
		return fmt.Errorf("append events: %w", err)
	}
	if !job.Status.Valid() {
		return fmt.Errorf("append events: %w", jobs.Errorf(jobs.EINVALID, "invalid job status %q", job.Status))
	}
	if err := s.appendEvents(ctx, job, events); err != nil {
		return fmt.Errorf("append events: %w", err)
	}
	return nil
}

// appendEvents does the work of AppendEvents in one transaction.
func (s *Store) appendEvents(ctx context.Context, job *jobs.Job, events []jobs.Event) error {
	tx, err := s.wdb.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer tx.Rollback() // a no-op after Commit

	// The update comes first: it takes the job's expected last seq as a
	// guard, so that a batch that does not continue the stored log exactly
	// changes nothing.
	prev := events[0].Seq - 1
	var argv [13]any // on the stack
	args := argv[:11]
	args[0], args[1], args[2], args[3] = string(job.Status), timeArg(job.StartedAt), timeArg(job.FinishedAt), intArg(job.ExitCode)
	args[4], args[5], args[6], args[7] = job.Reason, job.LastSeq, job.ID, prev
	args[8], args[9], args[10] = job.Offsets.Stdout, job.Offsets.Stderr, job.Phase
	if s.d == postgresDialect {
		// The update notifies the change feed itself (RETURNING
		// pg_notify), at no extra round trip.
		c := jobs.Change{JobID: job.ID, First: events[0].Seq, Last: job.LastSeq}
		for i := range events {
			if events[i].Type == jobs.EventStatus {
				c.Status = true
				break
			}
		}
		args = append(args, s.channel, encodeChange(c))
	}
	res, err := tx.StmtContext(ctx, s.ws.update).ExecContext(ctx, args...)
	if err != nil {
		return fmt.Errorf("update job: %w", err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("update job: %w", err)
	} else if n != 1 {
		return s.conflict(ctx, tx, job.ID, prev)
	}
	if err := s.ws.insertEvents(ctx, tx, job.ID, events); err != nil {
		if s.isDuplicate(err) {
			return jobs.Errorf(jobs.ECONFLICT, "job %q: events %d to %d already exist", job.ID, events[0].Seq, job.LastSeq)
		}
		return fmt.Errorf("insert events: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

// isDuplicate reports whether err is a primary key violation.
func (s *Store) isDuplicate(err error) bool {
	if s.d == postgresDialect {
		return pgDuplicate(err)
	}
	t, ok := s.w.Dialector.(gorm.ErrorTranslator)
	return ok && errors.Is(t.Translate(err), gorm.ErrDuplicatedKey)
}

// conflict explains why the job with the given ID could not be updated
// with events following prev.
func (s *Store) conflict(ctx context.Context, tx *sql.Tx, id string, prev int64) error {
	var last int64
	err := tx.QueryRowContext(ctx, s.d.sql("SELECT last_seq FROM jobs WHERE id = ?1"), id).Scan(&last)
	if errors.Is(err, sql.ErrNoRows) {
		return jobs.Errorf(jobs.ENOTFOUND, "job %q not found", id)
	}
	if err != nil {
		return fmt.Errorf("get last seq: %w", err)
	}
	return jobs.Errorf(jobs.ECONFLICT, "job %q: events start at seq %d, want %d", id, prev+1, last+1)
}

// timeArg returns *t in UTC as an SQL argument, or NULL.
func timeArg(t *time.Time) any {
	if t == nil {
		return nil
	}
	return t.UTC()
}

// intArg returns *n as an SQL argument, or NULL.
func intArg(n *int) any {
	if n == nil {
		return nil
	}
	return int64(*n)
}

// Events returns up to limit events (default 1000 when limit <= 0, at most
// 10000) of the job with seq > after, in seq order. An unknown job has no
// events.
func (s *Store) Events(ctx context.Context, jobID string, after int64, limit int) ([]jobs.Event, error) {
	if limit <= 0 {
		limit = defaultEventsLimit
	}
	limit = min(limit, maxEventsLimit)
	// database/sql rather than GORM: a replay reads many rows, and GORM's
	// reflection cost several times SQLite's own work per row.
	query := selectEventsSQL
	if s.d == postgresDialect {
		query = selectEventsPostgresSQL
	}
	rows, err := s.rdb.QueryContext(ctx, query, jobID, after, limit)
	if err != nil {
		return nil, fmt.Errorf("get events: %w", err)
	}
	defer rows.Close()
	events := make([]jobs.Event, 0, min(limit, 1024))
	for rows.Next() {
		var r eventRow
		if s.d == postgresDialect {
			err = rows.Scan(&r.Seq, &r.Time, &r.Type, &r.Stream, &r.Text, &r.Status, &r.ExitCode, &r.Reason, &r.Data)
		} else {
			err = scanSQLiteEvent(rows, &r)
		}
		if err != nil {
			return nil, fmt.Errorf("get events: %w", err)
		}
		r.JobID = jobID
		events = append(events, r.event())
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("get events: %w", err)
	}
	return events, nil
}

// scanSQLiteEvent scans a row of selectEventsSQL into r.
func scanSQLiteEvent(rows *sql.Rows, r *eventRow) error {
	var extra sql.NullString
	if err := rows.Scan(&r.Seq, &r.Time, &r.Type, &r.Stream, &r.Text, &extra); err != nil {
		return err
	}
	if extra.Valid {
		var cols struct {
			status, reason, data string
			exitCode             *int
		}
		if err := json.Unmarshal([]byte(extra.String), &[]any{&cols.status, &cols.exitCode, &cols.reason, &cols.data}); err != nil {
			return fmt.Errorf("event %d: %w", r.Seq, err)
		}
		r.Status, r.ExitCode, r.Reason, r.Data = cols.status, cols.exitCode, cols.reason, cols.data
	}
	return nil
}

// SaveTests replaces the per-test results of the job with the given ID.
func (s *Store) SaveTests(ctx context.Context, jobID string, tests []jobs.TestCase) error {
	rows := make([]testRow, len(tests))
	for i, t := range tests {
		rows[i] = testRow{JobID: jobID, Idx: i, NodeID: t.NodeID, Outcome: t.Outcome, DurationS: t.DurationS, Message: t.Message}
	}
	err := s.w.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		if err := tx.Where("job_id = ?", jobID).Delete(&testRow{}).Error; err != nil {
			return err
		}
		if len(rows) == 0 {
			return nil
		}
		return tx.CreateInBatches(rows, 100).Error
	})
	if err != nil {
		return fmt.Errorf("save tests: %w", err)
	}
	return nil
}

// Tests returns the per-test results of the job with the given ID, in
// pytest's order; none if it has none.
func (s *Store) Tests(ctx context.Context, jobID string) ([]jobs.TestCase, error) {
	var rows []testRow
	if err := s.r.WithContext(ctx).Where("job_id = ?", jobID).Order("idx ASC").Find(&rows).Error; err != nil {
		return nil, fmt.Errorf("get tests: %w", err)
	}
	tests := make([]jobs.TestCase, len(rows))
	for i, r := range rows {
		tests[i] = jobs.TestCase{NodeID: r.NodeID, Outcome: r.Outcome, DurationS: r.DurationS, Message: r.Message}
	}
	return tests, nil
}

// slowLogger is a GORM logger that logs slow queries only: errors are
// returned to the caller, who logs them once at the edge.
type slowLogger struct {
	log *slog.Logger
}

// LogMode implements logger.Interface.
func (l slowLogger) LogMode(logger.LogLevel) logger.Interface { return l }

// Info implements logger.Interface.
func (l slowLogger) Info(context.Context, string, ...any) {}

// Warn implements logger.Interface.
func (l slowLogger) Warn(context.Context, string, ...any) {}

// Error implements logger.Interface.
func (l slowLogger) Error(context.Context, string, ...any) {}

// Trace implements logger.Interface.
func (l slowLogger) Trace(ctx context.Context, begin time.Time, fc func() (string, int64), _ error) {
	elapsed := time.Since(begin)
	if elapsed < slowQuery {
		return
	}
	sql, rows := fc()
	if len(sql) > 200 {
		sql = sql[:200] + "..."
	}
	l.log.WarnContext(ctx, "slow query", "elapsed", elapsed, "rows", rows, "sql", sql)
}

// CountJobs returns how many jobs have the given status: a range of the
// status index, cheap for a short queue however many jobs ended.
func (s *Store) CountJobs(ctx context.Context, status jobs.Status) (int64, error) {
	var n int64
	if err := s.r.WithContext(ctx).Model(&jobRow{}).Where("status = ?", string(status)).Count(&n).Error; err != nil {
		return 0, fmt.Errorf("count %s jobs: %w", status, err)
	}
	return n, nil
}

// CountJobsByStatus returns how many jobs have each status (statuses no
// job has are missing), from the status index.
func (s *Store) CountJobsByStatus(ctx context.Context) (map[jobs.Status]int64, error) {
	rows, err := s.rdb.QueryContext(ctx, "SELECT status, COUNT(*) FROM jobs GROUP BY status")
	if err != nil {
		return nil, fmt.Errorf("count jobs: %w", err)
	}
	defer rows.Close()
	counts := map[jobs.Status]int64{}
	for rows.Next() {
		var status string
		var n int64
		if err := rows.Scan(&status, &n); err != nil {
			return nil, fmt.Errorf("count jobs: %w", err)
		}
		counts[jobs.Status(status)] = n
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("count jobs: %w", err)
	}
	return counts, nil
}
