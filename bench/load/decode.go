package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"unicode/utf16"
	"unicode/utf8"
)

// event is what a watcher decodes of an event message. Text is only valid
// until the next decode into the same event (it reuses its buffer).
type event struct {
	Seq    int64
	Type   string
	Stream string
	Status string
	Text   []byte
}

// decodeEvent decodes the members of an event message that a watcher
// needs. Ten thousand watchers in one process decode millions of messages
// on the same two cores as the server they measure, so it avoids
// encoding/json's two passes and allocations: one pass, the text unescaped
// into ev's buffer, other members skipped. Messages it cannot read that
// way go to encoding/json, which also reports invalid ones.
func decodeEvent(data []byte, ev *event) error {
	text := ev.Text[:0]
	*ev = event{}
	d := decoder{b: data, text: text}
	if d.object(ev) {
		ev.Text = d.text
		return nil
	}
	var slow struct {
		Seq    int64  `json:"seq"`
		Type   string `json:"type"`
		Stream string `json:"stream"`
		Status string `json:"status"`
		Text   string `json:"text"`
	}
	if err := json.Unmarshal(data, &slow); err != nil {
		return err
	}
	*ev = event{Seq: slow.Seq, Type: slow.Type, Stream: slow.Stream, Status: slow.Status, Text: append(text, slow.Text...)}
	return nil
}

// decoder reads one JSON object; any method returning false means "not a
// shape this fast path handles".
type decoder struct {
	b    []byte
	i    int
	text []byte // the unescaped "text" member
}

func (d *decoder) space() {
	for d.i < len(d.b) {
		switch d.b[d.i] {
		case ' ', '\t', '\n', '\r':
			d.i++
		default:
			return
		}
	}
}

func (d *decoder) next(c byte) bool {
	d.space()
	if d.i < len(d.b) && d.b[d.i] == c {
		d.i++
		return true
	}
	return false
}

func (d *decoder) object(ev *event) bool {
	if !d.next('{') {
		return false
	}
	if d.next('}') {
		return d.end()
	}
	for {
		d.space()
		key, ok := d.rawString()
		if !ok || !d.next(':') {
			return false
		}
		d.space()
		switch string(key) {
		case "seq":
			n, ok := d.int()
			if !ok {
				return false
			}
			ev.Seq = n
		case "type", "stream", "status":
			v, ok := d.rawString()
			if !ok {
				return false
			}
			s := intern(v)
			switch string(key) {
			case "type":
				ev.Type = s
			case "stream":
				ev.Stream = s
			default:
				ev.Status = s
			}
		case "text":
			if !d.unescape() {
				return false
			}
		default:
			if !d.skip(0) {
				return false
			}
		}
		if d.next(',') {
			continue
		}
		if d.next('}') {
			return d.end()
		}
		return false
	}
}

func (d *decoder) end() bool {
	d.space()
	return d.i == len(d.b)
}

// rawString reads a string without escapes (keys and the protocol's words).
func (d *decoder) rawString() ([]byte, bool) {
	if d.i >= len(d.b) || d.b[d.i] != '"' {
		return nil, false
	}
	j := bytes.IndexByte(d.b[d.i+1:], '"')
	if j < 0 {
		return nil, false
	}
	s := d.b[d.i+1 : d.i+1+j]
	if bytes.IndexByte(s, '\\') >= 0 {
		return nil, false
	}
	d.i += j + 2
	return s, true
}

func (d *decoder) int() (int64, bool) {
	start := d.i
	var n int64
	for d.i < len(d.b) && d.b[d.i] >= '0' && d.b[d.i] <= '9' && d.i-start < 18 {
		n = n*10 + int64(d.b[d.i]-'0')
		d.i++
	}
	return n, d.i > start
}

var errBadEscape = errors.New("bad escape")

// unescape reads a string into d.text.
func (d *decoder) unescape() bool {
	if d.i >= len(d.b) || d.b[d.i] != '"' {
		return false
	}
	d.i++
	for {
		j := d.i
		for j < len(d.b) && d.b[j] != '"' && d.b[j] != '\\' {
			j++
		}
		d.text = append(d.text, d.b[d.i:j]...)
		if j >= len(d.b) {
			return false
		}
		d.i = j + 1
		if d.b[j] == '"' {
			return true
		}
		if err := d.escape(); err != nil {
			return false
		}
	}
}

// escape reads the escape after a backslash into d.text.
func (d *decoder) escape() error {
	if d.i >= len(d.b) {
		return errBadEscape
	}
	c := d.b[d.i]
	d.i++
	switch c {
	case '"', '\\', '/':
		d.text = append(d.text, c)
	case 'b':
		d.text = append(d.text, '\b')
	case 'f':
		d.text = append(d.text, '\f')
	case 'n':
		d.text = append(d.text, '\n')
	case 'r':
		d.text = append(d.text, '\r')
	case 't':
		d.text = append(d.text, '\t')
	case 'u':
		r, ok := d.hex4()
		if !ok {
			return errBadEscape
		}
		if utf16.IsSurrogate(r) {
			r2 := utf8.RuneError
			if d.i+1 < len(d.b) && d.b[d.i] == '\\' && d.b[d.i+1] == 'u' {
				save := d.i
				d.i += 2
				if lo, ok := d.hex4(); ok {
					r2 = utf16.DecodeRune(r, lo)
				}
				if r2 == utf8.RuneError {
					d.i = save
				}
			}
			r = r2
		}
		d.text = utf8.AppendRune(d.text, r)
	default:
		return errBadEscape
	}
	return nil
}

func (d *decoder) hex4() (rune, bool) {
	if d.i+4 > len(d.b) {
		return 0, false
	}
	var r rune
	for _, c := range d.b[d.i : d.i+4] {
		switch {
		case c >= '0' && c <= '9':
			r = r<<4 | rune(c-'0')
		case c >= 'a' && c <= 'f':
			r = r<<4 | rune(c-'a'+10)
		case c >= 'A' && c <= 'F':
			r = r<<4 | rune(c-'A'+10)
		default:
			return 0, false
		}
	}
	d.i += 4
	return r, true
}

// skip skips any value.
func (d *decoder) skip(depth int) bool {
	if depth > 32 || d.i >= len(d.b) {
		return false
	}
	switch c := d.b[d.i]; c {
	case '"':
		d.i++
		for d.i < len(d.b) {
			switch d.b[d.i] {
			case '\\':
				d.i += 2
			case '"':
				d.i++
				return true
			default:
				d.i++
			}
		}
		return false
	case '{', '[':
		closing := byte('}')
		if c == '[' {
			closing = ']'
		}
		d.i++
		if d.next(closing) {
			return true
		}
		for {
			d.space()
			if c == '{' {
				if !d.skip(depth+1) || !d.next(':') {
					return false
				}
				d.space()
			}
			if !d.skip(depth + 1) {
				return false
			}
			if d.next(',') {
				continue
			}
			return d.next(closing)
		}
	default: // number, true, false, null
		start := d.i
		for d.i < len(d.b) {
			switch d.b[d.i] {
			case ',', '}', ']', ' ', '\t', '\n', '\r':
				return d.i > start
			}
			d.i++
		}
		return false
	}
}

// intern returns the protocol's words without allocating.
func intern(b []byte) string {
	switch string(b) {
	case "log":
		return "log"
	case "status":
		return "status"
	case "result":
		return "result"
	case "phase":
		return "phase"
	case "stdout":
		return "stdout"
	case "stderr":
		return "stderr"
	case "queued":
		return "queued"
	case "running":
		return "running"
	case "passed":
		return "passed"
	case "failed":
		return "failed"
	}
	return string(b)
}
