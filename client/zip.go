package client

import (
	"archive/zip"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/go-git/go-git/v5/plumbing/format/gitignore"
)

// ZipProject writes a zip of the project in dir to w and returns the number
// of files in it. It leaves out dot-entries (files and directories whose
// name starts with "."), __pycache__ directories, and whatever the
// project's .gitignore files ignore (the root one and nested ones, with
// git's semantics, including negation and directory-only patterns; as in
// git, nothing inside an ignored directory can be re-included). Symlinks and
// other non-regular files are skipped, never followed.
//
// Entries are slash-separated paths relative to dir, in a deterministic
// order (depth-first, by name), and keep their permission bits (the
// executable bit in particular). Directories are not stored as entries.
// On error, w holds an incomplete zip.
func ZipProject(ctx context.Context, dir string, w io.Writer) (files int, err error) {
	z := &zipper{ctx: ctx, root: dir, zw: zip.NewWriter(w)}
	if err := z.walk(nil, nil); err != nil {
		return z.files, fmt.Errorf("zip %s: %w", dir, err)
	}
	if err := z.zw.Close(); err != nil {
		return z.files, fmt.Errorf("zip %s: %w", dir, err)
	}
	return z.files, nil
}

type zipper struct {
	ctx   context.Context
	root  string
	zw    *zip.Writer
	files int
}

// walk adds the directory at the relative path rel, whose ancestors'
// .gitignore patterns are ps (in increasing priority).
func (z *zipper) walk(rel []string, ps []gitignore.Pattern) error {
	abs := filepath.Join(append([]string{z.root}, rel...)...)
	own, err := readIgnoreFile(filepath.Join(abs, ".gitignore"), rel)
	if err != nil {
		return err
	}
	// Clip ps so that sibling directories never share appended patterns.
	ps = append(ps[:len(ps):len(ps)], own...)
	m := gitignore.NewMatcher(ps)

	entries, err := os.ReadDir(abs) // sorted by name
	if err != nil {
		return err
	}
	for _, e := range entries {
		if err := z.ctx.Err(); err != nil {
			return err
		}
		name := e.Name()
		if strings.HasPrefix(name, ".") {
			continue
		}
		isDir := e.IsDir() // false for a symlink to a directory
		if isDir && name == "__pycache__" {
			continue
		}
		if !isDir && !e.Type().IsRegular() {
			continue // symlink, socket, device, ...
		}
		p := append(rel[:len(rel):len(rel)], name)
		if m.Match(p, isDir) {
			continue
		}
		if isDir {
			err = z.walk(p, ps)
		} else {
			err = z.add(p)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// add writes the regular file at the relative path p.
func (z *zipper) add(p []string) error {
	name := strings.Join(p, "/")
	f, err := os.Open(filepath.Join(append([]string{z.root}, p...)...))
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return nil // replaced since it was listed
	}
	h, err := zip.FileInfoHeader(fi)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	h.Name = name
	h.Method = zip.Deflate
	fw, err := z.zw.CreateHeader(h)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	if _, err := io.Copy(fw, f); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	z.files++
	return nil
}

// readIgnoreFile parses the .gitignore at path, for the directory at the
// relative path domain. A missing file, or one that is not a regular file
// (git does not follow a symlinked .gitignore), has no patterns.
func readIgnoreFile(path string, domain []string) ([]gitignore.Pattern, error) {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) || (err == nil && !fi.Mode().IsRegular()) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var ps []gitignore.Pattern
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSuffix(line, "\r")
		if strings.HasPrefix(line, "#") || strings.TrimSpace(line) == "" {
			continue
		}
		ps = append(ps, gitignore.ParsePattern(line, domain))
	}
	return ps, nil
}
