package persistence

import "context"

// Pragma returns the value of an SQLite pragma on the write connection,
// for tests.
func (s *Store) Pragma(ctx context.Context, name string) (string, error) {
	var v string
	err := s.w.WithContext(ctx).Raw("PRAGMA " + name).Row().Scan(&v)
	return v, err
}

// Exec runs a statement on the write connection, for tests that need to
// corrupt the database.
func (s *Store) Exec(ctx context.Context, query string, args ...any) error {
	_, err := s.wdb.ExecContext(ctx, query, args...)
	return err
}

// Checkpoints returns how many checkpoints the checkpointer has run that
// moved WAL frames into the database.
func (s *Store) Checkpoints() int64 { return s.checkpoints.Load() }
