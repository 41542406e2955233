package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"time"

	"ci/client"
)

// uploadFiles is how many data files the upload project's bytes are split
// into.
const uploadFiles = 4

// upload is benchmark 5: a large incompressible project streamed through
// the client library; ci-server's memory must not grow with it.
func (b *bench) upload(ctx context.Context) error {
	cfg := b.cfg
	total := int64(cfg.uploadMiB) << 20
	fmt.Printf("\n== 5. Upload: a %d MiB project of random bytes through client.SubmitWith (load %s) ==\n",
		cfg.uploadMiB, loadavg())
	tmp, err := os.MkdirTemp("", "ci-bench-upload-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	dir := filepath.Join(tmp, "upload")
	if err := os.MkdirAll(filepath.Join(dir, "data"), 0o755); err != nil {
		return err
	}
	// The test checks every file's size and SHA-256: what ran is what was
	// uploaded.
	var test strings.Builder
	test.WriteString("import hashlib\nimport os\n\nFILES = {\n")
	rng := rand.NewChaCha8([32]byte{7})
	for i := range uploadFiles {
		name := fmt.Sprintf("data/blob%d.bin", i)
		size := total / uploadFiles
		sum, err := writeRandom(filepath.Join(dir, name), size, rng)
		if err != nil {
			return err
		}
		fmt.Fprintf(&test, "    %q: (%d, %q),\n", name, size, sum)
	}
	test.WriteString(`}


def test_upload():
    for name, (size, digest) in FILES.items():
        assert os.path.getsize(name) == size, name
        h = hashlib.sha256()
        with open(name, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        assert h.hexdigest() == digest, name
`)
	if err := os.WriteFile(filepath.Join(dir, "test_upload.py"), []byte(test.String()), 0o644); err != nil {
		return err
	}

	s, err := startServer(ctx, cfg, "--max-upload", sizeFlag(2*total+64<<20), "--max-unpacked", sizeFlag(2*total+64<<20))
	if err != nil {
		return err
	}
	defer s.stop()
	time.Sleep(time.Second) // let the server settle after its start
	before, err := s.memKB("VmRSS")
	if err != nil {
		return err
	}
	hwmStart, err := s.memKB("VmHWM")
	if err != nil {
		return err
	}

	// Zip while uploading: the body is a pipe, never a buffer.
	pr, pw := io.Pipe()
	counted := &countReader{r: pr}
	go func() {
		_, err := client.ZipProject(ctx, dir, pw)
		pw.CloseWithError(err)
	}()
	t0 := time.Now()
	job, err := s.client.SubmitWith(ctx, counted, client.SubmitOptions{Timeout: 10 * time.Minute})
	if err != nil {
		pr.CloseWithError(err)
		return fmt.Errorf("submit: %w", err)
	}
	s.jobs = append(s.jobs, job.ID)
	up := time.Since(t0)
	hwmUpload, err := s.memKB("VmHWM")
	if err != nil {
		return err
	}
	end, err := s.client.Follow(ctx, job.ID, 0, func(client.Event) error { return nil })
	if err != nil {
		return err
	}
	run := time.Since(t0)
	hwm, err := s.memKB("VmHWM")
	if err != nil {
		return err
	}
	if end.Status != client.StatusPassed {
		j, _ := s.client.Job(ctx, job.ID)
		reason := end.Reason
		if j != nil && reason == "" {
			reason = j.Reason
		}
		b.failf("upload: job ended %s (%s)", end.Status, reason)
		return nil
	}
	growth := hwm - before
	fmt.Printf("uploaded %.1f MiB (zip) in %.2f s (%.0f MiB/s, zipping included); job passed (sizes and SHA-256 checked) %.2f s after the start\n",
		float64(counted.n)/(1<<20), up.Seconds(), float64(counted.n)/(1<<20)/up.Seconds(), run.Seconds())
	fmt.Printf("ci-server RSS before %s (peak so far %s); peak after the upload %s, after the job %s\n",
		mib(before), mib(hwmStart), mib(hwmUpload), mib(hwm))
	fmt.Printf("growth (VmHWM after - VmRSS before): %s (target <= 32 MB)\n", mib(growth))
	b.target(growth*1024 <= 32e6, "5. upload %d MiB, ci-server RSS growth: %s (target <= 32 MB)", cfg.uploadMiB, mib(growth))
	return s.alive()
}

// writeRandom writes size random bytes to path and returns their SHA-256
// in hex.
func writeRandom(path string, size int64, rng *rand.ChaCha8) (string, error) {
	f, err := os.Create(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	buf := make([]byte, 1<<20)
	for size > 0 {
		n := min(int64(len(buf)), size)
		rng.Read(buf[:n])
		h.Write(buf[:n])
		if _, err := f.Write(buf[:n]); err != nil {
			return "", err
		}
		size -= n
	}
	return hex.EncodeToString(h.Sum(nil)), f.Close()
}

// countReader counts the bytes read through it.
type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}
