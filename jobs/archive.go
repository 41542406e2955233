package jobs

import (
	"archive/zip"
	"context"
	"errors"
	"io"
	"io/fs"
	"strings"
)

// Default limits on an uploaded archive.
const (
	DefaultMaxFiles    = 100_000
	DefaultMaxUnpacked = 1 << 30 // 1 GiB
)

// validateZip checks that the file at p is a zip archive that is safe to
// unpack: at most maxFiles entries, only regular files and directories with
// safe relative paths, and at most maxUnpacked bytes once unpacked. The
// sizes an archive declares are not trusted: every entry is decompressed
// and counted (which also checks its CRC), stopping as soon as the limit is
// passed, so a zip bomb costs at most maxUnpacked bytes of work.
func validateZip(ctx context.Context, p string, maxFiles int, maxUnpacked int64) error {
	zr, err := zip.OpenReader(p)
	if err != nil {
		return Errorf(EINVALID, "upload is not a valid zip archive: %v", err)
	}
	defer zr.Close()
	if n := len(zr.File); n > maxFiles {
		return Errorf(EINVALID, "archive holds %d entries, more than the limit of %d", n, maxFiles)
	}
	for _, f := range zr.File {
		name := f.Name
		if name == "" || strings.HasPrefix(name, "/") || strings.Contains(name, "\\") || hasDotDot(name) {
			return Errorf(EINVALID, "archive entry %q is not a safe relative path", name)
		}
		mode := f.Mode()
		if mode&fs.ModeSymlink != 0 {
			return Errorf(EINVALID, "archive entry %q is a symbolic link; links are not allowed", name)
		}
		if !mode.IsRegular() && !mode.IsDir() {
			return Errorf(EINVALID, "archive entry %q is not a regular file or directory", name)
		}
	}
	remaining := maxUnpacked
	for _, f := range zr.File {
		if err := ctx.Err(); err != nil {
			return err
		}
		// Directories too: every entry must be readable, headers included.
		n, err := unpackedSize(f, remaining)
		if err != nil {
			return err
		}
		remaining -= n
		if remaining < 0 {
			return Errorf(EINVALID, "archive unpacks to more than the limit of %s", formatBytes(maxUnpacked))
		}
	}
	return nil
}

// unpackedSize decompresses f and returns its real size, reading at most
// limit+1 bytes.
func unpackedSize(f *zip.File, limit int64) (int64, error) {
	rc, err := f.Open()
	if err != nil {
		return 0, Errorf(EINVALID, "archive entry %q can't be read: %v", f.Name, err)
	}
	defer rc.Close()
	n, err := io.Copy(io.Discard, io.LimitReader(rc, limit+1))
	if err != nil && !errors.Is(err, io.EOF) {
		return 0, Errorf(EINVALID, "archive entry %q is damaged: %v", f.Name, err)
	}
	return n, nil
}

func hasDotDot(name string) bool {
	for _, part := range strings.Split(name, "/") {
		if part == ".." {
			return true
		}
	}
	return false
}
