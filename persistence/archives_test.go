package persistence_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	"ci/jobs"
	"ci/persistence"
)

// MustNewArchives returns Archives in a new temporary directory.
func MustNewArchives(tb testing.TB) (*persistence.Archives, string) {
	tb.Helper()
	dir := filepath.Join(tb.TempDir(), "archives")
	a, err := persistence.NewArchives(dir)
	if err != nil {
		tb.Fatalf("new archives: %v", err)
	}
	return a, dir
}

// dirNames returns the names of the files in dir.
func dirNames(tb testing.TB, dir string) []string {
	tb.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		tb.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func TestArchives_Put(t *testing.T) {
	ctx := context.Background()
	a, dir := MustNewArchives(t)
	body := bytes.Repeat([]byte("PK\x03\x04 some zip bytes "), 10000)
	sum := sha256.Sum256(body)

	key, size, err := a.Put(ctx, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if want := hex.EncodeToString(sum[:]); key != want {
		t.Fatalf("key=%q, want %q", key, want)
	}
	if size != int64(len(body)) {
		t.Fatalf("size=%d, want %d", size, len(body))
	}
	if got, want := a.Path(key), filepath.Join(dir, key+".zip"); got != want {
		t.Fatalf("path=%q, want %q", got, want)
	}
	got, err := os.ReadFile(a.Path(key))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, body) {
		t.Fatal("stored content differs from the upload")
	}

	// The same content again: same key, still one file, no temporary left.
	key2, _, err := a.Put(ctx, iotest.OneByteReader(bytes.NewReader(body[:1000])))
	if err != nil {
		t.Fatal(err)
	}
	key3, _, err := a.Put(ctx, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if key3 != key {
		t.Fatalf("key of same content=%q, want %q", key3, key)
	}
	if names := dirNames(t, dir); len(names) != 2 {
		t.Fatalf("files=%q, want 2 archives", names)
	}

	if err := a.Remove(key); err != nil {
		t.Fatal(err)
	}
	if err := a.Remove(key); err != nil {
		t.Fatalf("remove missing: %v", err)
	}
	if names := dirNames(t, dir); len(names) != 1 || names[0] != key2+".zip" {
		t.Fatalf("files=%q, want only %s.zip", names, key2)
	}
}

func TestArchives_FailedUploadLeavesNothing(t *testing.T) {
	errBoom := errors.New("connection reset")
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	tests := []struct {
		name string
		ctx  context.Context
		r    io.Reader
		want error
	}{
		{"reader error", context.Background(), io.MultiReader(strings.NewReader("partial zip"), iotest.ErrReader(errBoom)), errBoom},
		{"canceled", canceled, strings.NewReader("zip"), context.Canceled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, dir := MustNewArchives(t)
			key, _, err := a.Put(tt.ctx, tt.r)
			if !errors.Is(err, tt.want) {
				t.Fatalf("err=%v, want %v", err, tt.want)
			}
			if key != "" {
				t.Fatalf("key=%q, want none", key)
			}
			if names := dirNames(t, dir); len(names) != 0 {
				t.Fatalf("files=%q, want none", names)
			}
		})
	}
}

func TestArchives_BadKey(t *testing.T) {
	a, dir := MustNewArchives(t)
	victim := filepath.Join(filepath.Dir(dir), "victim.zip")
	if err := os.WriteFile(victim, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{
		"", "../victim", "..", "abc", strings.Repeat("A", 64), strings.Repeat("g", 64),
		"../" + strings.Repeat("a", 61), strings.Repeat("a", 65),
	} {
		if p := a.Path(key); p != "" {
			t.Errorf("path(%q)=%q, want \"\"", key, p)
		}
		if err := a.Remove(key); jobs.ErrorCode(err) != jobs.EINVALID {
			t.Errorf("remove(%q): err=%v, want %s", key, err, jobs.EINVALID)
		}
	}
	if _, err := os.Stat(victim); err != nil {
		t.Fatalf("file outside the directory: %v", err)
	}
}

func TestNewArchives_RemovesStaleTemporaries(t *testing.T) {
	_, dir := MustNewArchives(t)
	stale := filepath.Join(dir, ".upload-1.tmp")
	fresh := filepath.Join(dir, ".upload-2.tmp")
	for _, name := range []string{stale, fresh} {
		if err := os.WriteFile(name, []byte("partial"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	old := time.Now().Add(-2 * time.Hour)
	if err := os.Chtimes(stale, old, old); err != nil {
		t.Fatal(err)
	}
	if _, err := persistence.NewArchives(dir); err != nil {
		t.Fatal(err)
	}
	if names := dirNames(t, dir); len(names) != 1 || names[0] != filepath.Base(fresh) {
		t.Fatalf("files=%q, want only %s", names, filepath.Base(fresh))
	}
}

func TestArchives_ConcurrentPutSameContent(t *testing.T) {
	a, dir := MustNewArchives(t)
	body := bytes.Repeat([]byte("zip"), 100000)
	keys := make([]string, 8)
	errs := make([]error, len(keys))
	var wg sync.WaitGroup
	for i := range keys {
		wg.Go(func() { keys[i], _, errs[i] = a.Put(context.Background(), bytes.NewReader(body)) })
	}
	wg.Wait()
	for i := range keys {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if keys[i] != keys[0] {
			t.Fatalf("key=%q, want %q", keys[i], keys[0])
		}
	}
	if names := dirNames(t, dir); len(names) != 1 {
		t.Fatalf("files=%q, want one archive", names)
	}
}
