// Command mkwheel writes a small pure-Python wheel, for benchmarks that
// install dependencies without a package index:
//
//	go run ./bench/mkwheel DIR NAME VERSION
//
// writes DIR/<name>-<version>-py3-none-any.whl with a module <name> (dashes
// as underscores) whose VERSION is VERSION, and prints the file's name.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"ci/internal/testwheel"
)

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: mkwheel DIR NAME VERSION")
		os.Exit(64)
	}
	dir, name, version := os.Args[1], os.Args[2], os.Args[3]
	mod := strings.ReplaceAll(name, "-", "_")
	file, data, err := testwheel.Build(name, version, map[string]string{mod + "/__init__.py": fmt.Sprintf("VERSION = %q\n", version)})
	if err == nil {
		err = os.WriteFile(filepath.Join(dir, file), data, 0o644)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "mkwheel:", err)
		os.Exit(1)
	}
	fmt.Println(file)
}
