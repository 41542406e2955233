package persistence

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"ci/jobs"
)

var _ jobs.Archives = (*Archives)(nil)

const (
	// tempPattern names the temporary files of uploads in progress.
	tempPattern = ".upload-*.tmp"
	// staleTemp is the age after which NewArchives removes a temporary
	// file left behind by a crashed process.
	staleTemp = time.Hour
)

// Archives is a jobs.Archives that keeps each archive as a file named
// <sha256 of its content>.zip in one directory. It is safe for concurrent
// use.
type Archives struct {
	dir string
}

// NewArchives returns the Archives kept in dir, creating dir if needed. It
// removes temporary files older than an hour, left behind by a process that
// crashed during an upload.
func NewArchives(dir string) (*Archives, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("archives: %w", err)
	}
	temps, err := filepath.Glob(filepath.Join(dir, tempPattern))
	if err != nil {
		return nil, fmt.Errorf("archives: %w", err)
	}
	for _, name := range temps {
		if fi, err := os.Stat(name); err == nil && time.Since(fi.ModTime()) > staleTemp {
			os.Remove(name)
		}
	}
	return &Archives{dir: dir}, nil
}

// Put streams r to its end into a temporary file while hashing it, syncs
// the file and renames it to its content-addressed name, so an archive is
// either complete or absent. The key is the hex SHA-256 of the content.
// When reading r fails or ctx is canceled, Put removes what it wrote and
// returns the error, wrapping r's.
func (a *Archives) Put(ctx context.Context, r io.Reader) (key string, size int64, err error) {
	t, err := newHashedTemp(a.dir)
	if err != nil {
		return "", 0, fmt.Errorf("put archive: %w", err)
	}
	defer t.discard()
	size, err = io.Copy(t, &ctxReader{ctx: ctx, r: r})
	if err != nil {
		return "", 0, fmt.Errorf("put archive: %w", err)
	}
	key = t.key()
	dst := a.Path(key)
	if _, serr := os.Stat(dst); serr == nil {
		return key, size, nil // same content already stored
	}
	if err = t.commit(dst); err != nil {
		return "", 0, fmt.Errorf("put archive: %w", err)
	}
	if err = syncDir(a.dir); err != nil {
		return "", 0, fmt.Errorf("put archive: %w", err)
	}
	return key, size, nil
}

// hashedTemp is an archive being written: a temporary file in the
// directory of archives, hashed as it is written, which becomes the
// archive's file only by commit. Until then discard removes it.
type hashedTemp struct {
	f    *os.File
	h    hash.Hash
	path string
	done bool // committed or discarded
}

// newHashedTemp creates a temporary file in dir.
func newHashedTemp(dir string) (*hashedTemp, error) {
	f, err := os.CreateTemp(dir, tempPattern)
	if err != nil {
		return nil, err
	}
	return &hashedTemp{f: f, h: sha256.New(), path: f.Name()}, nil
}

// Write writes p to the file and the hash.
func (t *hashedTemp) Write(p []byte) (int, error) {
	n, err := t.f.Write(p)
	t.h.Write(p[:n])
	return n, err
}

// key returns the archive key of what was written: its hex SHA-256.
func (t *hashedTemp) key() string { return hex.EncodeToString(t.h.Sum(nil)) }

// commit syncs the file and renames it to dst, so that dst is either
// complete or absent, even after a crash.
func (t *hashedTemp) commit(dst string) error {
	err := t.f.Sync()
	if cerr := t.f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(t.path, dst)
	}
	if err != nil {
		os.Remove(t.path)
	}
	t.done = true
	return err
}

// discard removes the file unless it was committed; it may be deferred.
func (t *hashedTemp) discard() {
	if t.done {
		return
	}
	t.done = true
	t.f.Close()
	os.Remove(t.path)
}

// Path returns the path of the archive with the given key, or "" if key is
// not a valid key (Put never returns such a key).
func (a *Archives) Path(key string) string {
	if !validKey(key) {
		return ""
	}
	return filepath.Join(a.dir, key+".zip")
}

// Local implements jobs.Archives: the archive's file is local already. A
// missing archive or an invalid key is an ENOTFOUND error.
func (a *Archives) Local(_ context.Context, key string) (string, error) {
	p := a.Path(key)
	if p == "" {
		return "", jobs.Errorf(jobs.ENOTFOUND, "archive %q not found (invalid key)", key)
	}
	if _, err := os.Stat(p); err != nil {
		if os.IsNotExist(err) {
			return "", jobs.Errorf(jobs.ENOTFOUND, "archive %s not found in %s", key, a.dir)
		}
		return "", fmt.Errorf("archive %s: %w", key, err)
	}
	return p, nil
}

// Remove deletes the archive with the given key. Removing a missing archive
// is not an error; an invalid key is an EINVALID error.
func (a *Archives) Remove(key string) error {
	if !validKey(key) {
		return fmt.Errorf("remove archive: %w", jobs.Errorf(jobs.EINVALID, "invalid archive key %q", key))
	}
	if err := os.Remove(a.Path(key)); err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("remove archive: %w", err)
	}
	return nil
}

// validKey reports whether key is a lowercase hex SHA-256, and so names a
// file inside the archive directory.
func validKey(key string) bool {
	if len(key) != 2*sha256.Size {
		return false
	}
	return strings.Trim(key, "0123456789abcdef") == ""
}

// syncDir fsyncs a directory, making a rename in it durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if errors.Is(err, syscall.EINVAL) {
		// Some file systems can't sync a directory.
		return nil
	}
	return err
}

// ctxReader is a reader that fails once its context is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

// Read implements io.Reader.
func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
