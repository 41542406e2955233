// ansi.js: a streaming parser of terminal output. It turns text with ANSI
// escape sequences into styled runs, keeping its state across chunks, so a
// sequence split between two chunks is still understood.
//
// Rendered: SGR (colours 16, 256 and truecolor; bold, dim, italic,
// underline, inverse, strikethrough; resets). Dropped, never shown: every
// other CSI sequence (cursor moves, erase line, ...), OSC, DCS, PM, APC and
// SOS strings, other escape sequences and C0 control characters except
// tab, newline and carriage return. A carriage return not followed by a
// newline starts the line over, as progress bars expect.

const TEXT = 0, ESC = 1, CSI = 2, STR = 3, STR_ESC = 4, ESC_INTER = 5;

// CTRL finds the next character that is not plain text.
const CTRL = /[\x00-\x08\x0a-\x1f\x7f\x9b]/g;

const MAX_CSI = 256;        // longer CSI parameters: malformed, dropped
const MAX_STR = 1 << 16;    // longer OSC/DCS strings: give up skipping

// Style is an immutable text style: cls holds CSS classes for the 16-colour
// palette and attributes, fg and bg CSS colours for 256-colour and
// truecolor, key identifies it.
export const PLAIN = Object.freeze({ cls: "", fg: "", bg: "", key: "" });

// AnsiParser parses a stream of terminal output chunk by chunk.
export class AnsiParser {
  constructor() {
    this.reset();
  }

  // reset forgets everything: state, pending sequence and style.
  reset() {
    this.state = TEXT;
    this.buf = "";
    this.strLen = 0;
    this.cr = false;
    this.resetAttrs();
    this.style = PLAIN;
  }

  // plain reports whether the parser is between escape sequences.
  get plain() {
    return this.state === TEXT;
  }

  resetAttrs() {
    this.fg = null;   // null, 0..255 or "rgb(...)"
    this.bg = null;
    this.bold = this.dim = this.italic = this.underline = false;
    this.inverse = this.strike = false;
  }

  // feed parses text and calls sink.text(str, style), sink.newline() and
  // sink.clearLine() (a carriage return followed by more text).
  feed(text, sink) {
    const n = text.length;
    let i = 0;
    while (i < n) {
      if (this.state === TEXT) {
        CTRL.lastIndex = i;
        const m = CTRL.exec(text);
        const j = m ? m.index : n;
        if (j > i) {
          if (this.cr) {
            this.cr = false;
            sink.clearLine();
          }
          sink.text(text.slice(i, j), this.style);
        }
        if (!m) break;
        i = j + 1;
        switch (text.charCodeAt(j)) {
          case 0x0a: this.cr = false; sink.newline(); break;
          case 0x0d: this.cr = true; break;
          case 0x1b: this.state = ESC; break;
          case 0x9b: this.state = CSI; this.buf = ""; break;
          default: break; // other control characters: dropped
        }
        continue;
      }
      const c = text.charCodeAt(i++);
      switch (this.state) {
        case ESC:
          if (c === 0x5b) { // [
            this.state = CSI;
            this.buf = "";
          } else if (c === 0x5d || c === 0x50 || c === 0x58 || c === 0x5e || c === 0x5f) { // ] P X ^ _
            this.state = STR;
            this.strLen = 0;
          } else if (c >= 0x20 && c <= 0x2f) { // intermediate: ESC ( B and friends
            this.state = ESC_INTER;
          } else if (c === 0x1b) {
            this.state = ESC;
          } else if (c < 0x20 && c !== 0x18 && c !== 0x1a) {
            this.state = TEXT; // a control character aborts the sequence and acts
            i--;
          } else {
            this.state = TEXT; // a two-character sequence (ESC 7, ESC M, ...): dropped
          }
          break;
        case ESC_INTER:
          if (c >= 0x30 && c <= 0x7e) this.state = TEXT;
          else if (c < 0x20 || c > 0x7e) { this.state = TEXT; i--; }
          break;
        case CSI:
          if (c >= 0x40 && c <= 0x7e) {
            if (c === 0x6d) this.sgr(this.buf); // m
            this.state = TEXT;
          } else if (c >= 0x20 && c <= 0x3f) {
            if (this.buf.length < MAX_CSI) this.buf += String.fromCharCode(c);
          } else if (c === 0x1b) {
            this.state = ESC;
          } else if (c === 0x18 || c === 0x1a) {
            this.state = TEXT;
          } else {
            this.state = TEXT; // malformed: show what follows as text
            i--;
          }
          break;
        case STR:
          if (c === 0x07 || c === 0x9c) this.state = TEXT;
          else if (c === 0x1b) this.state = STR_ESC;
          else if (++this.strLen > MAX_STR) this.state = TEXT;
          break;
        case STR_ESC:
          if (c === 0x5c) { // ESC \ ends the string
            this.state = TEXT;
          } else { // ESC then something else: a new sequence starts
            this.state = ESC;
            i--;
          }
          break;
      }
    }
  }

