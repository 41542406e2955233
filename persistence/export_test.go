package persistence

import "context"

// Pragma returns the value of an SQLite pragma on the write connection,
// for tests.
func (s *Store) Pragma(ctx context.Context, name string) (string, error) {
	var v string
	err := s.w.WithContext(ctx).Raw("PRAGMA " + name).Row().Scan(&v)
	return v, err
}

// Exec runs a statement on the write connection (with ? placeholders in
// either dialect), for tests that need to corrupt the database.
func (s *Store) Exec(ctx context.Context, query string, args ...any) error {
	return s.w.WithContext(ctx).Exec(query, args...).Error
}

// Checkpoints returns how many checkpoints the checkpointer has run that
// moved WAL frames into the database.
func (s *Store) Checkpoints() int64 { return s.checkpoints.Load() }

// OnListen sets a function that the change feed calls each time it
// listens on a new connection, with its backend's process ID. It must be
// set before the feed starts.
func (s *Store) OnListen(f func(pid uint32)) { s.onListen = f }
