package persistence

import (
	"strings"
	"testing"
	"unicode/utf8"

	"ci/jobs"
)

func TestEncodeChange(t *testing.T) {
	for _, c := range []jobs.Change{
		{JobID: "01j0000000000000000000000a", First: 1, Last: 1, Status: true},
		{JobID: "x", First: 3, Last: 1024},
		{JobID: "x", Cancel: true},
		{JobID: "x", First: 1 << 40, Last: 1<<40 + 1, Status: true, Cancel: true},
	} {
		p := encodeChange(c)
		got, err := decodeChange(p)
		if err != nil {
			t.Fatalf("decode %q: %v", p, err)
		}
		if got != c {
			t.Fatalf("%+v encoded as %q decodes as %+v", c, p, got)
		}
	}
	if got, want := encodeChange(jobs.Change{JobID: "j", First: 2, Last: 5, Status: true}), "j 2 5 s"; got != want {
		t.Fatalf("payload %q, want %q", got, want)
	}
	for _, p := range []string{"", "j 1 2", "j 1 2 s x", " 1 2 s", "j a 2 s", "j 1 b s", "j 1 2 x", "j 1 2 "} {
		if c, err := decodeChange(p); err == nil {
			t.Fatalf("decode %q = %+v, want an error", p, c)
		}
	}
}

func TestChannelName(t *testing.T) {
	if got, want := channelName("T_ab12"), "ci_changes_t_ab12"; got != want {
		t.Fatalf("channel %q, want %q", got, want)
	}
	long := strings.Repeat("s", 60)
	a, b := channelName(long+"a"), channelName(long+"b")
	if len(a) > maxIdentifier || len(b) > maxIdentifier || a == b || !strings.HasPrefix(a, "ci_changes_sss") {
		t.Fatalf("channels %q and %q, want distinct names of at most %d bytes", a, b, maxIdentifier)
	}
	if c := channelName(strings.Repeat("é", 40)); len(c) > maxIdentifier || !utf8.ValidString(c) {
		t.Fatalf("channel %q (%d bytes), want valid UTF-8 of at most %d bytes", c, len(c), maxIdentifier)
	}
}
