package jobs

import (
	"archive/zip"
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzValidateZip feeds arbitrary bytes to the upload check. It must never
// panic or hang, and whatever it accepts must really be safe: a readable
// zip of at most maxFiles regular files and directories with safe
// relative names, unpacking to at most maxUnpacked bytes.
func FuzzValidateZip(f *testing.F) {
	const maxFiles, maxUnpacked = 20, 64 << 10
	seed := func(build func(zw *zip.Writer)) []byte {
		var buf bytes.Buffer
		zw := zip.NewWriter(&buf)
		build(zw)
		zw.Close()
		return buf.Bytes()
	}
	f.Add(seed(func(zw *zip.Writer) {
		w, _ := zw.Create("tests/test_a.py")
		io.WriteString(w, "def test_a(): pass\n")
	}))
	f.Add(seed(func(zw *zip.Writer) { zw.Create("../evil") }))
	f.Add(seed(func(zw *zip.Writer) {
		w, _ := zw.CreateHeader(&zip.FileHeader{Name: "big", Method: zip.Deflate})
		w.Write(make([]byte, 100<<10))
	}))
	f.Add([]byte("PK\x03\x04 not really"))
	f.Add([]byte{})
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		p := filepath.Join(dir, "fuzz.zip")
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		err := validateZip(context.Background(), p, maxFiles, maxUnpacked)
		if err != nil {
			if ErrorCode(err) != EINVALID {
				t.Fatalf("refusal with code %s, want EINVALID: %v", ErrorCode(err), err)
			}
			return
		}
		zr, err := zip.NewReader(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			t.Fatalf("accepted an archive Go can't open: %v", err)
		}
		if len(zr.File) > maxFiles {
			t.Fatalf("accepted %d entries, limit %d", len(zr.File), maxFiles)
		}
		var total int64
		for _, zf := range zr.File {
			name := zf.Name
			if name == "" || strings.HasPrefix(name, "/") || strings.Contains(name, "\\") || hasDotDot(name) {
				t.Fatalf("accepted unsafe name %q", name)
			}
			if m := zf.Mode(); !m.IsRegular() && !m.IsDir() {
				t.Fatalf("accepted %q with mode %v", name, m)
			}
			rc, err := zf.Open()
			if err != nil {
				t.Fatalf("accepted %q that can't be opened: %v", name, err)
			}
			n, err := io.Copy(io.Discard, io.LimitReader(rc, maxUnpacked+1))
			rc.Close()
			if err != nil {
				t.Fatalf("accepted %q that can't be read: %v", name, err)
			}
			total += n
		}
		if total > maxUnpacked {
			t.Fatalf("accepted %d unpacked bytes, limit %d", total, maxUnpacked)
		}
	})
}
