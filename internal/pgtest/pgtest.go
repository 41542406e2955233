// Package pgtest gives tests a PostgreSQL database of their own: a fresh
// schema in the server named by CI_TEST_POSTGRES, dropped when the test
// ends.
//
// Without CI_TEST_POSTGRES, tests that need PostgreSQL skip, except in CI
// (CI=true), where a missing PostgreSQL is a failure.
package pgtest

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"net/url"
	"os"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" database/sql driver
)

// EnvDSN is the environment variable that names the test server, for
// example postgres://ci:ci@127.0.0.1:5432/ci_test?sslmode=disable.
const EnvDSN = "CI_TEST_POSTGRES"

// BaseDSN returns the DSN of the test server; it skips the test when none
// is set (and fails it in CI).
func BaseDSN(tb testing.TB) string {
	tb.Helper()
	dsn := os.Getenv(EnvDSN)
	if dsn == "" {
		if os.Getenv("CI") == "true" {
			tb.Fatalf("%s is not set: CI must run the PostgreSQL tests (see .ci/run)", EnvDSN)
		}
		tb.Skipf("%s is not set: no PostgreSQL to test against", EnvDSN)
	}
	return dsn
}

// DSN creates a new, empty schema in the test server and returns a DSN
// whose connections use it (search_path), so that tests never see each
// other's tables, channels or rows. The schema is dropped when the test
// ends. Servers given the same DSN share the schema, as replicas do.
func DSN(tb testing.TB) string {
	tb.Helper()
	base := BaseDSN(tb)
	u, err := url.Parse(base)
	if err != nil {
		tb.Fatalf("%s: %v", EnvDSN, err)
	}
	var b [6]byte
	rand.Read(b[:])
	schema := "t_" + hex.EncodeToString(b[:])

	db, err := sql.Open("pgx", base)
	if err != nil {
		tb.Fatalf("open %s: %v", EnvDSN, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := db.ExecContext(ctx, "CREATE SCHEMA "+schema); err != nil {
		db.Close()
		tb.Fatalf("create test schema: %v (is PostgreSQL running? see .ci/run)", err)
	}
	tb.Cleanup(func() {
		defer db.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := db.ExecContext(ctx, "DROP SCHEMA "+schema+" CASCADE"); err != nil {
			tb.Errorf("drop test schema %s: %v", schema, err)
		}
	})
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}
