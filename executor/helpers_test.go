package executor

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// zipEntry is one entry of a test zip. A Name ending in "/" is a
// directory; Mode, when set, is stored in the entry.
type zipEntry struct {
	Name string
	Body string
	Mode fs.FileMode
}

// zipBytes returns a zip holding entries, in order, stored uncompressed
// (so tests can corrupt contents in place).
func zipBytes(tb testing.TB, entries []zipEntry) []byte {
	tb.Helper()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for _, e := range entries {
		h := &zip.FileHeader{Name: e.Name, Method: zip.Store, Modified: time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)}
		if e.Mode != 0 {
			h.SetMode(e.Mode)
		}
		w, err := zw.CreateHeader(h)
		if err != nil {
			tb.Fatalf("zip %q: %v", e.Name, err)
		}
		if _, err := io.WriteString(w, e.Body); err != nil {
			tb.Fatalf("zip %q: %v", e.Name, err)
		}
	}
	if err := zw.Close(); err != nil {
		tb.Fatalf("zip: %v", err)
	}
	return buf.Bytes()
}

// writeFile writes b to a new file in a temporary directory and returns
// its path.
func writeFile(tb testing.TB, b []byte) string {
	tb.Helper()
	p := filepath.Join(tb.TempDir(), "project.zip")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		tb.Fatal(err)
	}
	return p
}

// projectZip writes a zip of files (path -> content) and returns its path.
func projectZip(tb testing.TB, files map[string]string) string {
	tb.Helper()
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	var entries []zipEntry
	for _, n := range names {
		entries = append(entries, zipEntry{Name: n, Body: files[n]})
	}
	return writeFile(tb, zipBytes(tb, entries))
}

// chunk is one Write received by a recorder.
type chunk struct {
	stream string
	text   string
	at     time.Time
}

// recorder is a jobs.Output that keeps every chunk with its arrival time
// and lets tests wait for some text to arrive.
type recorder struct {
	// first, if set, is called on the first Write, before it is recorded.
	first func()

	mu      sync.Mutex
	chunks  []chunk
	waiters []waiter
}

type waiter struct {
	stream, substr string
	ch             chan struct{}
}

func (r *recorder) Write(stream string, p []byte) error {
	r.mu.Lock()
	first := r.first
	r.first = nil
	r.mu.Unlock()
	if first != nil {
		first()
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	r.chunks = append(r.chunks, chunk{stream: stream, text: string(p), at: time.Now()})
	kept := r.waiters[:0]
	for _, w := range r.waiters {
		if w.stream == stream && strings.Contains(r.textLocked(stream), w.substr) {
			close(w.ch)
			continue
		}
		kept = append(kept, w)
	}
	r.waiters = kept
	return nil
}

// phaseStream is the stream of the chunks that stand for phases: their
// text is the phase's name.
const phaseStream = "phase"

// Phase records the phase as a chunk of phaseStream.
func (r *recorder) Phase(name string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.chunks = append(r.chunks, chunk{stream: phaseStream, text: name, at: time.Now()})
	return nil
}

// phases returns the phases announced, in order.
func (r *recorder) phases() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var names []string
	for _, c := range r.chunks {
		if c.stream == phaseStream {
			names = append(names, c.text)
		}
	}
	return names
}

// phaseText returns what stream received during phase ("" for before
// any phase).
func (r *recorder) phaseText(phase, stream string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var b strings.Builder
	cur := ""
	for _, c := range r.chunks {
		switch {
		case c.stream == phaseStream:
			cur = c.text
		case c.stream == stream && cur == phase:
			b.WriteString(c.text)
		}
	}
	return b.String()
}

// waitFor returns a channel closed once substr has arrived on stream.
func (r *recorder) waitFor(stream, substr string) <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	ch := make(chan struct{})
	if strings.Contains(r.textLocked(stream), substr) {
		close(ch)
		return ch
	}
	r.waiters = append(r.waiters, waiter{stream: stream, substr: substr, ch: ch})
	return ch
}

// text returns everything received on stream.
func (r *recorder) text(stream string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.textLocked(stream)
}

func (r *recorder) textLocked(stream string) string {
	var b strings.Builder
	for _, c := range r.chunks {
		if c.stream == stream {
			b.WriteString(c.text)
		}
	}
	return b.String()
}

// seen returns when substr was complete on stream for the first time, and
// which chunk completed it.
func (r *recorder) seen(stream, substr string) (at time.Time, index int, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var b strings.Builder
	for i, c := range r.chunks {
		if c.stream != stream {
			continue
		}
		b.WriteString(c.text)
		if strings.Contains(b.String(), substr) {
			return c.at, i, true
		}
	}
	return time.Time{}, -1, false
}

// tarItem is one entry read back from a tar stream.
type tarItem struct {
	Name     string
	Typeflag byte
	Mode     int64
	UID, GID int
	Size     int64
	Body     string
}

func readTar(tb testing.TB, b []byte) []tarItem {
	tb.Helper()
	var items []tarItem
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return items
		}
		if err != nil {
			tb.Fatalf("read tar: %v", err)
		}
		body, err := io.ReadAll(tr)
		if err != nil {
			tb.Fatalf("read tar %q: %v", h.Name, err)
		}
		items = append(items, tarItem{
			Name: h.Name, Typeflag: h.Typeflag, Mode: h.Mode,
			UID: h.Uid, GID: h.Gid, Size: h.Size, Body: string(body),
		})
	}
}
