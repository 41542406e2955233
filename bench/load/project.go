package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"ci/client"
)

// The benchmark's test projects print marker lines on stdout:
//
//	ci-bench <index> [<time.time_ns() at write>] [padding]
//
// anywhere in a line (pytest -s may print the test file's name before the
// first one). Indexes start at 0 and count up by one.

// pytestINI turns pytest's output capture off, so prints reach stdout as
// they happen, for ci jobs and a bare `docker run` alike.
const pytestINI = "[pytest]\naddopts = -s\n"

// pacedTest prints n timestamped lines, one every interval (paced against
// a deadline, not by sleeping a fixed time after each), each flushed.
func pacedTest(n int, interval time.Duration) string {
	return fmt.Sprintf(`import time

N = %d
INTERVAL = %f


def test_paced():
    print(flush=True)
    start = time.monotonic()
    for i in range(N):
        delay = start + i * INTERVAL - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        print("ci-bench %%d %%d" %% (i, time.time_ns()), flush=True)
`, n, interval.Seconds())
}

// floodTest writes n lines of 60 bytes as fast as it can, then says on
// stderr how long the writing took. With block 1 it writes one line per
// call (with PYTHONUNBUFFERED one write(2) per line, as a loop of prints
// makes); with a larger block it formats all lines first and then writes
// them block lines per call, so that the writing costs the test little.
func floodTest(n, block int) string {
	return fmt.Sprintf(`import sys
import time

N = %d
BLOCK = %d


def test_flood():
    w = sys.stdout.write
    pad = "x" * 40
    print(flush=True)
    if BLOCK == 1:
        start = time.monotonic()
        for i in range(N):
            w("ci-bench %%09d %%s\n" %% (i, pad))
    else:
        text = "".join(["ci-bench %%09d %%s\n" %% (i, pad) for i in range(N)])
        size = BLOCK * 60
        start = time.monotonic()
        for b in range(0, len(text), size):
            w(text[b:b + size])
    sys.stdout.flush()
    sys.stderr.write("ci-bench-wrote %%d lines in %%.3f s, %%d per write\n" %% (N, time.monotonic() - start, BLOCK))
`, n, block)
}

// blockerTest holds the server's only worker until it is canceled, so that
// the next job waits in the queue while watchers connect.
const blockerTest = `import time


def test_block():
    time.sleep(600)
`

// writeProject writes files (name -> content) into a new directory under
// parent and returns it.
func writeProject(parent, name string, files map[string]string) (string, error) {
	dir := filepath.Join(parent, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	for f, content := range files {
		if err := os.WriteFile(filepath.Join(dir, f), []byte(content), 0o644); err != nil {
			return "", err
		}
	}
	return dir, nil
}

// zipFiles returns the zip a client uploads for a project of files.
func zipFiles(ctx context.Context, files map[string]string) ([]byte, error) {
	tmp, err := os.MkdirTemp("", "ci-bench-project-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	dir, err := writeProject(tmp, "p", files)
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	if _, err := client.ZipProject(ctx, dir, &b); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}
