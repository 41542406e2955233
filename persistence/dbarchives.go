package persistence

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"ci/jobs"
)

var _ jobs.Archives = (*DBArchives)(nil)

const (
	// archiveChunk is the size of the pieces an archive is stored in: the
	// most memory a Put or a Local holds of it, and one statement's data.
	archiveChunk = 1 << 20
	// archivePoolSize is the most connections a DBArchives opens: an
	// upload or a download holds one for as long as it lasts.
	archivePoolSize = 4
	// removeTimeout bounds a Remove, which has no context of its own.
	removeTimeout = time.Minute
)

// DBArchives is a jobs.Archives that keeps archives in a PostgreSQL
// database, so that every ci-server replica sharing the database can read
// what any of them was given: a job uploaded to one replica may run on
// another. It is safe for concurrent use, also by several processes.
//
// Why in the database rather than on a shared file system: the replicas
// share the database already, so there is nothing more to configure,
// mount or back up, and an archive is written in a transaction, so it is
// either all there or not at all. Archives are kept by content (the key
// is the hex SHA-256 of their bytes), so the same project uploaded again
// is stored once. The costs: the database grows by the archives, which
// are small next to the jobs' logs and are removed with them; and each
// archive is copied once more, to a local cache of files that the
// executor reads.
//
// An archive is a row of the table archives (key, size, chunks,
// created_at) and its content, in pieces of archiveChunk bytes, rows
// (key, idx, data) of archive_chunks. The archives row is written in the
// same transaction as the chunks, after the last one: when it exists,
// all the chunks do. Writes of one key take turns on a transaction-level
// advisory lock of the key's, so two replicas given the same content at
// once both succeed and store it once.
//
// The cache is a directory of files named by key, as Archives keeps them.
// A file appears there only once its archive is in the database, or has
// been read back from it and its SHA-256 checked.
type DBArchives struct {
	// pool is a pgx pool of its own rather than the Store's gorm
	// connection: three fixed statements need no ORM, and pgx sends and
	// reads bytea in binary from its own buffers (pgtype.DriverBytes),
	// with no copy of a chunk per row and no query logger formatting a
	// megabyte of parameters.
	pool  *pgxpool.Pool
	cache *Archives
}

// OpenDBArchives opens the archives kept in the PostgreSQL database at the
// URL dsn (in the schema its search_path selects), creating their tables
// if needed, with a local cache of archive files in cacheDir.
func OpenDBArchives(ctx context.Context, dsn string, cacheDir string) (*DBArchives, error) {
	if !isPostgres(dsn) {
		return nil, jobs.Errorf(jobs.EINVALID, "open archives: not a PostgreSQL URL (postgres://...)")
	}
	cache, err := NewArchives(cacheDir)
	if err != nil {
		return nil, fmt.Errorf("open archives: %w", err)
	}
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("open archives: %w", err)
	}
	cfg.MaxConns = archivePoolSize
	cfg.MinConns = 0
	cfg.MaxConnIdleTime = pgConnIdleTime
	cfg.MaxConnLifetime = pgConnLifetime
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open archives: %w", err)
	}
	d := &DBArchives{pool: pool, cache: cache}
	if err := d.migrate(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("open archives: migrate: %w", err)
	}
	return d, nil
}

// migrate creates the tables if they don't exist, taking turns with the
// Stores and DBArchives of other replicas starting at the same time.
func (d *DBArchives) migrate(ctx context.Context) error {
	return pgx.BeginFunc(ctx, d.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock(hashtext('ci migrate ' || current_schema()))"); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS archive_chunks (
	key text NOT NULL,
	idx integer NOT NULL,
	data bytea NOT NULL,
	PRIMARY KEY (key, idx)
)`); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS archives (
	key text PRIMARY KEY,
	size bigint NOT NULL,
	chunks integer NOT NULL,
	created_at timestamptz NOT NULL DEFAULT now()
)`); err != nil {
			return err
		}
		// Zip files are compressed already: store chunks as they are,
		// without PostgreSQL trying to compress them again. Only when
		// needed, as it locks the table.
		var storage string
		err := tx.QueryRow(ctx, `SELECT attstorage::text FROM pg_attribute
WHERE attrelid = 'archive_chunks'::regclass AND attname = 'data'`).Scan(&storage)
		if err != nil {
			return err
		}
		if storage != "e" {
			if _, err := tx.Exec(ctx, "ALTER TABLE archive_chunks ALTER COLUMN data SET STORAGE EXTERNAL"); err != nil {
				return err
			}
		}
		return nil
	})
}

