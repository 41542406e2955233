package executor

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	cerrdefs "github.com/containerd/errdefs"

	"ci/jobs"
)

// Bounds of pytest's report.
const (
	// maxReport is the largest report Run reads back; a larger one is
	// ignored (no Report).
	maxReport = 16 << 20
	// maxMessage is the most bytes of a test's message kept in its
	// TestCase.
	maxMessage = 4 << 10
)

// reportDirName is ReportDir relative to Workspace.
var reportDirName = strings.TrimPrefix(ReportDir, Workspace+"/")

// withReportDir returns the project's entries without any under
// ReportDir (reserved: a project must not bring its own report), followed
// by ReportDir itself, owned by uid:gid with mode 0700: so the one copy
// that puts the project into the container also makes the only place
// there that the tests may write.
func withReportDir(entries []tarEntry, uid, gid int) []tarEntry {
	out := make([]tarEntry, 0, len(entries)+1)
	for _, e := range entries {
		name := strings.TrimSuffix(e.hdr.Name, "/")
		if name == reportDirName || strings.HasPrefix(name, reportDirName+"/") {
			continue
		}
		out = append(out, e)
	}
	return append(out, tarEntry{hdr: &tar.Header{
		Typeflag: tar.TypeDir,
		Name:     reportDirName + "/",
		Mode:     0o700,
		Uid:      uid,
		Gid:      gid,
		ModTime:  time.Unix(0, 0),
	}})
}

// report reads pytest's report from the exited container id and returns
// it parsed, or nil if there is none (pytest did not get to write it, a
// user's --junitxml went elsewhere, a container of an earlier version) or
// it cannot be read: that is no error of the job, only logged.
func (d *Docker) report(ctx context.Context, id string, files []string, log *slog.Logger) *jobs.TestReport {
	b, err := d.readReport(ctx, id)
	if err != nil {
		if cerrdefs.IsNotFound(err) {
			log.Debug("no test report", "err", err)
		} else {
			log.Warn("read test report", "err", err)
		}
		return nil
	}
	rep, err := parseJUnit(bytes.NewReader(b), files)
	if err != nil {
		log.Warn("parse test report", "err", err)
		return nil
	}
	log.Debug("test report read", "tests", len(rep.Tests), "bytes", len(b))
	return rep
}

// readReport returns the content of ReportFile in container id, which must
// be a regular file of at most maxReport bytes.
func (d *Docker) readReport(ctx context.Context, id string) ([]byte, error) {
	return d.readFile(ctx, id, ReportFile, maxReport)
}

// readFile returns the content of file in container id (which may have
// exited), a regular file of at most max bytes.
func (d *Docker) readFile(ctx context.Context, id, file string, max int64) ([]byte, error) {
	rc, _, err := d.cli.CopyFromContainer(ctx, id, file)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	hdr, err := tr.Next()
	if err != nil {
		return nil, fmt.Errorf("%s: archive: %w", file, err)
	}
	switch {
	case hdr.Typeflag != tar.TypeReg:
		return nil, fmt.Errorf("%s is not a regular file (type %q)", file, hdr.Typeflag)
	case hdr.Size > max:
		return nil, fmt.Errorf("%s is %d bytes, more than %d", file, hdr.Size, max)
	}
	b, err := io.ReadAll(io.LimitReader(tr, max+1))
	if err != nil {
		return nil, fmt.Errorf("%s: archive: %w", file, err)
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%s is more than %d bytes", file, max)
	}
	return b, nil
}

// projectFiles returns the paths of the regular files among entries.
func projectFiles(entries []tarEntry) []string {
	var files []string
	for _, e := range entries {
		if e.file != nil {
			files = append(files, e.hdr.Name)
		}
	}
	return files
}

// archiveFiles returns the paths of the regular files of the project zip
// at archive, nil if it cannot be read.
func archiveFiles(archive string) []string {
	if archive == "" {
		return nil
	}
	zr, err := zip.OpenReader(archive)
	if err != nil {
		return nil
	}
	defer zr.Close()
	entries, err := planTar(&zr.Reader)
	if err != nil {
		return nil
	}
	return projectFiles(entries)
}

// junitCase is a <testcase> of pytest's JUnit XML.
type junitCase struct {
	Classname string        `xml:"classname,attr"`
	Name      string        `xml:"name,attr"`
	File      string        `xml:"file,attr"` // xunit1 only
	Time      string        `xml:"time,attr"`
	Outcomes  []junitDetail `xml:",any"`
}

// junitDetail is a child of a <testcase>: failure, error, skipped (or
// system-out and the like, which are ignored).
type junitDetail struct {
	XMLName xml.Name
	Message string `xml:"message,attr"`
	Text    string `xml:",chardata"`
}

