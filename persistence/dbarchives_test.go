package persistence_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	"github.com/jackc/pgx/v5"

	"ci/internal/pgtest"
	"ci/jobs"
	"ci/persistence"
)

const mib = 1 << 20

// MustOpenDBArchives opens DBArchives on dsn with a new cache directory,
// closed when the test ends, and returns them with the directory.
func MustOpenDBArchives(tb testing.TB, dsn string) (*persistence.DBArchives, string) {
	tb.Helper()
	dir := filepath.Join(tb.TempDir(), "cache")
	a, err := persistence.OpenDBArchives(context.Background(), dsn, dir)
	if err != nil {
		tb.Fatalf("open db archives: %v", err)
	}
	tb.Cleanup(func() {
		if err := a.Close(); err != nil {
			tb.Errorf("close db archives: %v", err)
		}
	})
	return a, dir
}

// mustConnect returns a connection to dsn, for looking at the tables.
func mustConnect(tb testing.TB, dsn string) *pgx.Conn {
	tb.Helper()
	conn, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// count returns the result of a SELECT count(*) query.
func count(tb testing.TB, conn *pgx.Conn, query string, args ...any) int {
	tb.Helper()
	var n int
	if err := conn.QueryRow(context.Background(), query, args...).Scan(&n); err != nil {
		tb.Fatalf("%s: %v", query, err)
	}
	return n
}

// storedCounts returns how many archives rows and archive_chunks rows key
// has.
func storedCounts(tb testing.TB, conn *pgx.Conn, key string) (archives, chunks int) {
	tb.Helper()
	return count(tb, conn, "SELECT count(*) FROM archives WHERE key = $1", key),
		count(tb, conn, "SELECT count(*) FROM archive_chunks WHERE key = $1", key)
}

// randomBytes returns n pseudo-random bytes, the same for the same seed.
func randomBytes(n int, seed byte) []byte {
	b := make([]byte, n)
	rand.NewChaCha8([32]byte{seed}).Read(b)
	return b
}

// keyOf returns the key of content.
func keyOf(content []byte) string {
	sum := sha256.Sum256(content)
	return hex.EncodeToString(sum[:])
}

// mustLocalContent calls Local and returns the path and the content of
// its file.
func mustLocalContent(tb testing.TB, a *persistence.DBArchives, key string) (string, []byte) {
	tb.Helper()
	p, err := a.Local(context.Background(), key)
	if err != nil {
		tb.Fatalf("local %s: %v", key, err)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		tb.Fatal(err)
	}
	return p, b
}

func TestDBArchives_SharedByReplicas(t *testing.T) {
	ctx := context.Background()
	dsn := pgtest.DSN(t)
	a, dirA := MustOpenDBArchives(t, dsn)
	b, dirB := MustOpenDBArchives(t, dsn)
	conn := mustConnect(t, dsn)

	for _, tc := range []struct {
		name   string
		size   int
		chunks int
	}{
		{"empty", 0, 0},
		{"one byte", 1, 1},
		{"one chunk", mib, 1},
		{"one chunk and a byte", mib + 1, 2},
		{"3.5 MiB", 3*mib + mib/2, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			body := randomBytes(tc.size, byte(tc.size))
			key, size, err := a.Put(ctx, bytes.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			if want := keyOf(body); key != want {
				t.Fatalf("key=%s, want %s", key, want)
			}
			if size != int64(len(body)) {
				t.Fatalf("size=%d, want %d", size, len(body))
			}
			if n, c := storedCounts(t, conn, key); n != 1 || c != tc.chunks {
				t.Fatalf("rows: %d archives, %d chunks, want 1 and %d", n, c, tc.chunks)
			}
			var dbSize int64
			var dbChunks int
			if err := conn.QueryRow(ctx, "SELECT size, chunks FROM archives WHERE key = $1", key).Scan(&dbSize, &dbChunks); err != nil {
				t.Fatal(err)
			}
			if dbSize != size || dbChunks != tc.chunks {
				t.Fatalf("archives row: size=%d chunks=%d, want %d and %d", dbSize, dbChunks, size, tc.chunks)
			}

			// The other replica fetches it into its own cache.
			p, got := mustLocalContent(t, b, key)
			if want := filepath.Join(dirB, key+".zip"); p != want {
				t.Fatalf("path=%s, want %s", p, want)
			}
			if !bytes.Equal(got, body) {
				t.Fatalf("replica b read %d bytes that differ from the %d uploaded", len(got), len(body))
			}
			// The uploader has it in its cache already.
			p, got = mustLocalContent(t, a, key)
			if want := filepath.Join(dirA, key+".zip"); p != want {
				t.Fatalf("path=%s, want %s", p, want)
			}
			if !bytes.Equal(got, body) {
				t.Fatal("replica a's cached file differs from the upload")
			}
		})
	}
	// No temporary files left behind.
	for _, dir := range []string{dirA, dirB} {
		if n := len(dirNames(t, dir)); n != 5 {
			t.Errorf("%s holds %d files, want 5: %q", dir, n, dirNames(t, dir))
		}
	}
}

func TestDBArchives_Dedup(t *testing.T) {
	ctx := context.Background()
	dsn := pgtest.DSN(t)
	a, _ := MustOpenDBArchives(t, dsn)
	b, _ := MustOpenDBArchives(t, dsn)
	conn := mustConnect(t, dsn)

	t.Run("sequential", func(t *testing.T) {
		body := randomBytes(2*mib+100, 1)
		var keys []string
		for _, put := range []struct {
			a *persistence.DBArchives
			r io.Reader
		}{
			{a, bytes.NewReader(body)},
			{a, bytes.NewReader(body)},
			{b, iotest.HalfReader(bytes.NewReader(body))},
		} {
			key, _, err := put.a.Put(ctx, put.r)
			if err != nil {
				t.Fatal(err)
			}
			keys = append(keys, key)
		}
		if keys[0] != keys[1] || keys[0] != keys[2] {
			t.Fatalf("keys %q differ", keys)
		}
		if n, c := storedCounts(t, conn, keys[0]); n != 1 || c != 3 {
			t.Fatalf("rows: %d archives, %d chunks, want 1 and 3", n, c)
		}
	})

	t.Run("concurrent", func(t *testing.T) {
		body := randomBytes(5*mib/2, 2)
		const perReplica = 4
		start := make(chan struct{})
		var wg sync.WaitGroup
		keys := make([]string, 2*perReplica)
		errs := make([]error, 2*perReplica)
		for i := range keys {
			r := a
			if i%2 == 1 {
				r = b
			}
			wg.Go(func() {
				<-start
				keys[i], _, errs[i] = r.Put(ctx, bytes.NewReader(body))
			})
		}
		close(start)
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("put %d: %v", i, err)
			}
			if keys[i] != keyOf(body) {
				t.Fatalf("put %d: key=%s, want %s", i, keys[i], keyOf(body))
			}
		}
		if n, c := storedCounts(t, conn, keys[0]); n != 1 || c != 3 {
			t.Fatalf("rows: %d archives, %d chunks, want 1 and 3", n, c)
		}
		_, got := mustLocalContent(t, b, keys[0])
		if !bytes.Equal(got, body) {
			t.Fatal("content differs from the upload")
		}
	})
}

