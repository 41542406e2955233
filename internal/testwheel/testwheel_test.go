package testwheel

import (
	"archive/zip"
	"bytes"
	"io"
	"strings"
	"testing"
)

func TestBuild(t *testing.T) {
	name, data, err := Build("ci-demo", "1.0", map[string]string{"ci_demo/__init__.py": "X = 1\n"})
	if err != nil {
		t.Fatal(err)
	}
	if name != "ci_demo-1.0-py3-none-any.whl" {
		t.Fatalf("file name %q", name)
	}
	zr, err := zip.NewReader(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, f := range zr.File {
		rc, err := f.Open()
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(rc)
		rc.Close()
		got[f.Name] = string(b)
	}
	if got["ci_demo/__init__.py"] != "X = 1\n" || !strings.Contains(got["ci_demo-1.0.dist-info/METADATA"], "Name: ci-demo") {
		t.Fatalf("wheel content %q", got)
	}
	rec := got["ci_demo-1.0.dist-info/RECORD"]
	if !strings.Contains(rec, "ci_demo/__init__.py,sha256=") || !strings.HasSuffix(rec, "RECORD,,\n") {
		t.Fatalf("RECORD %q", rec)
	}
}