// parseJUnit parses a JUnit XML report written by pytest (either family;
// xunit1 is the one Run asks for) into a TestReport. files are the paths
// of the project's files, relative to its root: they resolve the node IDs
// of testcases without a file attribute.
//
// Every outcome element of a testcase becomes one TestCase, so that the
// counts match pytest's summary: a <failure> is "failed", an <error>
// "error", a <skipped> (a skip or an xfail) "skipped", and a testcase with
// none of them "passed". pytest puts both errors of a module that fails to
// collect twice in one testcase (two entries). A passing test whose
// teardown failed is one testcase with only an <error> "failed on
// teardown": pytest counts it passed and error, so that is two entries
// too; a failing one is two testcases (<failure>, then that <error>):
// failed and error. Entries of one node ID share it; the first entry of a
// testcase gets its duration.
func parseJUnit(r io.Reader, files []string) (*jobs.TestReport, error) {
	dec := xml.NewDecoder(r)
	rep := &jobs.TestReport{Tests: []jobs.TestCase{}}
	suites := 0
	seen := make(map[string]bool) // node IDs
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("junit xml: %w", err)
		}
		se, ok := tok.(xml.StartElement)
		if !ok {
			continue
		}
		switch se.Name.Local {
		case "testsuite":
			suites++
			for _, a := range se.Attr {
				if a.Name.Local == "time" {
					rep.DurationS += parseSeconds(a.Value)
				}
			}
		case "testcase":
			var c junitCase
			if err := dec.DecodeElement(&c, &se); err != nil {
				return nil, fmt.Errorf("junit xml: %w", err)
			}
			rep.Tests = append(rep.Tests, c.testCases(files, seen)...)
		}
	}
	if suites == 0 {
		return nil, errors.New("junit xml: no testsuite")
	}
	return rep, nil
}

// testCases returns the TestCases c stands for (see parseJUnit); seen
// holds the node IDs of the testcases before it, and gets c's.
func (c *junitCase) testCases(files []string, seen map[string]bool) []jobs.TestCase {
	id := nodeID(c.Classname, c.Name, c.File, files)
	earlier := seen[id]
	seen[id] = true
	var out []jobs.TestCase
	teardownOnly := true
	for _, o := range c.Outcomes {
		var outcome string
		switch o.XMLName.Local {
		case "failure":
			outcome = "failed"
		case "error":
			outcome = "error"
		case "skipped":
			outcome = "skipped"
		default:
			continue
		}
		if outcome != "error" || !strings.HasPrefix(o.Message, "failed on teardown") {
			teardownOnly = false
		}
		out = append(out, jobs.TestCase{NodeID: id, Outcome: outcome, Message: message(o)})
	}
	if len(out) == 0 || (teardownOnly && !earlier) {
		out = append([]jobs.TestCase{{NodeID: id, Outcome: "passed"}}, out...)
	}
	out[0].DurationS = parseSeconds(c.Time)
	return out
}

// message returns the message of an outcome element: its message
// attribute, else the first non-blank line of its text, at most
// maxMessage bytes.
func message(o junitDetail) string {
	m := strings.TrimSpace(o.Message)
	if m == "" {
		for _, line := range strings.Split(o.Text, "\n") {
			if line = strings.TrimSpace(line); line != "" {
				m = line
				break
			}
		}
	}
	return truncateUTF8(m, maxMessage)
}

// truncateUTF8 cuts s to at most n bytes, not within a rune.
func truncateUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

func parseSeconds(s string) float64 {
	f, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if err != nil || f < 0 {
		return 0
	}
	return f
}

// dottedPath is how pytest's junitxml writes a file path in a classname:
// "/" as ".", without a .py suffix.
func dottedPath(file string) string {
	return strings.TrimSuffix(strings.ReplaceAll(file, "/", "."), ".py")
}

// nodeID rebuilds the pytest node ID of a testcase. pytest writes the
// node ID "dir/test_m.py::TestA::TestB::test_f[p]" as classname
// "dir.test_m.TestA.TestB" and name "test_f[p]", and (xunit1) file
// "dir/test_m.py"; a module that fails to collect has classname "" and the
// dotted module as name. The file attribute, else the longest of files
// whose dotted path begins the classname, tells where the module path
// ends; without either the classname is kept as it is.
func nodeID(classname, name, file string, files []string) string {
	if file != "" {
		if id, ok := nodeIDFrom(file, classname, name); ok {
			return id
		}
	}
	// The longest match first: a/b.py before a.py for "a.b.TestC".
	cands := make([]string, 0, len(files))
	for _, f := range files {
		if d := dottedPath(f); d != "" && (classname == d || strings.HasPrefix(classname, d+".") ||
			(classname == "" && name == d)) {
			cands = append(cands, f)
		}
	}
	sort.SliceStable(cands, func(i, j int) bool { return len(cands[i]) > len(cands[j]) })
	for _, f := range cands {
		if id, ok := nodeIDFrom(f, classname, name); ok {
			return id
		}
	}
	if classname == "" {
		return name
	}
	return classname + "::" + name
}

// nodeIDFrom returns the node ID of a testcase of the test file file, if
// its classname fits that file.
func nodeIDFrom(file, classname, name string) (string, bool) {
	mod := dottedPath(file)
	switch {
	case classname == "" && name == mod:
		return file, true // the module itself: a collection error
	case classname == mod:
		return file + "::" + name, true
	case strings.HasPrefix(classname, mod+"."):
		classes := strings.ReplaceAll(classname[len(mod)+1:], ".", "::")
		return file + "::" + classes + "::" + name, true
	}
	return "", false
}
