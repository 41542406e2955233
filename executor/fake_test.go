package executor

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"ci/jobs"
)

func TestFakeNoScript(t *testing.T) {
	f := &Fake{}
	spec := newSpec(t, map[string]string{"test_a.py": "def test_a(): pass\n"})
	rec := &recorder{}
	res, err := f.Run(context.Background(), spec, rec)
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != 0 {
		t.Errorf("exit code=%d, want 0", res.ExitCode)
	}
	if got, want := rec.text(jobs.StreamStdout), "fake: no ci-fake-script\n"; got != want {
		t.Errorf("stdout=%q, want %q", got, want)
	}
}

func TestFakeFail(t *testing.T) {
	f := &Fake{}
	spec := newSpec(t, map[string]string{FakeScript: script(`stdout "x"`, `fail "engine on fire"`, `exit 3`)})
	rec := &recorder{}
	_, err := f.Run(context.Background(), spec, rec)
	if err == nil || err.Error() != "engine on fire" {
		t.Errorf("err=%v, want %q", err, "engine on fire")
	}
	if got := rec.text(jobs.StreamStdout); got != "x" {
		t.Errorf("stdout=%q, want %q", got, "x")
	}
}

func TestFakeScriptErrors(t *testing.T) {
	tests := []struct {
		script string
		want   string
	}{
		{script(`stdout unquoted`), "line 1"},
		{script(`# comment`, ``, `sleep forever`), "line 3"},
		{script(`exit one`), "line 1"},
		{script(`block now`), "no argument"},
		{script(`explode`), `unknown command "explode"`},
	}
	for _, tt := range tests {
		f := &Fake{}
		spec := newSpec(t, map[string]string{FakeScript: tt.script})
		rec := &recorder{}
		_, err := f.Run(context.Background(), spec, rec)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("script %q: err=%v, want one containing %q", tt.script, err, tt.want)
		}
		if got := rec.text(jobs.StreamStdout); got != "" {
			t.Errorf("script %q: stdout=%q, want nothing: a bad script plays nothing", tt.script, got)
		}
	}
}

// TestFakeLive checks that Live counts a blocked run until it is canceled.
func TestFakeLive(t *testing.T) {
	f := &Fake{}
	spec := newSpec(t, map[string]string{FakeScript: script(`stdout "started\n"`, `block`)})
	rec := &recorder{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := f.Run(ctx, spec, rec)
		done <- err
	}()
	select {
	case <-rec.waitFor(jobs.StreamStdout, "started"):
	case <-time.After(10 * time.Second):
		t.Fatal("run did not start")
	}
	if n := f.Live(); n != 1 {
		t.Errorf("Live()=%d while blocked, want 1", n)
	}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("err=%v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if n := f.Live(); n != 0 {
		t.Errorf("Live()=%d after return, want 0", n)
	}
}

// TestFakeOutputError checks that an error from Output ends the run.
func TestFakeOutputError(t *testing.T) {
	f := &Fake{}
	spec := newSpec(t, map[string]string{FakeScript: script(`stdout "x"`, `block`)})
	boom := errors.New("boom")
	_, err := f.Run(context.Background(), spec, failingOutput{boom})
	if !errors.Is(err, boom) {
		t.Errorf("err=%v, want %v", err, boom)
	}
}

type failingOutput struct{ err error }

func (o failingOutput) Write(string, []byte) error { return o.err }
func (o failingOutput) Phase(string) error         { return o.err }
