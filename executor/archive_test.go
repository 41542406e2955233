package executor

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"io/fs"
	"reflect"
	"strings"
	"testing"
)

func TestZipToTar(t *testing.T) {
	dir := func(name string) tarItem {
		return tarItem{Name: name, Typeflag: tar.TypeDir, Mode: 0o755}
	}
	file := func(name, body string, mode int64) tarItem {
		return tarItem{Name: name, Typeflag: tar.TypeReg, Mode: mode, Size: int64(len(body)), Body: body}
	}
	tests := []struct {
		name    string
		entries []zipEntry
		want    []tarItem
		wantErr string
	}{
		{
			name: "empty",
		},
		{
			name:    "one file",
			entries: []zipEntry{{Name: "test_a.py", Body: "def test_a(): pass\n"}},
			want:    []tarItem{file("test_a.py", "def test_a(): pass\n", 0o644)},
		},
		{
			name:    "parents emitted",
			entries: []zipEntry{{Name: "src/pkg/mod.py", Body: "x = 1\n"}},
			want:    []tarItem{dir("src/"), dir("src/pkg/"), file("src/pkg/mod.py", "x = 1\n", 0o644)},
		},
		{
			name: "explicit directories once",
			entries: []zipEntry{
				{Name: "tests/"},
				{Name: "tests/a.py", Body: "a"},
				{Name: "tests/sub/"},
				{Name: "tests/"},
				{Name: "tests/sub/b.py", Body: "b"},
			},
			want: []tarItem{dir("tests/"), file("tests/a.py", "a", 0o644), dir("tests/sub/"), file("tests/sub/b.py", "b", 0o644)},
		},
		{
			name: "modes normalized, executable bit kept",
			entries: []zipEntry{
				{Name: "run.sh", Body: "#!/bin/sh\n", Mode: 0o700},
				{Name: "secret.txt", Body: "s", Mode: 0o600},
				{Name: "open.txt", Body: "o", Mode: 0o666},
				{Name: "odd.sh", Body: "x", Mode: 0o641},
				{Name: "d/", Mode: fs.ModeDir | 0o700},
			},
			want: []tarItem{
				file("run.sh", "#!/bin/sh\n", 0o755),
				file("secret.txt", "s", 0o644),
				file("open.txt", "o", 0o644),
				file("odd.sh", "x", 0o755),
				dir("d/"),
			},
		},
		{
			name: "paths cleaned",
			entries: []zipEntry{
				{Name: "./a.py", Body: "a"},
				{Name: "b//c/./d.py", Body: "d"},
				{Name: "./"},
			},
			want: []tarItem{file("a.py", "a", 0o644), dir("b/"), dir("b/c/"), file("b/c/d.py", "d", 0o644)},
		},
		{
			name:    "absolute path",
			entries: []zipEntry{{Name: "/etc/passwd", Body: "x"}},
			wantErr: "absolute",
		},
		{
			name:    "dot-dot",
			entries: []zipEntry{{Name: "../evil.py", Body: "x"}},
			wantErr: `".."`,
		},
		{
			name:    "dot-dot inside",
			entries: []zipEntry{{Name: "a/../../evil.py", Body: "x"}},
			wantErr: `".."`,
		},
		{
			name:    "dot-dot that stays inside is refused too",
			entries: []zipEntry{{Name: "a/../b.py", Body: "x"}},
			wantErr: `".."`,
		},
		{
			name:    "backslash",
			entries: []zipEntry{{Name: `..\evil.py`, Body: "x"}},
			wantErr: "backslash",
		},
		{
			name:    "symlink",
			entries: []zipEntry{{Name: "link", Body: "/etc/passwd", Mode: fs.ModeSymlink | 0o777}},
			wantErr: "symlink",
		},
		{
			name:    "named pipe",
			entries: []zipEntry{{Name: "fifo", Mode: fs.ModeNamedPipe | 0o644}},
			wantErr: "not a regular file",
		},
		{
			name:    "duplicate file",
			entries: []zipEntry{{Name: "a.py", Body: "1"}, {Name: "./a.py", Body: "2"}},
			wantErr: "duplicate",
		},
		{
			name:    "file then directory",
			entries: []zipEntry{{Name: "a", Body: "1"}, {Name: "a/b.py", Body: "2"}},
			wantErr: "both a file and a directory",
		},
		{
			name:    "directory then file",
			entries: []zipEntry{{Name: "a/"}, {Name: "a", Body: "2"}},
			wantErr: "duplicate",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := zipBytes(t, tt.entries)
			zr, err := zip.NewReader(bytes.NewReader(b), int64(len(b)))
			if err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			err = zipToTar(&out, zr)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err=%v, want one containing %q", err, tt.wantErr)
				}
				if out.Len() != 0 {
					t.Errorf("wrote %d bytes before refusing the archive", out.Len())
				}
				return
			}
			if err != nil {
				t.Fatalf("zipToTar: %v", err)
			}
			got := readTar(t, out.Bytes())
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("tar entries:\n got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

// TestZipToTarCorruptContent checks that a damaged entry (bad checksum) is
// an error, not a silently truncated or altered file.
func TestZipToTarCorruptContent(t *testing.T) {
	b := zipBytes(t, []zipEntry{{Name: "a.py", Body: "CONTENT-TO-DAMAGE"}})
	i := bytes.Index(b, []byte("CONTENT-TO-DAMAGE"))
	if i < 0 {
		t.Fatal("content not found in stored zip")
	}
	b[i] = 'X'
	zr, err := zip.NewReader(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	err = zipToTar(&out, zr)
	if err == nil || !strings.Contains(err.Error(), "a.py") {
		t.Fatalf("err=%v, want a checksum error naming a.py", err)
	}
}
