package jobs

import (
	"archive/zip"
	"bytes"
	"context"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writeZip writes a zip built by build to a temp file and returns its path.
func writeZip(t *testing.T, build func(zw *zip.Writer)) string {
	t.Helper()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	build(zw)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "a.zip")
	if err := os.WriteFile(p, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestValidateZip(t *testing.T) {
	ok := writeZip(t, func(zw *zip.Writer) {
		zw.Create("src/")
		w, _ := zw.Create("src/pkg/test_a.py")
		io.WriteString(w, "def test_a(): pass\n")
	})
	if err := validateZip(context.Background(), ok, 10, 1<<20); err != nil {
		t.Fatalf("valid archive refused: %v", err)
	}

	symlink := writeZip(t, func(zw *zip.Writer) {
		h := &zip.FileHeader{Name: "link"}
		h.SetMode(fs.ModeSymlink | 0o777)
		w, _ := zw.CreateHeader(h)
		io.WriteString(w, "/etc/passwd")
	})
	tooMany := writeZip(t, func(zw *zip.Writer) {
		for i := range 11 {
			zw.Create(strings.Repeat("d", i+1) + ".py")
		}
	})
	// A small archive whose entry unpacks to 2 MiB of zeros; and the same
	// with headers that lie about it (claiming 10 bytes), as a bomb would.
	zeros := func(zw *zip.Writer) {
		w, _ := zw.CreateHeader(&zip.FileHeader{Name: "zeros.bin", Method: zip.Deflate})
		w.Write(make([]byte, 2<<20))
	}
	big := writeZip(t, zeros)
	bomb := writeZip(t, zeros)
	lie(t, bomb, "zeros.bin", 10)
	for name, tc := range map[string]struct {
		path string
		want string
	}{
		"symlink":      {symlink, "symbolic link"},
		"too many":     {tooMany, "more than the limit of 10"},
		"too big":      {big, "more than the limit of 1 MiB"},
		"lying sizes":  {bomb, "damaged"},
		"dotdot":       {writeZip(t, func(zw *zip.Writer) { zw.Create("a/../../x") }), "safe relative path"},
		"absolute":     {writeZip(t, func(zw *zip.Writer) { zw.Create("/etc/x") }), "safe relative path"},
		"backslash":    {writeZip(t, func(zw *zip.Writer) { zw.Create(`..\x`) }), "safe relative path"},
		"not a zip":    {writeFile(t, "not a zip at all"), "not a valid zip"},
		"empty upload": {writeFile(t, ""), "not a valid zip"},
	} {
		err := validateZip(context.Background(), tc.path, 10, 1<<20)
		if ErrorCode(err) != EINVALID || !strings.Contains(ErrorMessage(err), tc.want) {
			t.Errorf("%s: %v, want EINVALID containing %q", name, err, tc.want)
		}
	}
}

func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// lie rewrites the uncompressed size that the zip at p declares for name
// (in the central directory and the local header), as a zip bomb would.
func lie(t *testing.T, p, name string, size uint32) {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	le := func(v uint32) []byte { return []byte{byte(v), byte(v >> 8), byte(v >> 16), byte(v >> 24)} }
	n := 0
	// Local file header: signature PK\x03\x04, uncompressed size at +22.
	// Central directory header: PK\x01\x02, uncompressed size at +24.
	for i := 0; i+46 < len(b); i++ {
		switch {
		case bytes.Equal(b[i:i+4], []byte("PK\x03\x04")) && bytes.HasPrefix(b[i+30:], []byte(name)):
			copy(b[i+22:], le(size))
			n++
		case bytes.Equal(b[i:i+4], []byte("PK\x01\x02")) && bytes.HasPrefix(b[i+46:], []byte(name)):
			copy(b[i+24:], le(size))
			n++
		}
	}
	if n == 0 {
		t.Fatal("no header rewritten")
	}
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
}
