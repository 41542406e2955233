package executor

import (
	"context"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"ci/jobs"
)

// testImage returns the image the Docker tests run in: $CI_TEST_IMAGE,
// default ci-python:latest (made by scripts/build-image).
func testImage() string {
	if img := os.Getenv("CI_TEST_IMAGE"); img != "" {
		return img
	}
	return "ci-python:latest"
}

// skipOrFatal skips the test, or fails it when $CI is set: in CI a missing
// engine is a failure, never a silent skip.
func skipOrFatal(t *testing.T, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf(format, args...)
	}
	t.Skipf(format, args...)
}

// newTestDocker returns a Docker executor for image with default limits,
// after checking that an engine answers (and, if needImage, that image is
// present); otherwise it skips the test (fails it in CI).
func newTestDocker(t *testing.T, image string, needImage bool) *Docker {
	t.Helper()
	return newTestDockerConfig(t, DockerConfig{Image: image}, needImage)
}

// newTestDockerConfig is newTestDocker for any configuration; an empty
// cfg.Image means testImage().
func newTestDockerConfig(t *testing.T, cfg DockerConfig, needImage bool) *Docker {
	t.Helper()
	if cfg.Image == "" {
		cfg.Image = testImage()
	}
	cfg.Logger = slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	if _, err := cfg.limits(); err != nil {
		t.Fatalf("test config: %v", err)
	}
	d, err := NewDocker(cfg)
	if err != nil {
		skipOrFatal(t, "no Docker engine: %v", err)
	}
	t.Cleanup(func() { d.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := d.Ping(ctx); err != nil {
		skipOrFatal(t, "no Docker engine: %v", err)
	}
	if needImage {
		if _, err := d.cli.ImageInspect(ctx, cfg.Image); err != nil {
			skipOrFatal(t, "no Docker test image %q (build it with scripts/build-image or set CI_TEST_IMAGE): %v", cfg.Image, err)
		}
	}
	return d
}

// TestDockerContract runs the executor contract on Docker when an engine
// answers.
func TestDockerContract(t *testing.T) {
	newTestDocker(t, testImage(), true) // skip early, once, if no engine
	testExecutor(t, func(t *testing.T) jobs.Executor { return newTestDocker(t, testImage(), true) })
}

func TestDockerMissingImage(t *testing.T) {
	// Port 1 refuses connections at once, so the pull fails fast.
	const image = "localhost:1/ci-missing-image:latest"
	d := newTestDocker(t, image, false)
	spec := newSpec(t, map[string]string{"test_ok.py": "def test_ok():\n    pass\n"})
	rec := &recorder{}
	check := watchLeftovers(t, d, spec.JobID, rec)
	ctx, cancel := context.WithTimeout(context.Background(), runTimeout)
	defer cancel()
	_, err := d.Run(ctx, spec, rec)
	if err == nil {
		t.Fatal("Run succeeded with a missing image")
	}
	t.Logf("error: %v", err)
	for _, want := range []string{`"` + image + `"`, "scripts/build-image", "--image"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("err=%q, want it to contain %q", err, want)
		}
	}
	check(t)
}

func TestDockerSrcLayout(t *testing.T) {
	d := newTestDocker(t, testImage(), true)
	spec := newSpec(t, map[string]string{
		"src/mypkg/__init__.py": "VALUE = 42\n",
		"tests/test_pkg.py":     "from mypkg import VALUE\n\ndef test_value():\n    assert VALUE == 42\n",
	})
	res, rec := mustRun(t, d, spec)
	if res.ExitCode != 0 {
		t.Errorf("exit code=%d, want 0; stdout:\n%s", res.ExitCode, rec.text(jobs.StreamStdout))
	}
}

// TestDockerProjectFiles checks, from inside the container, how the
// project files arrive: owned by root, modes 0644/0755, executable bit
// kept, and that pytest leaves no cache or bytecode in the project.
func TestDockerProjectFiles(t *testing.T) {
	d := newTestDocker(t, testImage(), true)
	b := zipBytes(t, []zipEntry{
		{Name: "tools/run.sh", Body: "#!/bin/sh\necho hi\n", Mode: 0o700},
		{Name: "data.txt", Body: "data\n", Mode: 0o600},
		{Name: "test_files.py", Body: `import os, stat

def mode(p):
    return stat.S_IMODE(os.stat(p).st_mode)

def test_files():
    for p in ["tools", "tools/run.sh", "data.txt", "test_files.py"]:
        st = os.stat(p)
        assert (st.st_uid, st.st_gid) == (0, 0), p
    assert mode("tools") == 0o755
    assert mode("tools/run.sh") == 0o755
    assert mode("data.txt") == 0o644
    assert mode("test_files.py") == 0o644
    assert os.getcwd() == "/workspace"
`},
		{Name: "test_zz_clean.py", Body: `import os

def test_no_cache_or_bytecode():
    assert not os.path.exists(".pytest_cache")
    assert not os.path.exists("__pycache__")
`},
	})
	spec := jobs.Spec{JobID: newJobID(t), Archive: writeFile(t, b)}
	res, rec := mustRun(t, d, spec)
	if res.ExitCode != 0 {
		t.Errorf("exit code=%d, want 0; stdout:\n%s", res.ExitCode, rec.text(jobs.StreamStdout))
	}
}

func TestReadPullStream(t *testing.T) {
	tests := []struct {
		name, stream, wantErr string
	}{
		{"empty", "", ""},
		{"progress", `{"status":"Pulling from library/python","id":"3.12-slim"}
{"status":"Downloading","progressDetail":{"current":1,"total":2},"id":"abc"}
{"status":"Status: Downloaded newer image for python:3.12-slim"}
`, ""},
		{"error detail", `{"status":"Pulling fs layer","id":"abc"}
{"errorDetail":{"message":"manifest unknown"},"error":"manifest unknown (short)"}
`, "manifest unknown"},
		{"error only", `{"error":"toomanyrequests"}`, "toomanyrequests"},
		{"truncated", `{"status":"Downloa`, "read pull progress"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := readPullStream(strings.NewReader(tt.stream))
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("err=%v, want nil", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("err=%v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

// BenchmarkDockerRun measures the per-job cost of a trivial passing run:
// compare with `docker run --rm --network none IMAGE python -m pytest`.
func BenchmarkDockerRun(b *testing.B) {
	d, err := NewDocker(DockerConfig{Image: testImage()})
	if err != nil {
		b.Skipf("no Docker engine: %v", err)
	}
	defer d.Close()
	ctx := context.Background()
	if err := d.Ping(ctx); err != nil {
		b.Skipf("no Docker engine: %v", err)
	}
	archive := projectZip(b, map[string]string{"test_ok.py": "def test_ok():\n    pass\n"})
	for b.Loop() {
		res, err := d.Run(ctx, jobs.Spec{JobID: newJobID(b), Archive: archive}, &recorder{})
		if err != nil || res.ExitCode != 0 {
			b.Fatalf("Run: %+v, %v", res, err)
		}
	}
}
