// Package testwheel builds small pure-Python wheels in memory, for tests
// and benchmarks that install dependencies without a package index.
package testwheel

import (
	"archive/zip"
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"sort"
	"strings"
)

// Build returns the file name and content of a wheel (PEP 427) of the
// distribution name at version, holding files (path in site-packages ->
// content), for example {"mypkg/__init__.py": "X = 1\n"}. name may use
// dashes; the file name and dist-info use its normalized form.
func Build(name, version string, files map[string]string) (filename string, data []byte, err error) {
	norm := strings.NewReplacer("-", "_", ".", "_").Replace(name)
	info := norm + "-" + version + ".dist-info/"
	all := map[string]string{
		info + "METADATA": fmt.Sprintf("Metadata-Version: 2.1\nName: %s\nVersion: %s\n", name, version),
		info + "WHEEL":    "Wheel-Version: 1.0\nGenerator: ci-testwheel\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
	}
	for p, body := range files {
		all[p] = body
	}
	names := make([]string, 0, len(all))
	for p := range all {
		names = append(names, p)
	}
	sort.Strings(names)

	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	var record strings.Builder
	for _, p := range names {
		w, err := zw.Create(p)
		if err != nil {
			return "", nil, err
		}
		if _, err := w.Write([]byte(all[p])); err != nil {
			return "", nil, err
		}
		sum := sha256.Sum256([]byte(all[p]))
		fmt.Fprintf(&record, "%s,sha256=%s,%d\n", p, base64.RawURLEncoding.EncodeToString(sum[:]), len(all[p]))
	}
	record.WriteString(info + "RECORD,,\n")
	w, err := zw.Create(info + "RECORD")
	if err != nil {
		return "", nil, err
	}
	if _, err := w.Write([]byte(record.String())); err != nil {
		return "", nil, err
	}
	if err := zw.Close(); err != nil {
		return "", nil, err
	}
	return norm + "-" + version + "-py3-none-any.whl", buf.Bytes(), nil
}
