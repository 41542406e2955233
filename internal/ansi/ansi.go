// Package ansi removes ANSI escape sequences (colours, cursor movement,
// terminal titles) from text that may arrive in chunks, for readers that
// can't render them: a pipe, a file, a plain-text log.
package ansi

import (
	"io"
	"unicode/utf8"
)

// The states of the stripper.
const (
	stText   = iota
	stEsc    // after ESC
	stCSI    // inside ESC [ ... final byte
	stString // inside ESC ] (OSC) or another string sequence, until BEL or ESC \
	stStrEsc // ESC inside a string sequence
	stInter  // after ESC and intermediate bytes (e.g. ESC ( B), until a final byte
)

const esc = 0x1b

// Stripper removes escape sequences from a stream given in chunks; a
// sequence split across chunks is still removed whole. The zero value is
// ready to use.
type Stripper struct {
	state int
}

// Append appends p without escape sequences to dst and returns the result.
func (s *Stripper) Append(dst, p []byte) []byte {
	for _, b := range p {
		switch s.state {
		case stText:
			if b == esc {
				s.state = stEsc
			} else {
				dst = append(dst, b)
			}
		case stEsc:
			switch {
			case b == '[':
				s.state = stCSI
			case b == ']' || b == 'P' || b == 'X' || b == '^' || b == '_':
				s.state = stString
			case b >= 0x20 && b <= 0x2f:
				s.state = stInter
			default: // a two-byte sequence such as ESC 7 or ESC c
				s.state = stText
			}
		case stCSI:
			if b >= 0x40 && b <= 0x7e {
				s.state = stText
			}
		case stString:
			if b == 0x07 {
				s.state = stText
			} else if b == esc {
				s.state = stStrEsc
			}
		case stStrEsc:
			if b == '\\' {
				s.state = stText
			} else {
				s.state = stString
			}
		case stInter:
			if b >= 0x30 && b <= 0x7e {
				s.state = stText
			}
		}
	}
	return dst
}

// String strips a complete text.
func String(text string) string {
	var s Stripper
	if !hasEsc(text) {
		return text
	}
	out := s.Append(make([]byte, 0, len(text)), []byte(text))
	if !utf8.Valid(out) {
		return string([]rune(string(out)))
	}
	return string(out)
}

func hasEsc(text string) bool {
	for i := 0; i < len(text); i++ {
		if text[i] == esc {
			return true
		}
	}
	return false
}

// Writer strips escape sequences from everything written through it.
type Writer struct {
	w   io.Writer
	s   Stripper
	buf []byte
}

// NewWriter returns a Writer that writes to w.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w} }

// Write strips p and writes the rest to the underlying writer. It reports
// len(p) on success, as the caller's bytes were all consumed.
func (w *Writer) Write(p []byte) (int, error) {
	w.buf = w.s.Append(w.buf[:0], p)
	if len(w.buf) > 0 {
		if _, err := w.w.Write(w.buf); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}
