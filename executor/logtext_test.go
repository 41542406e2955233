package executor

import (
	"bytes"
	"math/rand/v2"
	"strings"
	"testing"
)

// jsonLogModel returns what the engine's json-file log hands out for a
// stream of raw bytes, written as simply as possible: the stream cut into
// the log copier's messages (a line with its newline, at most
// logMessageSize bytes of a line without it, the rest at the end), each
// message with every byte that is not valid UTF-8 replaced by U+FFFD (as
// Go's []rune conversion does).
func jsonLogModel(raw []byte) []byte {
	var out []byte
	for len(raw) > 0 {
		n := len(raw)
		if i := bytes.IndexByte(raw, '\n'); i >= 0 && i < logMessageSize {
			n = i + 1
		} else if n > logMessageSize {
			n = logMessageSize
		}
		out = append(out, string([]rune(string(raw[:n])))...)
		raw = raw[n:]
	}
	return out
}

// logTextAll runs raw through a logText in the given chunks.
func logTextAll(raw []byte, cuts []int) []byte {
	var l logText
	var out []byte
	prev := 0
	for _, c := range append(cuts, len(raw)) {
		out = append(out, l.Next(raw[prev:c])...)
		prev = c
	}
	return append(out, l.Flush()...)
}

func TestLogText(t *testing.T) {
	long := func(n int, s string) string { return strings.Repeat("x", n) + s }
	tests := []struct {
		name, raw, want string
	}{
		{"ascii", "hello\nworld", "hello\nworld"},
		{"valid", "caf\u00e9 \u20ac \U0001F600\n", "caf\u00e9 \u20ac \U0001F600\n"},
		{"stray bytes", "a\xffb\x80c\n", "a\ufffdb\ufffdc\n"},
		{"each byte", "\xed\xa0\x80", "\ufffd\ufffd\ufffd"},
		{"literal U+FFFD", "\ufffd", "\ufffd"},
		{"incomplete at end", "end\xe2\x82", "end\ufffd\ufffd"},
		{"incomplete before newline", "a\xe2\x82\nb", "a\ufffd\ufffd\nb"},
		{"cut at 16 KiB", long(16383, "\u20ac\n"), long(16383, "\ufffd\ufffd\ufffd\n")},
		{"not cut after a newline", "y\n" + long(16383, "\u20ac\n"), "y\n" + long(16383, "\ufffd\ufffd\ufffd\n")},
		{"16 KiB then newline", long(16384, "\n\u20ac"), long(16384, "\n\u20ac")},
		{"rune after a full piece", long(16384, "\u00e9"), long(16384, "\u00e9")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := string(jsonLogModel([]byte(tt.raw))); got != tt.want {
				t.Fatalf("model: %q, want %q", short(got), short(tt.want))
			}
			if got := string(logTextAll([]byte(tt.raw), nil)); got != tt.want {
				t.Errorf("one chunk: %q, want %q", short(got), short(tt.want))
			}
			// Every cut into two chunks near the start, the end, or a
			// message boundary.
			for i := range len(tt.raw) + 1 {
				if i > 16 && i < len(tt.raw)-16 && (i < logMessageSize-16 || i > logMessageSize+16) {
					continue
				}
				if got := string(logTextAll([]byte(tt.raw), []int{i})); got != tt.want {
					t.Fatalf("cut at %d: %q, want %q", i, short(got), short(tt.want))
				}
			}
		})
	}
}

// TestLogTextRandom compares logText with the model on random streams of
// awkward bytes in random chunks.
func TestLogTextRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	pieces := []string{"a", "\n", "\u00e9", "\u20ac", "\U0001F600", "\xe2", "\x82", "\xff", "\ufffd", "\xed\xa0\x80",
		strings.Repeat("z", 5000), strings.Repeat("\u20ac", 3000)}
	for round := range 300 {
		var raw []byte
		for range rng.IntN(60) {
			raw = append(raw, pieces[rng.IntN(len(pieces))]...)
		}
		var cuts []int
		for c := 0; len(raw) > 0; {
			c += 1 + rng.IntN(min(len(raw), 4000))
			if c >= len(raw) {
				break
			}
			cuts = append(cuts, c)
		}
		want := jsonLogModel(raw)
		if got := logTextAll(raw, cuts); !bytes.Equal(got, want) {
			t.Fatalf("round %d (%d bytes, cuts %v): got %d bytes, want %d", round, len(raw), cuts, len(got), len(want))
		}
	}
}

func short(s string) string {
	if len(s) > 80 {
		return s[:30] + "..." + s[len(s)-30:]
	}
	return s
}