// Close closes the connections to the database. The DBArchives must not be
// used afterwards.
func (d *DBArchives) Close() error {
	d.pool.Close()
	return nil
}

// lockKey takes, in tx, the advisory lock of the writes of key (in the
// current schema): it is held until tx ends.
func lockKey(ctx context.Context, tx pgx.Tx, key string) error {
	_, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock(hashtext('ci archive ' || current_schema()), hashtext($1))", key)
	return err
}

// Put implements jobs.Archives. It streams r to its end into a temporary
// file of the cache while hashing it; then, unless the database has the
// archive already, copies the file into it in chunks, in one transaction;
// then renames the file into the cache. Memory use is bounded by a chunk
// whatever the size of the archive. When reading r fails, ctx is canceled
// or the database refuses the archive, Put leaves nothing behind, in the
// database or the cache, and returns the error, wrapping r's.
func (d *DBArchives) Put(ctx context.Context, r io.Reader) (key string, size int64, err error) {
	t, err := newHashedTemp(d.cache.dir)
	if err != nil {
		return "", 0, fmt.Errorf("put archive: %w", err)
	}
	defer t.discard()
	size, err = io.Copy(t, &ctxReader{ctx: ctx, r: r})
	if err != nil {
		return "", 0, fmt.Errorf("put archive: %w", err)
	}
	key = t.key()
	if err = d.insert(ctx, key, size, t.f); err != nil {
		return "", 0, fmt.Errorf("put archive %s: %w", key, err)
	}
	// The cache: a file that is complete under its name even after a
	// crash. The rename need not be durable: a lost file is fetched again.
	if err = t.commit(d.cache.Path(key)); err != nil {
		return "", 0, fmt.Errorf("put archive: %w", err)
	}
	return key, size, nil
}

// insert copies the size bytes of f, the archive with the given key, into
// the database, unless they are there already.
func (d *DBArchives) insert(ctx context.Context, key string, size int64, f *os.File) error {
	return pgx.BeginFunc(ctx, d.pool, func(tx pgx.Tx) error {
		if err := lockKey(ctx, tx, key); err != nil {
			return err
		}
		var exists bool
		if err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM archives WHERE key = $1)", key).Scan(&exists); err != nil {
			return err
		}
		if exists {
			return nil // the same content, stored before
		}
		// Chunks without an archives row are left of nothing that
		// completed; never keep them in place of the content at hand.
		if _, err := tx.Exec(ctx, "DELETE FROM archive_chunks WHERE key = $1", key); err != nil {
			return err
		}
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return err
		}
		buf := make([]byte, archiveChunk)
		var n int64
		chunks := 0
		for {
			m, err := io.ReadFull(f, buf)
			if m > 0 {
				if _, err := tx.Exec(ctx, "INSERT INTO archive_chunks (key, idx, data) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
					key, chunks, buf[:m]); err != nil {
					return fmt.Errorf("insert chunk %d: %w", chunks, err)
				}
				n += int64(m)
				chunks++
			}
			if err == io.EOF || err == io.ErrUnexpectedEOF {
				break
			}
			if err != nil {
				return err
			}
		}
		if n != size {
			return fmt.Errorf("read %d bytes of the upload back, want %d", n, size)
		}
		_, err := tx.Exec(ctx, "INSERT INTO archives (key, size, chunks) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
			key, size, chunks)
		return err
	})
}

