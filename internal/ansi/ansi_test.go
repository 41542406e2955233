package ansi

import (
	"bytes"
	"testing"
)

var cases = []struct{ in, want string }{
	{"plain text\n", "plain text\n"},
	{"\x1b[31mred\x1b[0m", "red"},
	{"\x1b[1;32mPASSED\x1b[0m ok", "PASSED ok"},
	{"\x1b[38;5;208morange\x1b[39m", "orange"},
	{"\x1b[38;2;10;20;30mtrue\x1b[m", "true"},
	{"a\x1b[2Kb\x1b[1Gc", "abc"},
	{"\x1b]0;title\x07after", "after"},
	{"\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\", "link"},
	{"\x1b(Bcharset", "charset"},
	{"\x1b7saved\x1b8", "saved"},
	{"héllo \x1b[33m✓\x1b[0m", "héllo ✓"},
}

func TestString(t *testing.T) {
	for _, c := range cases {
		if got := String(c.in); got != c.want {
			t.Errorf("String(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

// TestSplitAnywhere feeds every case cut at every byte: a sequence split
// across chunks must still be removed whole.
func TestSplitAnywhere(t *testing.T) {
	for _, c := range cases {
		for cut := 0; cut <= len(c.in); cut++ {
			var buf bytes.Buffer
			w := NewWriter(&buf)
			w.Write([]byte(c.in[:cut]))
			w.Write([]byte(c.in[cut:]))
			if buf.String() != c.want {
				t.Fatalf("%q cut at %d: got %q, want %q", c.in, cut, buf.String(), c.want)
			}
		}
	}
}

func TestWriterReportsWholeWrite(t *testing.T) {
	var buf bytes.Buffer
	n, err := NewWriter(&buf).Write([]byte("\x1b[31mx"))
	if err != nil || n != 6 {
		t.Fatalf("Write = %d, %v; want 6, nil", n, err)
	}
}
