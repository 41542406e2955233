package main

import (
	"archive/zip"
	"bytes"
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"ci/client"
	"ci/executor"
	"ci/internal/pgtest"
)

func TestParseFlags(t *testing.T) {
	m := NewMain()
	err := m.ParseFlags([]string{"--addr", "127.0.0.1:9", "--data", "/d", "--image", "img:1", "--concurrency", "3", "--log-level", "warn"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if m.Addr != "127.0.0.1:9" || m.DataDir != "/d" || m.Image != "img:1" || m.Concurrency != 3 || m.Log == nil {
		t.Fatalf("parsed %+v", m)
	}
	d := NewMain()
	if d.Addr != ":8000" || d.DataDir != "./data" || d.Image != "python:3.12-slim" || d.Concurrency < 1 {
		t.Fatalf("defaults %+v, want :8000 ./data python:3.12-slim NCPU", d)
	}
	for _, bad := range [][]string{
		{"--concurrency", "0"},
		{"--image", ""},
		{"--log-level", "loud"},
		{"--max-upload", "-1"},
		{"--job-timeout", "0s"},
		{"--max-queued", "0"},
		{"--token", "short"},
		{"--private"},
		{"--nope"},
		{"extra"},
	} {
		if err := NewMain().ParseFlags(bad, io.Discard); err == nil {
			t.Errorf("ParseFlags(%q) succeeded, want an error", bad)
		}
	}
}

// TestMainInProcess runs the whole server in-process on :0 with the fake
// executor, submits a job with the client library and follows it.
func TestMainInProcess(t *testing.T) {
	m := NewMain()
	if err := m.ParseFlags([]string{"--addr", "127.0.0.1:0", "--data", t.TempDir()}, io.Discard); err != nil {
		t.Fatal(err)
	}
	m.Log = slog.New(slog.DiscardHandler)
	m.Executor = &executor.Fake{}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := m.Run(ctx); err != nil {
		t.Fatal(err)
	}
	defer m.Close()

	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	w, _ := zw.Create(executor.FakeScript)
	io.WriteString(w, "stdout \"hello\\n\"\nexit 3\n")
	zw.Close()

	c := client.New(m.URL())
	job, err := c.Submit(ctx, &buf, nil)
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	end, err := c.Follow(ctx, job.ID, 0, func(ev client.Event) error {
		out.WriteString(ev.Text)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if end.Status != "failed" || end.ExitCode == nil || *end.ExitCode != 3 || out.String() != "hello\n" {
		t.Fatalf("ended %+v with output %q, want failed with exit code 3 and hello", end, out.String())
	}
	if err := m.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
}

// TestTokenFromEnvNotInHelp checks that the token comes from the
// environment and that --help never shows it.
func TestTokenFromEnvNotInHelp(t *testing.T) {
	const token = "env-token-0123456789abcdef"
	t.Setenv("CI_SERVER_TOKEN", token)
	m := NewMain()
	if err := m.ParseFlags(nil, io.Discard); err != nil {
		t.Fatal(err)
	}
	if m.Token != token {
		t.Fatalf("token %q, want it from CI_SERVER_TOKEN", m.Token)
	}
	var help strings.Builder
	NewMain().ParseFlags([]string{"--help"}, &help)
	if strings.Contains(help.String(), token) || !strings.Contains(help.String(), "--token") {
		t.Fatalf("help shows the token or lacks --token:\n%s", help.String())
	}
}

func TestParseFlagsDeps(t *testing.T) {
	m := NewMain()
	if m.InstallNetwork != "bridge" || m.DepsCacheMax <= 0 || m.DepsCacheSize <= 0 {
		t.Fatalf("defaults: network %q, max %d, size %d", m.InstallNetwork, m.DepsCacheMax, m.DepsCacheSize)
	}
	err := m.ParseFlags([]string{"--install-network", "none", "--deps-cache-max", "3", "--deps-cache-size", "0"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if m.InstallNetwork != "none" || m.DepsCacheMax != 3 || m.DepsCacheSize != 0 {
		t.Fatalf("parsed network %q, max %d, size %d", m.InstallNetwork, m.DepsCacheMax, m.DepsCacheSize)
	}
	if NewMain().Warm != 2 {
		t.Fatalf("default --warm %d, want 2", NewMain().Warm)
	}
	for _, bad := range [][]string{{"--install-network", ""}, {"--deps-cache-max", "-1"}, {"--deps-cache-size", "-5"}, {"--warm", "-1"}} {
		if err := NewMain().ParseFlags(bad, io.Discard); err == nil {
			t.Errorf("ParseFlags(%q) succeeded, want an error", bad)
		}
	}
}

func TestDepsCommandUsage(t *testing.T) {
	for _, args := range [][]string{{}, {"frobnicate"}, {"list", "extra"}, {"--nope", "list"}} {
		var stderr strings.Builder
		if code := depsCommand(context.Background(), args, io.Discard, &stderr); code != 64 {
			t.Errorf("deps %q: exit %d, want 64", args, code)
		}
		if stderr.Len() == 0 {
			t.Errorf("deps %q: no message", args)
		}
	}
	var stderr strings.Builder
	if code := depsCommand(context.Background(), []string{"--help"}, io.Discard, &stderr); code != 0 || !strings.Contains(stderr.String(), "ci-server deps prune") {
		t.Errorf("deps --help: exit %d, %q", code, stderr.String())
	}
}

func TestHumanBytes(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1536: "1.5 KiB", 96 << 20: "96.0 MiB", 3 << 30: "3.0 GiB"} {
		if got := humanBytes(n); got != want {
			t.Errorf("humanBytes(%d)=%q, want %q", n, got, want)
		}
	}
}

// TestReplicaFlags checks the replica settings: the database URL from the
// environment, a default replica name that is stable per data dir and
// distinct across data dirs, a lease of at least a second, and a database
// URL whose password never reaches a message.
func TestReplicaFlags(t *testing.T) {
	t.Setenv("CI_DATABASE_URL", "postgres://ci:hunter2-secret@db:5432/ci")
	m := NewMain()
	if err := m.ParseFlags([]string{"--data", "/srv/a"}, io.Discard); err != nil {
		t.Fatal(err)
	}
	if m.DB != "postgres://ci:hunter2-secret@db:5432/ci" || m.Lease != 15*time.Second {
		t.Fatalf("db %q lease %s, want $CI_DATABASE_URL and 15s", m.DB, m.Lease)
	}
	again, other := defaultReplica("/srv/a"), defaultReplica("/srv/b")
	if m.Replica != again || m.Replica == other || m.Replica == "" {
		t.Fatalf("default replicas %q, %q, %q: want stable per data dir, distinct across", m.Replica, again, other)
	}
	if err := NewMain().ParseFlags([]string{"--lease", "500ms"}, io.Discard); err == nil {
		t.Fatal("--lease 500ms accepted, want an error")
	}
	if got := redactDSN(m.DB); strings.Contains(got, "hunter2") || !strings.Contains(got, "db:5432") {
		t.Fatalf("redactDSN = %q, want the password hidden and the host kept", got)
	}
	if got := redactDSN("/var/lib/ci/ci.db"); got != "/var/lib/ci/ci.db" {
		t.Fatalf("redactDSN of a path = %q", got)
	}
}

// TestMainOnPostgres runs two in-process replicas on one PostgreSQL
// schema: a job uploaded to one is run by a replica that names itself in
// the job, and is followed to its end through the other.
func TestMainOnPostgres(t *testing.T) {
	dsn := pgtest.DSN(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	start := func(name string) *Main {
		m := NewMain()
		if err := m.ParseFlags([]string{"--addr", "127.0.0.1:0", "--data", t.TempDir(), "--db", dsn, "--replica", name}, io.Discard); err != nil {
			t.Fatal(err)
		}
		m.Log = slog.New(slog.DiscardHandler)
		m.Executor = &executor.Fake{}
		if err := m.Run(ctx); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Close() })
		return m
	}
	a, b := start("a"), start("b")

	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	w, _ := zw.Create(executor.FakeScript)
	io.WriteString(w, "stdout \"hello\\n\"\nexit 0\n")
	zw.Close()
	job, err := client.New(a.URL()).Submit(ctx, &buf, nil)
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	end, err := client.New(b.URL()).Follow(ctx, job.ID, 0, func(ev client.Event) error {
		out.WriteString(ev.Text)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	got, err := client.New(b.URL()).Job(ctx, job.ID)
	if err != nil {
		t.Fatal(err)
	}
	if end.Status != "passed" || out.String() != "hello\n" || (got.Replica != "a" && got.Replica != "b") {
		t.Fatalf("ended %s with %q on replica %q: want passed, hello, a or b", end.Status, out.String(), got.Replica)
	}
}
