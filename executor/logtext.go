package executor

import (
	"bytes"
	"unicode/utf8"
)

// logMessageSize is the most bytes of one line the engine's log copier puts
// in one log message: a longer line is stored as several partial messages
// of this size (and the rest).
const logMessageSize = 16 * 1024

// replacementChar is U+FFFD in UTF-8, which the json-file log driver stores
// instead of each byte that is not part of valid UTF-8.
var replacementChar = []byte(string(utf8.RuneError))

// logText makes Run's live output (the attach stream, raw bytes) the same
// bytes as the engine's json-file log hands out later to Reattach, so that
// a caller that stored the first N bytes of a run can skip them on
// Reattach and get exactly the rest.
//
// The two differ only in invalid UTF-8. The engine's log copier cuts each
// stream into messages: a line with its newline, and a line longer than
// logMessageSize in pieces of logMessageSize bytes (then the rest); what
// remains at the end of the stream is one last message. The json-file
// driver stores each message as a JSON string, writing U+FFFD for every
// byte that utf8.DecodeRune does not accept (a stray byte, a surrogate, a
// rune cut in two by a message boundary), each on its own. logText
// reproduces that: it keeps track of the message boundaries and replaces
// the same bytes. Valid UTF-8 passes unchanged.
//
// A rune that is incomplete at the end of a chunk, and not at a message
// boundary, is held back (at most 3 bytes) until the next chunk says
// whether it is valid; Flush, at the end of the stream, hands it out
// replaced. A logText is for one stream; it is not safe for concurrent use.
type logText struct {
	// inMessage is how many bytes of the current message have been
	// handed out (without its newline, which ends it).
	inMessage int
	// held is an incomplete rune at the end of the last chunk.
	held []byte
	// buf is reused for the output.
	buf []byte
}

// Next returns the output for the next chunk p of the stream, which may
// be empty. The result is valid until the next call.
func (l *logText) Next(p []byte) []byte {
	in := p
	if len(l.held) > 0 {
		in = append(l.held, p...)
		l.held = nil
	}
	out := l.buf[:0]
	for len(in) > 0 {
		room := logMessageSize - l.inMessage
		seg, boundary := in, false
		if i := bytes.IndexByte(in[:min(len(in), room)], '\n'); i >= 0 {
			// The newline ends the message. (One right after a full
			// piece is a message of its own, which changes nothing.)
			seg, boundary = in[:i+1], true
		} else if len(in) >= room {
			seg, boundary = in[:room], true
		}
		var used int
		out, used = appendLogText(out, seg, boundary)
		if !boundary {
			l.inMessage += used
			if used < len(seg) {
				l.held = append([]byte(nil), seg[used:]...)
			}
			break
		}
		l.inMessage = 0
		in = in[len(seg):]
	}
	l.buf = out
	return out
}

// Flush returns what is held back, at the end of the stream: the last
// message's incomplete rune, replaced.
func (l *logText) Flush() []byte {
	held := l.held
	l.held, l.inMessage = nil, 0
	out, _ := appendLogText(l.buf[:0], held, true)
	l.buf = out
	return out
}

// appendLogText appends seg to out with each byte that is not part of
// valid UTF-8 replaced by U+FFFD. If seg does not end a message (!last),
// it stops before a trailing incomplete rune, which may be completed by
// what follows. It returns how many bytes of seg it used.
func appendLogText(out, seg []byte, last bool) ([]byte, int) {
	i := 0
	for i < len(seg) {
		b := seg[i]
		if b < utf8.RuneSelf {
			j := i + 1
			for j < len(seg) && seg[j] < utf8.RuneSelf {
				j++
			}
			out = append(out, seg[i:j]...)
			i = j
			continue
		}
		if !last && !utf8.FullRune(seg[i:]) {
			return out, i
		}
		r, size := utf8.DecodeRune(seg[i:])
		if r == utf8.RuneError && size == 1 {
			out = append(out, replacementChar...)
		} else {
			out = append(out, seg[i:i+size]...)
		}
		i += size
	}
	return out, i
}
