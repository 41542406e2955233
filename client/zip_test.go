package client_test

import (
	"archive/zip"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"ci/client"
)

// writeTree creates files under dir. A value starting with "->" makes a
// symlink to the rest; a key ending in "/" makes an empty directory.
func writeTree(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if strings.HasSuffix(name, "/") {
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		var err error
		if target, ok := strings.CutPrefix(content, "->"); ok {
			err = os.Symlink(target, p)
		} else {
			err = os.WriteFile(p, []byte(content), 0o644)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

func zipNames(t *testing.T, dir string) ([]string, *zip.Reader) {
	t.Helper()
	var buf bytes.Buffer
	n, err := client.ZipProject(context.Background(), dir, &buf)
	if err != nil {
		t.Fatalf("ZipProject: %v", err)
	}
	zr, err := zip.NewReader(bytes.NewReader(buf.Bytes()), int64(buf.Len()))
	if err != nil {
		t.Fatalf("read zip: %v", err)
	}
	names := []string{}
	for _, f := range zr.File {
		names = append(names, f.Name)
	}
	if n != len(names) {
		t.Fatalf("ZipProject counted %d files, zip has %d", n, len(names))
	}
	return names, zr
}

func TestZipProject(t *testing.T) {
	tests := []struct {
		name  string
		files map[string]string
		want  []string
	}{
		{
			name: "dot entries and pycache",
			files: map[string]string{
				"test_a.py": "", ".env": "", ".git/config": "", ".venv/lib/x.py": "",
				"pkg/.hidden": "", "pkg/__init__.py": "", "pkg/__pycache__/m.pyc": "",
				"__pycache__/x.pyc": "", "pkg/.cache/y": "",
			},
			want: []string{"pkg/__init__.py", "test_a.py"},
		},
		{
			name: "root gitignore: globs, anchored, dir-only, comments",
			files: map[string]string{
				".gitignore": "# comment\n\n*.log\nbuild/\n/dist\nout/\r\n",
				"a.py":       "", "x.log": "", "sub/y.log": "",
				"build/b.py": "", "sub/build/c.py": "",
				"dist/d.py": "", "sub/dist/e.py": "",
				"out": "", "sub/out/f.py": "",
			},
			want: []string{"a.py", "out", "sub/dist/e.py"},
		},
		{
			name: "negation",
			files: map[string]string{
				".gitignore": "*.log\n!keep.log\n",
				"a.log":      "", "keep.log": "", "sub/keep.log": "", "sub/b.log": "",
			},
			want: []string{"keep.log", "sub/keep.log"},
		},
		{
			name: "nested gitignore applies below its dir only",
			files: map[string]string{
				"sub/.gitignore": "*.tmp\n/local.py\n",
				"a.tmp":          "", "local.py": "",
				"sub/b.tmp": "", "sub/local.py": "", "sub/deep/c.tmp": "", "sub/deep/local.py": "",
			},
			want: []string{"a.tmp", "local.py", "sub/deep/local.py"},
		},
		{
			name: "nested negation overrides root",
			files: map[string]string{
				".gitignore":     "*.txt\n",
				"sub/.gitignore": "!notes.txt\n",
				"a.txt":          "", "notes.txt": "", "sub/notes.txt": "", "sub/other.txt": "",
			},
			want: []string{"sub/notes.txt"},
		},
		{
			name: "no re-include inside an ignored dir",
			files: map[string]string{
				".gitignore":    "build/\n!build/keep.py\n",
				"build/keep.py": "", "build/.gitignore": "!*\n", "main.py": "",
			},
			want: []string{"main.py"},
		},
		{
			name: "double star",
			files: map[string]string{
				".gitignore":     "**/fixtures/*.bin\ndocs/**\n",
				"fixtures/a.bin": "", "t/fixtures/b.bin": "", "t/fixtures/c.py": "", "docs/x/y.md": "", "d.py": "",
			},
			want: []string{"d.py", "t/fixtures/c.py"},
		},
		{
			name: "symlinks skipped",
			files: map[string]string{
				"real.py": "", "link.py": "->real.py", "linkdir": "->pkg", "pkg/m.py": "",
				"dangling": "->nowhere", "outside": "->/etc",
			},
			want: []string{"pkg/m.py", "real.py"},
		},
		{
			name:  "empty dirs are not entries",
			files: map[string]string{"empty/": "", "a.py": ""},
			want:  []string{"a.py"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			writeTree(t, dir, tt.files)
			got, _ := zipNames(t, dir)
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("zip has %q, want %q", got, tt.want)
			}
		})
	}
}

func TestZipProjectContentModeAndOrder(t *testing.T) {
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{
		"b.py": "print('b')\n", "a/z.py": "z", "a/m.py": "m", "a.py": "a", "run.sh": "#!/bin/sh\n",
	})
	if err := os.Chmod(filepath.Join(dir, "run.sh"), 0o755); err != nil {
		t.Fatal(err)
	}
	names, zr := zipNames(t, dir)
	if want := []string{"a/m.py", "a/z.py", "a.py", "b.py", "run.sh"}; !reflect.DeepEqual(names, want) {
		t.Fatalf("order %q, want %q", names, want)
	}
	again, _ := zipNames(t, dir)
	if !reflect.DeepEqual(names, again) {
		t.Fatalf("second zip order %q, first %q", again, names)
	}
	for _, f := range zr.File {
		wantMode := os.FileMode(0o644)
		if f.Name == "run.sh" {
			wantMode = 0o755
		}
		if got := f.Mode(); got != wantMode {
			t.Errorf("%s mode %v, want %v", f.Name, got, wantMode)
		}
		if f.Name == "b.py" {
			rc, _ := f.Open()
			var b bytes.Buffer
			b.ReadFrom(rc)
			rc.Close()
			if b.String() != "print('b')\n" {
				t.Errorf("b.py content %q", b.String())
			}
		}
	}
}

func TestZipProjectErrors(t *testing.T) {
	if _, err := client.ZipProject(context.Background(), filepath.Join(t.TempDir(), "missing"), &bytes.Buffer{}); err == nil {
		t.Fatal("no error for a missing dir")
	}
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{"a.py": ""})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := client.ZipProject(ctx, dir, &bytes.Buffer{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
}
