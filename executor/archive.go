package executor

import (
	"archive/tar"
	"archive/zip"
	"fmt"
	"io"
	"io/fs"
	"path"
	"strings"
	"time"
)

// tarEntry is one entry of the tar stream made from a project zip: a
// directory (file is nil) or a regular file whose content comes from file.
type tarEntry struct {
	hdr  *tar.Header
	file *zip.File
}

// planTar checks every entry of zr and returns the tar entries it becomes,
// parents first, without reading any file content. It refuses absolute
// paths, ".." elements, backslashes, symlinks, anything that is not a
// regular file or a directory, duplicates and file/directory clashes.
//
// Entries are owned by uid/gid 0; directories get mode 0755, files 0644, or
// 0755 when the zip entry has an executable bit.
func planTar(zr *zip.Reader) ([]tarEntry, error) {
	var (
		entries []tarEntry
		kinds   = make(map[string]bool) // cleaned path -> is a directory
	)
	addDir := func(name string, mtime time.Time) error {
		if isDir, ok := kinds[name]; ok {
			if !isDir {
				return fmt.Errorf("entry %q: both a file and a directory", name)
			}
			return nil
		}
		kinds[name] = true
		entries = append(entries, tarEntry{hdr: &tar.Header{
			Typeflag: tar.TypeDir,
			Name:     name + "/",
			Mode:     0o755,
			ModTime:  mtime,
		}})
		return nil
	}
	// addParents adds the directories above name, outermost first.
	addParents := func(name string, mtime time.Time) error {
		for i := 0; i < len(name); i++ {
			if name[i] == '/' {
				if err := addDir(name[:i], mtime); err != nil {
					return err
				}
			}
		}
		return nil
	}

	for _, f := range zr.File {
		name, err := cleanName(f.Name)
		if err != nil {
			return nil, err
		}
		if name == "" { // the root itself, e.g. "./"
			continue
		}
		mode := f.Mode()
		mtime := f.Modified
		if mtime.IsZero() {
			mtime = time.Unix(0, 0)
		}
		switch {
		case mode&fs.ModeSymlink != 0:
			return nil, fmt.Errorf("entry %q: symlinks are not supported", f.Name)
		case mode.IsDir():
			if err := addParents(name, mtime); err != nil {
				return nil, err
			}
			if err := addDir(name, mtime); err != nil {
				return nil, err
			}
		case mode.IsRegular():
			if _, ok := kinds[name]; ok {
				return nil, fmt.Errorf("entry %q: duplicate path", f.Name)
			}
			if err := addParents(name, mtime); err != nil {
				return nil, err
			}
			kinds[name] = false
			perm := int64(0o644)
			if mode&0o111 != 0 {
				perm = 0o755
			}
			if f.UncompressedSize64 > 1<<62 {
				return nil, fmt.Errorf("entry %q: too large", f.Name)
			}
			entries = append(entries, tarEntry{
				hdr: &tar.Header{
					Typeflag: tar.TypeReg,
					Name:     name,
					Mode:     perm,
					Size:     int64(f.UncompressedSize64),
					ModTime:  mtime,
				},
				file: f,
			})
		default:
			return nil, fmt.Errorf("entry %q: not a regular file or directory", f.Name)
		}
	}
	return entries, nil
}

// cleanName returns the cleaned, relative form of a zip entry name, "" for
// the root, or an error if the name could point outside the root.
func cleanName(name string) (string, error) {
	switch {
	case name == "":
		return "", fmt.Errorf("entry with an empty name")
	case strings.HasPrefix(name, "/"):
		return "", fmt.Errorf("entry %q: absolute paths are not allowed", name)
	case strings.Contains(name, `\`):
		return "", fmt.Errorf("entry %q: backslashes are not allowed in paths", name)
	}
	for _, elem := range strings.Split(name, "/") {
		if elem == ".." {
			return "", fmt.Errorf("entry %q: \"..\" is not allowed in paths", name)
		}
	}
	clean := path.Clean(name)
	if clean == "." {
		return "", nil
	}
	return clean, nil
}

// writeTar writes entries to w as a tar stream owned by root, reading file
// contents from the zip. A corrupt zip entry (bad checksum, wrong size) is
// an error.
func writeTar(w io.Writer, entries []tarEntry) error {
	return writeTarAs(w, entries, 0, 0)
}

// writeTarAs is writeTar with every entry owned by uid:gid.
func writeTarAs(w io.Writer, entries []tarEntry, uid, gid int) error {
	tw := tar.NewWriter(w)
	if err := writeEntries(tw, entries, uid, gid); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("finish tar: %w", err)
	}
	return nil
}

// writeEntries writes entries to tw, owned by uid:gid.
func writeEntries(tw *tar.Writer, entries []tarEntry, uid, gid int) error {
	for _, e := range entries {
		hdr := e.hdr
		if uid != 0 || gid != 0 {
			h := *e.hdr
			h.Uid, h.Gid = uid, gid
			hdr = &h
		}
		// Names are left empty: only the numeric owner counts.
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("write %q: %w", e.hdr.Name, err)
		}
		if e.file == nil {
			continue
		}
		if err := copyEntry(tw, e.file); err != nil {
			return fmt.Errorf("entry %q: %w", e.file.Name, err)
		}
	}
	return nil
}

func copyEntry(tw *tar.Writer, f *zip.File) error {
	rc, err := f.Open()
	if err != nil {
		return err
	}
	defer rc.Close()
	_, err = io.Copy(tw, rc)
	return err
}

// zipToTar converts the project zip zr into a tar stream written to w,
// following the rules of planTar. It checks every entry before writing
// anything.
func zipToTar(w io.Writer, zr *zip.Reader) error {
	entries, err := planTar(zr)
	if err != nil {
		return err
	}
	return writeTar(w, entries)
}