// Local implements jobs.Archives. It returns the path of the archive's
// file in the cache, first fetching it from the database if it is not
// there: its chunks, in order, into a temporary file whose SHA-256 must be
// the key (else the archive is corrupt, an error), then renamed into the
// cache. Local asks the database even when the file is cached, so an
// archive removed by any replica is not found (and its file is dropped
// from the cache). A missing archive or an invalid key is an ENOTFOUND
// error.
func (d *DBArchives) Local(ctx context.Context, key string) (string, error) {
	p := d.cache.Path(key)
	if p == "" {
		return "", jobs.Errorf(jobs.ENOTFOUND, "archive %q not found (invalid key)", key)
	}
	// One snapshot: all of an archive's chunks, or no archive, even if
	// another replica removes it meanwhile.
	opts := pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}
	notFound := false
	err := pgx.BeginTxFunc(ctx, d.pool, opts, func(tx pgx.Tx) error {
		var size int64
		var chunks int
		err := tx.QueryRow(ctx, "SELECT size, chunks FROM archives WHERE key = $1", key).Scan(&size, &chunks)
		if errors.Is(err, pgx.ErrNoRows) {
			notFound = true
			return d.cache.Remove(key)
		}
		if err != nil {
			return err
		}
		if _, err := os.Stat(p); err == nil {
			return nil
		} else if !os.IsNotExist(err) {
			return err
		}
		return d.fetch(ctx, tx, key, size, chunks)
	})
	if err != nil {
		return "", fmt.Errorf("archive %s: %w", key, err)
	}
	if notFound {
		return "", jobs.Errorf(jobs.ENOTFOUND, "archive %s not found", key)
	}
	return p, nil
}

// fetch copies the archive with the given key, of size bytes in the given
// number of chunks, from the database into the cache.
func (d *DBArchives) fetch(ctx context.Context, tx pgx.Tx, key string, size int64, chunks int) error {
	t, err := newHashedTemp(d.cache.dir)
	if err != nil {
		return err
	}
	defer t.discard()
	rows, err := tx.Query(ctx, "SELECT idx, data FROM archive_chunks WHERE key = $1 ORDER BY idx", key)
	if err != nil {
		return err
	}
	defer rows.Close()
	var n int64
	next := 0
	for rows.Next() {
		var idx int
		var data pgtype.DriverBytes // valid until the next row
		if err := rows.Scan(&idx, &data); err != nil {
			return err
		}
		if idx != next {
			return fmt.Errorf("corrupt in the database: chunk %d missing", next)
		}
		if _, err := t.Write(data); err != nil {
			return err
		}
		n += int64(len(data))
		next++
	}
	if err := rows.Err(); err != nil {
		return err
	}
	switch {
	case next != chunks:
		return fmt.Errorf("corrupt in the database: %d chunks, want %d", next, chunks)
	case n != size:
		return fmt.Errorf("corrupt in the database: %d bytes, want %d", n, size)
	case t.key() != key:
		return errors.New("corrupt in the database: content does not match its SHA-256")
	}
	// Another Local may have fetched it meanwhile: same content, and
	// rename replaces atomically.
	return t.commit(d.cache.Path(key))
}

// Remove implements jobs.Archives: it deletes the archive from the
// database (its row and its chunks, in one transaction) and from the
// cache. Removing a missing archive is not an error; an invalid key is an
// EINVALID error. Other replicas' caches drop their copies when Local
// next asks for it.
func (d *DBArchives) Remove(key string) error {
	if !validKey(key) {
		return fmt.Errorf("remove archive: %w", jobs.Errorf(jobs.EINVALID, "invalid archive key %q", key))
	}
	ctx, cancel := context.WithTimeout(context.Background(), removeTimeout)
	defer cancel()
	err := pgx.BeginFunc(ctx, d.pool, func(tx pgx.Tx) error {
		if err := lockKey(ctx, tx, key); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "DELETE FROM archives WHERE key = $1", key); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, "DELETE FROM archive_chunks WHERE key = $1", key)
		return err
	})
	if err != nil {
		err = fmt.Errorf("remove archive %s: %w", key, err)
	}
	return errors.Join(err, d.cache.Remove(key))
}