func TestDBArchives_LocalConcurrent(t *testing.T) {
	ctx := context.Background()
	dsn := pgtest.DSN(t)
	a, _ := MustOpenDBArchives(t, dsn)
	b, dirB := MustOpenDBArchives(t, dsn)
	body := randomBytes(3*mib, 3)
	key, _, err := a.Put(ctx, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}

	const n = 6
	start := make(chan struct{})
	var wg sync.WaitGroup
	paths := make([]string, n)
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			<-start
			paths[i], errs[i] = b.Local(ctx, key)
		})
	}
	close(start)
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("local %d: %v", i, errs[i])
		}
		if want := filepath.Join(dirB, key+".zip"); paths[i] != want {
			t.Fatalf("local %d: path=%s, want %s", i, paths[i], want)
		}
	}
	if _, got := mustLocalContent(t, b, key); !bytes.Equal(got, body) {
		t.Fatal("content differs from the upload")
	}
	if names := dirNames(t, dirB); len(names) != 1 {
		t.Fatalf("cache holds %q, want the archive alone", names)
	}
}

func TestDBArchives_LocalNotFound(t *testing.T) {
	ctx := context.Background()
	a, dir := MustOpenDBArchives(t, pgtest.DSN(t))
	for _, key := range []string{
		keyOf([]byte("never uploaded")),
		"../../etc/passwd",
		"",
		"ABCDEF",
	} {
		p, err := a.Local(ctx, key)
		if code := jobs.ErrorCode(err); code != jobs.ENOTFOUND {
			t.Errorf("local %q: path=%q err=%v (code %q), want %s", key, p, err, code, jobs.ENOTFOUND)
		}
	}
	if names := dirNames(t, dir); len(names) != 0 {
		t.Fatalf("cache holds %q, want nothing", names)
	}
}

