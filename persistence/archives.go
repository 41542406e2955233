package persistence

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
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
	f, err := os.CreateTemp(a.dir, tempPattern)
	if err != nil {
		return "", 0, fmt.Errorf("put archive: %w", err)
	}
	tmp := f.Name()
	defer func() {
		if f != nil {
			f.Close()
		}
		if err != nil {
			os.Remove(tmp)
		}
	}()

	h := sha256.New()
	size, err = io.Copy(io.MultiWriter(f, h), &ctxReader{ctx: ctx, r: r})
	if err != nil {
		return "", 0, fmt.Errorf("put archive: %w", err)
	}
	if err = f.Sync(); err != nil {
		return "", 0, fmt.Errorf("put archive: %w", err)
	}
	err = f.Close()
	f = nil
	if err != nil {
		return "", 0, fmt.Errorf("put archive: %w", err)
	}
	key = hex.EncodeToString(h.Sum(nil))
	dst := a.Path(key)
	if _, serr := os.Stat(dst); serr == nil {
		// Same content already stored.
		os.Remove(tmp)
		return key, size, nil
	}
	if err = os.Rename(tmp, dst); err != nil {
		return "", 0, fmt.Errorf("put archive: %w", err)
	}
	if err = syncDir(a.dir); err != nil {
		return "", 0, fmt.Errorf("put archive: %w", err)
	}
	return key, size, nil
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
