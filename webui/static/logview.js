// logview.js: renders a job's output into the DOM, fast enough for very
// large logs. Lines live in blocks of BLOCK lines (CSS content-visibility
// lets the browser skip the ones off screen); with a cap, only the newest
// lines stay in the DOM and older blocks are dropped whole. A phase of the
// job (installing dependencies, running the tests) starts with a heading
// between two blocks.

import { AnsiParser } from "./ansi.js";

// BLOCK is the number of lines in one block element.
export const BLOCK = 500;

// SUMMARY matches pytest's final line: "==== 1 failed, 3 passed in 4.05s ====".
const SUMMARY = /^=+ (.*\b(?:passed|failed|errors?|skipped|xfailed|xpassed|deselected|warnings?|no tests ran)\b.*? in [\d.]+s(?: \([^)]*\))?) =+\s*$/;

// LogView is the sink of an AnsiParser: it turns styled runs into line
// elements inside root.
export class LogView {
  constructor(root, { cap = Infinity, onSummary = () => {} } = {}) {
    this.root = root;
    this.cap = cap;
    this.onSummary = onSummary;
    this.clear();
  }

  // clear empties the view and restarts parsing from scratch.
  clear() {
    this.root.textContent = "";
    this.parser = new AnsiParser();
    this.done = 0;       // completed lines seen (newlines)
    this.first = 1;      // number of the first line in the DOM
    this.domLines = 0;   // line elements in the DOM
    this.skip = 0;       // lines still to skip without rendering
    this.blk = null;     // the block new lines go into
    this.blkLines = 0;
    this.line = null;    // the open line element, or null
    this.lastText = null; // its last text node, for merging runs
    this.lastKey = null;
    this.lineText = "";
    this.err = false;
    this.made = 0;       // line elements created, ever
    this.cut = false;    // the open line was cut by a phase heading
  }

  // write parses a chunk of output from stream ("stdout" or "stderr"). nl,
  // when given, is the number of newlines in text: a chunk that will be
  // skipped whole and has no escape sequence is then only counted.
  write(stream, text, nl) {
    if (this.skip > nl && this.parser.plain && text.indexOf("\x1b") < 0 && text.indexOf("\x9b") < 0) {
      this.done += nl;
      this.skip -= nl;
      if (nl > 0) this.lineText = "";
      if (text) this.parser.cr = text.charCodeAt(text.length - 1) === 0x0d;
      return;
    }
    this.err = stream === "stderr";
    this.parser.feed(text, this);
  }

  // hidden returns the number of lines that are not in the DOM.
  get hidden() {
    return this.skip > 0 ? this.done : this.first - 1;
  }

  // lines returns the number of lines seen, the open one included.
  get lines() {
    return this.done + (this.line || this.lineText ? 1 : 0);
  }

  // fastForward drops the DOM and skips the next n lines without
  // rendering them: they would be capped away anyway.
  fastForward(n) {
    if (n <= 0) return;
    this.root.textContent = "";
    this.domLines = 0;
    this.blk = null;
    this.line = null;
    this.lastText = null;
    this.cut = false;
    this.skip = n;
  }

  // phase shows that the job enters a phase (e.g. "install", "test"): a
  // heading row, after which lines go into a new block. The heading is not
  // a line: it has no number, does not count against the cap and is not in
  // the log's text (its label is CSS content), so a copy is still exactly
  // the output. A line left open is cut: it goes on below the heading under
  // the same number. A heading among skipped lines is skipped with them;
  // trim drops one that reaches the top.
  phase(name) {
    this.parser.reset(); // a new process: no style or sequence carries over
    if (this.skip > 0) return;
    const h = document.createElement("div");
    h.className = "ph";
    h.dataset.phase = name;
    h.setAttribute("role", "heading");
    h.setAttribute("aria-level", "3");
    h.setAttribute("aria-label", "Phase: " + name);
    this.root.appendChild(h);
    this.blk = null;
    if (this.line) {
      this.line = null;
      this.lastText = null;
      this.cut = true;
    }
  }

  // trim removes whole blocks (and phase headings) from the top while more
  // than cap lines are in the DOM.
  trim() {
    while (this.domLines > this.cap) {
      const b = this.root.firstElementChild;
      if (!b || b === this.blk) break;
      b.remove();
      if (!b.classList.contains("blk")) continue; // a phase heading
      const n = b.childElementCount;
      this.domLines -= n;
      // The rest of a cut line was counted with its start.
      const l = b.firstElementChild;
      this.first += l && l.classList.contains("lc") ? n - 1 : n;
    }
  }

  // The AnsiParser sink.

  text(s, style) {
    if (this.lineText.length < 400) this.lineText += s;
    if (this.skip > 0) return;
    if (!this.line) this.openLine();
    const key = this.err ? "e" + style.key : style.key;
    if (this.lastText && this.lastKey === key) {
      this.lastText.appendData(s);
      return;
    }
    const t = document.createTextNode(s);
    if (key === "") {
      this.line.appendChild(t);
    } else {
      const span = document.createElement("span");
      span.className = this.err ? (style.cls ? style.cls + " e" : "e") : style.cls;
      if (style.fg) span.style.color = style.fg;
      if (style.bg) span.style.backgroundColor = style.bg;
      span.appendChild(t);
      this.line.appendChild(span);
      if (this.err && !this.line.classList.contains("le")) this.line.classList.add("le");
    }
    this.lastText = t;
    this.lastKey = key;
  }

  newline() {
    this.done++;
    const text = this.lineText;
    this.lineText = "";
    if (text.charCodeAt(0) === 0x3d) { // "="
      const m = SUMMARY.exec(text);
      if (m) this.onSummary(m[1]);
    }
    if (this.skip > 0) {
      if (--this.skip === 0) this.first = this.done + 1;
      return;
    }
    if (!this.line) this.openLine();
    this.line.appendChild(document.createTextNode("\n"));
    this.line = null;
    this.lastText = null;
  }

  clearLine() {
    this.lineText = "";
    if (this.line) {
      this.line.textContent = "";
      this.line.classList.remove("le");
      this.lastText = null;
    }
  }

  openLine() {
    if (!this.blk || this.blkLines >= BLOCK) {
      this.blk = document.createElement("div");
      this.blk.className = "blk";
      this.root.appendChild(this.blk);
      this.blkLines = 0;
      if (this.domLines === 0) this.first = this.done + 1;
    }
    this.line = document.createElement("div");
    this.line.className = this.cut ? "l lc" : "l";
    this.cut = false;
    // The line number (CSS counter): each block restarts it, as its
    // content-visibility contains counters.
    if (this.blkLines === 0) this.line.style.counterSet = "ln " + (this.done + 1);
    this.blk.appendChild(this.line);
    this.blkLines++;
    this.domLines++;
    this.made++;
    this.lastText = null;
  }
}
