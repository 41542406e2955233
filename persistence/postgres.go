package persistence

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgconn"
	"gorm.io/driver/postgres"
	"gorm.io/gorm"

	"ci/jobs"
)

// PostgreSQL connections.
const (
	// pgPoolSize is the most connections a Store opens, for reads and
	// writes together (the change feed has one more of its own).
	pgPoolSize = 10
	// pgConnIdleTime and pgConnLifetime bound how long a pooled
	// connection is kept idle, and at all.
	pgConnIdleTime = 5 * time.Minute
	pgConnLifetime = time.Hour
	// maxIdentifier is PostgreSQL's longest identifier, in bytes
	// (NAMEDATALEN-1): a channel name must fit.
	maxIdentifier = 63
)

// isPostgres reports whether dsn names a PostgreSQL database.
func isPostgres(dsn string) bool {
	return strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://")
}

// openPostgres opens the PostgreSQL database at the URL dsn with a pool of
// pgPoolSize connections and migrates its tables, in the schema the DSN's
// search_path selects (by default, "public"). Several Stores, in this
// process or others, may share the database: that is what ClaimJob, the
// leases and ChangeFeed are for.
func openPostgres(ctx context.Context, dsn string) (*Store, error) {
	db, err := gorm.Open(postgres.Open(dsn), gormConfig(false))
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	s := &Store{d: postgresDialect, w: db, r: db, dsn: dsn}
	if s.wdb, err = setPool(db, pgPoolSize); err != nil {
		s.Close()
		return nil, fmt.Errorf("open store: %w", err)
	}
	s.wdb.SetConnMaxIdleTime(pgConnIdleTime)
	s.wdb.SetConnMaxLifetime(pgConnLifetime)
	s.rdb = s.wdb

	var schema *string
	if err := s.wdb.QueryRowContext(ctx, "SELECT current_schema()").Scan(&schema); err != nil {
		s.Close()
		return nil, fmt.Errorf("open store: current schema: %w", err)
	}
	if schema == nil {
		s.Close()
		return nil, errors.New("open store: no current schema: the search_path names no schema that exists")
	}
	s.channel = channelName(*schema)
	// Replicas starting together must not migrate at the same time: in
	// one transaction (PostgreSQL's DDL is transactional), they take
	// turns on a lock of the schema's.
	err = db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		if err := tx.Exec("SELECT pg_advisory_xact_lock(hashtext('ci migrate ' || current_schema()))").Error; err != nil {
			return err
		}
		return tx.AutoMigrate(&jobRow{}, &eventRow{}, &testRow{})
	})
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("migrate: %w", err)
	}
	if err := s.ws.prepare(ctx, s.wdb, s.d); err != nil {
		s.Close()
		return nil, fmt.Errorf("open store: %w", err)
	}
	return s, nil
}

// channelName returns the change feed's notification channel of the
// stores in schema: "ci_changes_" and the schema in lowercase, so that
// stores in different schemas of one database don't hear each other. A
// name too long for an identifier is cut short and ends with a hash of
// the whole schema name instead.
func channelName(schema string) string {
	name := "ci_changes_" + strings.ToLower(schema)
	if len(name) <= maxIdentifier {
		return name
	}
	h := fnv.New32a()
	h.Write([]byte(schema))
	suffix := fmt.Sprintf("_%08x", h.Sum32())
	name = name[:maxIdentifier-len(suffix)]
	for !utf8.ValidString(name) { // a character cut in two
		name = name[:len(name)-1]
	}
	return name + suffix
}

// pgDuplicate reports whether err is PostgreSQL's unique_violation.
func pgDuplicate(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "23505"
}

// notify sends, on PostgreSQL, change c to the change feed from tx: it is
// delivered when tx commits, in commit order, and never if it rolls back.
// On SQLite it does nothing.
func (s *Store) notify(tx *gorm.DB, c jobs.Change) error {
	if s.d != postgresDialect {
		return nil
	}
	if err := tx.Exec("SELECT pg_notify(?, ?)", s.channel, encodeChange(c)).Error; err != nil {
		return fmt.Errorf("notify: %w", err)
	}
	return nil
}

// stamp returns t as the store keeps it: in UTC, and on PostgreSQL to the
// microsecond (its driver truncates the rest).
func (s *Store) stamp(t time.Time) time.Time {
	t = t.UTC()
	if s.d == postgresDialect {
		t = t.Truncate(time.Microsecond)
	}
	return t
}