func TestDBArchives_Remove(t *testing.T) {
	ctx := context.Background()
	dsn := pgtest.DSN(t)
	a, dirA := MustOpenDBArchives(t, dsn)
	b, dirB := MustOpenDBArchives(t, dsn)
	conn := mustConnect(t, dsn)
	body := randomBytes(mib+mib/2, 4)
	other := randomBytes(100, 5)
	key, _, err := a.Put(ctx, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	otherKey, _, err := a.Put(ctx, bytes.NewReader(other))
	if err != nil {
		t.Fatal(err)
	}
	mustLocalContent(t, b, key)

	if err := b.Remove(key); err != nil {
		t.Fatal(err)
	}
	if n, c := storedCounts(t, conn, key); n != 0 || c != 0 {
		t.Fatalf("rows after remove: %d archives, %d chunks, want none", n, c)
	}
	if _, err := os.Stat(filepath.Join(dirB, key+".zip")); !os.IsNotExist(err) {
		t.Fatalf("cached file of the remover: %v, want it gone", err)
	}
	// The other replica's cache still has it, but Local asks the database.
	if _, err := a.Local(ctx, key); jobs.ErrorCode(err) != jobs.ENOTFOUND {
		t.Fatalf("local on the other replica: %v, want %s", err, jobs.ENOTFOUND)
	}
	if _, err := os.Stat(filepath.Join(dirA, key+".zip")); !os.IsNotExist(err) {
		t.Fatalf("cached file of the other replica: %v, want it dropped", err)
	}
	// Other archives stay.
	if n, c := storedCounts(t, conn, otherKey); n != 1 || c != 1 {
		t.Fatalf("rows of another archive: %d archives, %d chunks, want 1 and 1", n, c)
	}
	if _, got := mustLocalContent(t, b, otherKey); !bytes.Equal(got, other) {
		t.Fatal("another archive's content changed")
	}

	// Missing is not an error; an invalid key is.
	if err := a.Remove(key); err != nil {
		t.Fatalf("remove again: %v", err)
	}
	if err := a.Remove("../x"); jobs.ErrorCode(err) != jobs.EINVALID {
		t.Fatalf("remove of an invalid key: %v, want %s", err, jobs.EINVALID)
	}

	// Uploaded again, it is back.
	if _, _, err := b.Put(ctx, bytes.NewReader(body)); err != nil {
		t.Fatal(err)
	}
	if _, got := mustLocalContent(t, a, key); !bytes.Equal(got, body) {
		t.Fatal("content differs from the upload")
	}
}

// cancelReader reads r and calls cancel once it has read n bytes, or at
// the end of r.
type cancelReader struct {
	r      io.Reader
	n      int64
	cancel context.CancelFunc
}

// Read implements io.Reader.
func (c *cancelReader) Read(p []byte) (int, error) {
	if int64(len(p)) > c.n {
		p = p[:max(c.n, 1)]
	}
	n, err := c.r.Read(p)
	c.n -= int64(n)
	if c.n <= 0 || err != nil {
		c.cancel()
	}
	return n, err
}

func TestDBArchives_FailedPut(t *testing.T) {
	dsn := pgtest.DSN(t)
	conn := mustConnect(t, dsn)
	body := randomBytes(3*mib, 6)
	key := keyOf(body)
	broken := errors.New("connection reset by client")

	for _, tc := range []struct {
		name string
		// put uploads body but fails.
		put     func(a *persistence.DBArchives) error
		wantErr error
	}{
		{"reader fails midway", func(a *persistence.DBArchives) error {
			r := io.MultiReader(bytes.NewReader(body[:3*mib/2]), iotest.ErrReader(broken))
			_, _, err := a.Put(context.Background(), r)
			return err
		}, broken},
		{"canceled while reading", func(a *persistence.DBArchives) error {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			_, _, err := a.Put(ctx, &cancelReader{r: bytes.NewReader(body), n: 3 * mib / 2, cancel: cancel})
			return err
		}, context.Canceled},
		{"canceled once read", func(a *persistence.DBArchives) error {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			_, _, err := a.Put(ctx, &cancelReader{r: bytes.NewReader(body), n: int64(len(body)) + 1, cancel: cancel})
			return err
		}, context.Canceled},
		{"database refuses a chunk", func(a *persistence.DBArchives) error {
			ctx := context.Background()
			if _, err := conn.Exec(ctx, `CREATE FUNCTION refuse_chunk() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF NEW.idx = 2 THEN RAISE EXCEPTION 'chunk 2 refused'; END IF;
	RETURN NEW;
END $$`); err != nil {
				t.Fatal(err)
			}
			if _, err := conn.Exec(ctx, "CREATE TRIGGER refuse BEFORE INSERT ON archive_chunks FOR EACH ROW EXECUTE FUNCTION refuse_chunk()"); err != nil {
				t.Fatal(err)
			}
			defer func() {
				if _, err := conn.Exec(ctx, "DROP TRIGGER refuse ON archive_chunks"); err != nil {
					t.Fatal(err)
				}
			}()
			_, _, err := a.Put(ctx, bytes.NewReader(body))
			return err
		}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, dir := MustOpenDBArchives(t, dsn)
			err := tc.put(a)
			if err == nil {
				t.Fatal("put succeeded")
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Fatalf("put: %v, want %v", err, tc.wantErr)
			}
			if n := count(t, conn, "SELECT count(*) FROM archives"); n != 0 {
				t.Fatalf("%d archives rows, want none", n)
			}
			if n := count(t, conn, "SELECT count(*) FROM archive_chunks"); n != 0 {
				t.Fatalf("%d archive_chunks rows, want none", n)
			}
			if names := dirNames(t, dir); len(names) != 0 {
				t.Fatalf("cache holds %q, want nothing", names)
			}
			if _, err := a.Local(context.Background(), key); jobs.ErrorCode(err) != jobs.ENOTFOUND {
				t.Fatalf("local: %v, want %s", err, jobs.ENOTFOUND)
			}
			// It can be uploaded again.
			if got, _, err := a.Put(context.Background(), bytes.NewReader(body)); err != nil || got != key {
				t.Fatalf("put again: key=%s err=%v, want %s", got, err, key)
			}
			if err := a.Remove(key); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestDBArchives_Corrupt(t *testing.T) {
	ctx := context.Background()
	dsn := pgtest.DSN(t)
	a, _ := MustOpenDBArchives(t, dsn)
	conn := mustConnect(t, dsn)

	for _, tc := range []struct {
		name   string
		damage string // SQL, with the key as $1
	}{
		{"byte changed", "UPDATE archive_chunks SET data = overlay(data placing '\\xff'::bytea from 10 for 1) WHERE key = $1 AND idx = 1"},
		{"chunk missing", "DELETE FROM archive_chunks WHERE key = $1 AND idx = 1"},
		{"last chunk missing", "DELETE FROM archive_chunks WHERE key = $1 AND idx = 2"},
		{"chunk truncated", "UPDATE archive_chunks SET data = substring(data from 1 for 100) WHERE key = $1 AND idx = 2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			body := randomBytes(2*mib+1000, 7)
			body[10] = 0 // so that setting it to 0xff changes it
			key, _, err := a.Put(ctx, bytes.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := conn.Exec(ctx, tc.damage, key); err != nil {
				t.Fatal(err)
			}
			b, dir := MustOpenDBArchives(t, dsn)
			p, err := b.Local(ctx, key)
			if err == nil {
				t.Fatalf("local of a corrupt archive returned %s", p)
			}
			if code := jobs.ErrorCode(err); code == jobs.ENOTFOUND {
				t.Fatalf("local: %v (code %s), want an internal error", err, code)
			}
			t.Logf("local: %v", err)
			if names := dirNames(t, dir); len(names) != 0 {
				t.Fatalf("cache holds %q, want nothing", names)
			}
			if err := a.Remove(key); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// heapSampler records the largest heap in use while it runs.
type heapSampler struct {
	stop, done chan struct{}
	peak       uint64
}

// sampleHeap starts sampling the heap.
func sampleHeap() *heapSampler {
	s := &heapSampler{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			s.peak = max(s.peak, ms.HeapAlloc)
			select {
			case <-s.stop:
				return
			case <-tick.C:
			}
		}
	}()
	return s
}

// Stop stops sampling and returns the peak heap size.
func (s *heapSampler) Stop() uint64 {
	close(s.stop)
	<-s.done
	return s.peak
}

func TestDBArchives_BigArchiveMemory(t *testing.T) {
	const size = 64 * mib
	const maxGrowth = 16 * mib
	ctx := context.Background()
	dsn := pgtest.DSN(t)
	a, _ := MustOpenDBArchives(t, dsn)
	b, _ := MustOpenDBArchives(t, dsn)
	conn := mustConnect(t, dsn)
	content := func() io.Reader { return io.LimitReader(rand.NewChaCha8([32]byte{8}), size) }
	h := sha256.New()
	if _, err := io.Copy(h, content()); err != nil {
		t.Fatal(err)
	}
	wantKey := hex.EncodeToString(h.Sum(nil))

	measure := func(name string, f func()) {
		t.Helper()
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		s := sampleHeap()
		start := time.Now()
		f()
		elapsed := time.Since(start)
		peak := s.Stop()
		runtime.ReadMemStats(&after)
		growth := int64(peak) - int64(before.HeapAlloc)
		t.Logf("%s of %d MiB: %v (%.0f MiB/s), heap growth %.1f MiB at most, %.1f MiB allocated",
			name, size/mib, elapsed.Round(time.Millisecond), float64(size)/mib/elapsed.Seconds(),
			float64(growth)/mib, float64(after.TotalAlloc-before.TotalAlloc)/mib)
		if growth > maxGrowth {
			t.Errorf("%s: heap grew by %d MiB, want less than %d MiB", name, growth/mib, maxGrowth/mib)
		}
	}

	var key string
	measure("put", func() {
		var err error
		var n int64
		key, n, err = a.Put(ctx, content())
		if err != nil {
			t.Fatal(err)
		}
		if key != wantKey || n != size {
			t.Fatalf("key=%s size=%d, want %s and %d", key, n, wantKey, size)
		}
	})
	if n, c := storedCounts(t, conn, key); n != 1 || c != size/mib {
		t.Fatalf("rows: %d archives, %d chunks, want 1 and %d", n, c, size/mib)
	}
	var p string
	measure("local", func() {
		var err error
		if p, err = b.Local(ctx, key); err != nil {
			t.Fatal(err)
		}
	})
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h.Reset()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != key {
		t.Fatalf("fetched file's SHA-256 is %s, want %s", got, key)
	}
}
