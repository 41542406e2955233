package executor

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"
)

// RequirementsFile is the file, at the root of a project, that lists the
// dependencies Run installs before the tests.
const RequirementsFile = "requirements.txt"

// maxRequirements bounds the size of a requirements file (and of each one
// it includes) that Run reads to compute the cache key.
const maxRequirements = 1 << 20

// depsKeyVersion changes whenever what an install puts in the volume
// changes (the venv's path, how it is made): keys of older installs then
// no longer match.
const depsKeyVersion = "ci-deps/v1"

// findRequirements returns the RequirementsFile entry among entries, or nil
// if the project has none.
func findRequirements(entries []tarEntry) *tarEntry {
	for i := range entries {
		if entries[i].file != nil && entries[i].hdr.Name == RequirementsFile {
			return &entries[i]
		}
	}
	return nil
}

// depsKey returns the cache key of the dependencies that the project of
// entries installs from its RequirementsFile req into image imageID: a hex
// SHA-256 of the image ID, the requirements and every project file the
// requirements name (see localFiles), so that changing a local wheel, a
// constraints file or an included requirements file installs again.
func depsKey(entries []tarEntry, req *tarEntry, imageID string) (string, error) {
	files, err := localFiles(entries, req)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	fmt.Fprintf(h, "%s\n%s\n", depsKeyVersion, imageID)
	for _, e := range files {
		// The name and size delimit the content: no two different file
		// lists hash the same stream.
		fmt.Fprintf(h, "%s\x00%d\x00", e.hdr.Name, e.hdr.Size)
		rc, err := e.file.Open()
		if err != nil {
			return "", fmt.Errorf("project archive: %s: %w", e.hdr.Name, err)
		}
		_, err = io.Copy(h, rc)
		rc.Close()
		if err != nil {
			return "", fmt.Errorf("project archive: %s: %w", e.hdr.Name, err)
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// localFiles returns the project files the install of req depends on, in
// a stable order: req itself, and every file that a token of a
// requirements line names (a local wheel or sdist, a constraints or an
// included requirements file, read in turn, a --find-links directory, a
// local package's directory), relative to the project's root or to the
// requirements file naming it. The project's root itself (as in "-e .")
// counts only with its packaging files (pyproject.toml, setup.py,
// setup.cfg): an editable install follows the code anyway, and the key
// must not change with every edit of the code.
func localFiles(entries []tarEntry, req *tarEntry) ([]*tarEntry, error) {
	byName := make(map[string]*tarEntry, len(entries))
	for i := range entries {
		e := &entries[i]
		byName[strings.TrimSuffix(e.hdr.Name, "/")] = e
	}
	picked := map[string]*tarEntry{}
	var addFile func(e *tarEntry) error
	addPath := func(name, dir string) error {
		for _, p := range []string{path.Join(dir, name), path.Clean(name)} {
			if p == "." {
				for _, f := range []string{"pyproject.toml", "setup.py", "setup.cfg"} {
					if e := byName[f]; e != nil && e.file != nil {
						picked[f] = e
					}
				}
				return nil
			}
			e := byName[p]
			if e == nil {
				continue
			}
			if e.file != nil {
				return addFile(e)
			}
			prefix := p + "/"
			for i := range entries {
				if f := &entries[i]; f.file != nil && strings.HasPrefix(f.hdr.Name, prefix) {
					picked[f.hdr.Name] = f
				}
			}
			return nil
		}
		return nil
	}
	addFile = func(e *tarEntry) error {
		if picked[e.hdr.Name] != nil {
			return nil
		}
		picked[e.hdr.Name] = e
		if !isRequirementsLike(e.hdr.Name) {
			return nil
		}
		b, err := readEntry(e, maxRequirements)
		if err != nil {
			return err
		}
		for _, tok := range requirementTokens(string(b)) {
			if err := addPath(tok, path.Dir(e.hdr.Name)); err != nil {
				return err
			}
		}
		return nil
	}
	if err := addFile(req); err != nil {
		return nil, err
	}
	names := make([]string, 0, len(picked))
	for name := range picked {
		names = append(names, name)
	}
	sort.Strings(names)
	files := make([]*tarEntry, len(names))
	for i, name := range names {
		files[i] = picked[name]
	}
	return files, nil
}

// isRequirementsLike reports whether a file named by a requirements file
// is itself one to read for more names: a text file, not an archive.
func isRequirementsLike(name string) bool {
	return strings.HasSuffix(name, ".txt") || strings.HasSuffix(name, ".in")
}

// requirementTokens returns the tokens of a requirements file's text that
// could name a local path: each whitespace-separated word of a line, with
// comments, line continuations, an option's "--name=" prefix, a "file:"
// scheme and a URL fragment (#egg=...) taken off. Tokens that name nothing
// in the project are ignored by the caller, so over-reporting is harmless.
func requirementTokens(text string) []string {
	text = strings.ReplaceAll(text, "\\\r\n", " ")
	text = strings.ReplaceAll(text, "\\\n", " ")
	var toks []string
	for _, line := range strings.Split(text, "\n") {
		if i := strings.Index(line, "#"); i == 0 || i > 0 && (line[i-1] == ' ' || line[i-1] == '\t') {
			line = line[:i] // a comment; a '#' inside a word is a URL fragment
		}
		for _, tok := range strings.Fields(line) {
			if strings.HasPrefix(tok, "-") {
				_, v, ok := strings.Cut(tok, "=")
				if !ok {
					continue // an option; its value is the next token
				}
				tok = v
			}
			tok = strings.TrimPrefix(tok, "file://")
			tok = strings.TrimPrefix(tok, "file:")
			if i := strings.IndexByte(tok, '#'); i >= 0 {
				tok = tok[:i]
			}
			tok = strings.TrimPrefix(tok, "/workspace/")
			if tok == "" || strings.HasPrefix(tok, "/") || strings.Contains(tok, "://") {
				continue
			}
			toks = append(toks, tok)
		}
	}
	return toks
}

// readEntry reads the content of the file entry e, at most max bytes.
func readEntry(e *tarEntry, max int64) ([]byte, error) {
	if e.hdr.Size > max {
		return nil, fmt.Errorf("%s is larger than %d bytes", e.hdr.Name, max)
	}
	rc, err := e.file.Open()
	if err != nil {
		return nil, fmt.Errorf("project archive: %s: %w", e.hdr.Name, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, max+1))
	if err != nil {
		return nil, fmt.Errorf("project archive: %s: %w", e.hdr.Name, err)
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%s is larger than %d bytes", e.hdr.Name, max)
	}
	return b, nil
}