  // sgr applies Select Graphic Rendition parameters.
  sgr(buf) {
    const first = buf.charCodeAt(0);
    if (first >= 0x3c && first <= 0x3f) return; // private (<=>?): not SGR
    if (/[ -/]/.test(buf)) return; // intermediates: not SGR
    const ps = buf.split(";");
    for (let k = 0; k < ps.length; k++) {
      const p = ps[k];
      const sub = p.indexOf(":") >= 0 ? p.split(":") : null;
      const n = sub ? num(sub[0]) : num(p);
      if (n === null) continue;
      if (n === 0) this.resetAttrs();
      else if (n === 1) this.bold = true;
      else if (n === 2) this.dim = true;
      else if (n === 3) this.italic = true;
      else if (n === 4) this.underline = !(sub && sub[1] === "0");
      else if (n === 7) this.inverse = true;
      else if (n === 9) this.strike = true;
      else if (n === 21) this.underline = true;
      else if (n === 22) this.bold = this.dim = false;
      else if (n === 23) this.italic = false;
      else if (n === 24) this.underline = false;
      else if (n === 27) this.inverse = false;
      else if (n === 29) this.strike = false;
      else if (n >= 30 && n <= 37) this.fg = n - 30;
      else if (n === 39) this.fg = null;
      else if (n >= 40 && n <= 47) this.bg = n - 40;
      else if (n === 49) this.bg = null;
      else if (n >= 90 && n <= 97) this.fg = n - 90 + 8;
      else if (n >= 100 && n <= 107) this.bg = n - 100 + 8;
      else if (n === 38 || n === 48 || n === 58) {
        let color;
        if (sub) {
          color = extColor(sub, 1, true);
        } else {
          color = extColor(ps, k + 1, false);
          k += ps[k + 1] === "5" ? 2 : ps[k + 1] === "2" ? 4 : 0;
        }
        if (color === undefined) continue;
        if (n === 38) this.fg = color;
        else if (n === 48) this.bg = color; // 58 (underline colour): ignored
      }
    }
    this.style = this.makeStyle();
  }

  makeStyle() {
    let fg = this.fg, bg = this.bg;
    const cls = [];
    if (this.inverse) {
      [fg, bg] = [bg, fg];
      if (fg === null) cls.push("ci"); // foreground: the default background
      if (bg === null) cls.push("gi"); // background: the default foreground
    }
    let fgCSS = "", bgCSS = "";
    if (typeof fg === "number" && fg < 16) cls.push("c" + fg);
    else if (fg !== null) fgCSS = css(fg);
    if (typeof bg === "number" && bg < 16) cls.push("g" + bg);
    else if (bg !== null) bgCSS = css(bg);
    if (this.bold) cls.push("b");
    if (this.dim) cls.push("d");
    if (this.italic) cls.push("i");
    if (this.underline) cls.push("u");
    if (this.strike) cls.push("s");
    const c = cls.join(" ");
    if (!c && !fgCSS && !bgCSS) return PLAIN;
    return Object.freeze({ cls: c, fg: fgCSS, bg: bgCSS, key: c + "|" + fgCSS + "|" + bgCSS });
  }
}

function num(s) {
  if (s === "") return 0;
  const n = Number(s);
  return Number.isInteger(n) && n >= 0 ? n : null;
}

// extColor reads an extended colour (5;n or 2;r;g;b) from a[i...]; colon
// forms may carry a colour-space id: 2:cs:r:g:b. It returns undefined when
// the parameters are malformed.
function extColor(a, i, colon) {
  if (a[i] === "5") {
    const n = num(a[i + 1] ?? "");
    return n !== null && n <= 255 ? n : undefined;
  }
  if (a[i] === "2") {
    let j = i + 1;
    if (colon && a.length - j >= 4) j++; // skip the colour space id
    const r = num(a[j] ?? ""), g = num(a[j + 1] ?? ""), b = num(a[j + 2] ?? "");
    if (r === null || g === null || b === null || r > 255 || g > 255 || b > 255) return undefined;
    return `rgb(${r}, ${g}, ${b})`;
  }
  return undefined;
}

const CUBE = [0, 95, 135, 175, 215, 255];

// css returns the CSS colour of a 256-palette index (16..255) or a truecolor.
function css(c) {
  if (typeof c === "string") return c;
  if (c >= 232) {
    const v = 8 + 10 * (c - 232);
    return `rgb(${v}, ${v}, ${v})`;
  }
  c -= 16;
  return `rgb(${CUBE[Math.floor(c / 36)]}, ${CUBE[Math.floor(c / 6) % 6]}, ${CUBE[c % 6]})`;
}
