package executor

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"ci/jobs"
)

// The testdata reports were written by pytest 7.2.1 in ci-python:latest,
// for the project of testdata/junit_sample_test.py.txt (as
// tests/test_sample.py) with tests/test_broken.py importing a missing
// module and pkg/test_doc.py holding a doctest, run with --doctest-modules
// --continue-on-collection-errors. pytest's summary: 4 failed, 6 passed,
// 1 skipped, 1 xfailed, 5 errors.
var sampleFiles = []string{"pkg/__init__.py", "pkg/test_doc.py", "tests/test_broken.py", "tests/test_sample.py"}

func sampleTests() []jobs.TestCase {
	const s = "tests/test_sample.py::"
	teardown := `failed on teardown with "RuntimeError: teardown exploded"`
	return []jobs.TestCase{
		{NodeID: "tests/test_broken.py", Outcome: "error", Message: "collection failure"},
		{NodeID: "tests/test_broken.py", Outcome: "error", Message: "collection failure"},
		{NodeID: "pkg/test_doc.py::pkg.test_doc.add", Outcome: "passed"},
		{NodeID: s + "test_pass", Outcome: "passed"},
		{NodeID: s + "test_fail", Outcome: "failed", Message: "AssertionError: arithmetic is broken\nassert (1 + 1) == 3"},
		{NodeID: s + "test_fixture_error", Outcome: "error", Message: `failed on setup with "ValueError: fixture exploded"`},
		{NodeID: s + "test_fail_and_teardown_error", Outcome: "failed", Message: "assert False"},
		{NodeID: s + "test_fail_and_teardown_error", Outcome: "error", Message: teardown},
		{NodeID: s + "test_pass_teardown_error", Outcome: "passed"},
		{NodeID: s + "test_pass_teardown_error", Outcome: "error", Message: teardown},
		{NodeID: s + "test_skipped", Outcome: "skipped", Message: "not today"},
		{NodeID: s + "test_xfail", Outcome: "skipped", Message: "known bug"},
		{NodeID: s + "TestClass::test_method", Outcome: "passed"},
		{NodeID: s + "TestClass::TestNested::test_inner", Outcome: "failed",
			Message: "AssertionError: assert 'a' == 'b'\n  - b\n  + a"},
		{NodeID: s + "test_param[1]", Outcome: "passed"},
		{NodeID: s + "test_param[2]", Outcome: "failed", Message: "assert 2 != 2"},
		{NodeID: s + "test_param[a.b::c]", Outcome: "passed"},
	}
}

// withoutDurations returns tests with DurationS zeroed.
func withoutDurations(tests []jobs.TestCase) []jobs.TestCase {
	out := make([]jobs.TestCase, len(tests))
	for i, tc := range tests {
		tc.DurationS = 0
		out[i] = tc
	}
	return out
}

func TestParseJUnitSamples(t *testing.T) {
	tests := []struct {
		name  string
		file  string
		files []string
	}{
		// xunit1 carries the file: the project's files are not needed.
		{"xunit1", "testdata/junit-xunit1.xml", nil},
		{"xunit1 with files", "testdata/junit-xunit1.xml", sampleFiles},
		// xunit2 (a user's -o junit_family=xunit2) has no file attribute.
		{"xunit2 with files", "testdata/junit-xunit2.xml", sampleFiles},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := os.ReadFile(tt.file)
			if err != nil {
				t.Fatal(err)
			}
			rep, err := parseJUnit(bytes.NewReader(b), tt.files)
			if err != nil {
				t.Fatalf("parseJUnit: %v", err)
			}
			want := sampleTests()
			if got := withoutDurations(rep.Tests); !reflect.DeepEqual(got, want) {
				for i := 0; i < max(len(got), len(want)); i++ {
					var g, w jobs.TestCase
					if i < len(got) {
						g = got[i]
					}
					if i < len(want) {
						w = want[i]
					}
					if g != w {
						t.Errorf("test %d: got %+v, want %+v", i, g, w)
					}
				}
			}
			// pytest's summary: 4 failed, 6 passed, 1 skipped, 1 xfailed, 5 errors.
			wantCounts := jobs.TestCounts{Total: 17, Passed: 6, Failed: 4, Errors: 5, Skipped: 2}
			if c := rep.Counts(); c != wantCounts {
				t.Errorf("counts=%+v, want %+v", c, wantCounts)
			}
			if rep.DurationS <= 0 {
				t.Errorf("DurationS=%v, want pytest's total time", rep.DurationS)
			}
			if tt.name == "xunit1" {
				if rep.DurationS != 0.088 {
					t.Errorf("DurationS=%v, want 0.088", rep.DurationS)
				}
				if d := rep.Tests[2].DurationS; d != 0.014 {
					t.Errorf("doctest DurationS=%v, want 0.014", d)
				}
			}
		})
	}
}

func TestParseJUnitXunit2WithoutFiles(t *testing.T) {
	b, err := os.ReadFile("testdata/junit-xunit2.xml")
	if err != nil {
		t.Fatal(err)
	}
	rep, err := parseJUnit(bytes.NewReader(b), nil)
	if err != nil {
		t.Fatal(err)
	}
	// Nothing tells where the module path ends: the classname is kept.
	if got, want := rep.Tests[3].NodeID, "tests.test_sample::test_pass"; got != want {
		t.Errorf("NodeID=%q, want %q", got, want)
	}
}

// suite wraps testcases in a pytest report.
func suite(cases string) string {
	return `<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" time="1.5">` +
		cases + `</testsuite></testsuites>`
}

func TestParseJUnit(t *testing.T) {
	long := strings.Repeat("é", 3000) // 6000 bytes
	tests := []struct {
		name  string
		xml   string
		files []string
		want  []jobs.TestCase
	}{
		{
			name: "file attribute and nested classes",
			xml:  suite(`<testcase classname="tests.v1.2.test_x.TestA.TestB" name="test_y[a.b]" file="tests/v1.2/test_x.py" line="3" time="0.25"/>`),
			want: []jobs.TestCase{{NodeID: "tests/v1.2/test_x.py::TestA::TestB::test_y[a.b]", Outcome: "passed", DurationS: 0.25}},
		},
		{
			name:  "files: the longest dotted path wins",
			xml:   suite(`<testcase classname="a.b.TestC" name="test_d" time="0.1"/>`),
			files: []string{"a.py", "a/b.py", "a/__init__.py"},
			want:  []jobs.TestCase{{NodeID: "a/b.py::TestC::test_d", Outcome: "passed", DurationS: 0.1}},
		},
		{
			name:  "files: a module's collection error",
			xml:   suite(`<testcase classname="" name="a.b" time="0"><error message="collection failure">boom</error></testcase>`),
			files: []string{"a/b.py"},
			want:  []jobs.TestCase{{NodeID: "a/b.py", Outcome: "error", Message: "collection failure"}},
		},
		{
			name:  "a file attribute that does not fit falls back to files",
			xml:   suite(`<testcase classname="t.test_m" name="test_f" file="elsewhere.py"/>`),
			files: []string{"t/test_m.py"},
			want:  []jobs.TestCase{{NodeID: "t/test_m.py::test_f", Outcome: "passed"}},
		},
		{
			name: "message from the text when there is no attribute",
			xml: suite(`<testcase classname="m" name="t" file="m.py"><failure>

  first line
second line</failure></testcase>`),
			want: []jobs.TestCase{{NodeID: "m.py::t", Outcome: "failed", Message: "first line"}},
		},
		{
			name: "message cut to 4 KiB on a rune boundary",
			xml:  suite(`<testcase classname="m" name="t" file="m.py"><error message="` + long + `"/></testcase>`),
			want: []jobs.TestCase{{NodeID: "m.py::t", Outcome: "error", Message: long[:4096]}},
		},
		{
			name: "system-out alone is a pass; a root testsuite works",
			xml:  `<testsuite time="2"><testcase classname="m" name="t" file="m.py" time="x"><system-out>hi</system-out></testcase></testsuite>`,
			want: []jobs.TestCase{{NodeID: "m.py::t", Outcome: "passed"}},
		},
		{
			name: "no tests",
			xml:  suite(""),
			want: []jobs.TestCase{},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rep, err := parseJUnit(strings.NewReader(tt.xml), tt.files)
			if err != nil {
				t.Fatalf("parseJUnit: %v", err)
			}
			if !reflect.DeepEqual(rep.Tests, tt.want) {
				t.Errorf("Tests=%+v\nwant  %+v", rep.Tests, tt.want)
			}
			for _, tc := range rep.Tests {
				if len(tc.Message) > maxMessage || !utf8.ValidString(tc.Message) {
					t.Errorf("message of %d bytes, valid UTF-8 %v", len(tc.Message), utf8.ValidString(tc.Message))
				}
			}
		})
	}
}

func TestParseJUnitErrors(t *testing.T) {
	full, err := os.ReadFile("testdata/junit-xunit1.xml")
	if err != nil {
		t.Fatal(err)
	}
	for name, in := range map[string]string{
		"empty":     "",
		"not xml":   "collected 3 items\n",
		"truncated": string(full[:len(full)/2]),
		"no suite":  `<foo/>`,
	} {
		if rep, err := parseJUnit(strings.NewReader(in), nil); err == nil {
			t.Errorf("%s: parseJUnit=%+v, want an error", name, rep)
		}
	}
}

func TestWithReportDir(t *testing.T) {
	entries := planFiles(t, map[string]string{
		"test_a.py":               "",
		".ci-results/report.xml":  "<forged/>",
		".ci-results-other/x.txt": "kept",
	})
	got := withReportDir(entries, 1000, 2000)
	var names []string
	for _, e := range got {
		names = append(names, e.hdr.Name)
	}
	last := got[len(got)-1].hdr
	if last.Name != ".ci-results/" || last.Typeflag != tar.TypeDir || last.Mode != 0o700 || last.Uid != 1000 || last.Gid != 2000 {
		t.Errorf("last entry %+v, want .ci-results/ owned by 1000:2000, 0700", last)
	}
	for _, n := range names[:len(names)-1] {
		if strings.HasPrefix(n, ".ci-results/") || n == ".ci-results/" {
			t.Errorf("entries %q: the project's own %s was kept", names, n)
		}
	}
	if !slices.Contains(names, ".ci-results-other/x.txt") || !slices.Contains(names, "test_a.py") {
		t.Errorf("entries %q: want the project's other files", names)
	}
	if ReportFile != Workspace+"/.ci-results/report.xml" {
		t.Errorf("ReportFile=%q is not in the directory withReportDir makes", ReportFile)
	}
}

func TestFakeReportErrors(t *testing.T) {
	for _, line := range []string{`report {}`, `report "{"`, `report "{\"tests\":3}"`} {
		if _, err := parseFakeScript([]byte(line + "\n")); err == nil {
			t.Errorf("%s: no error", line)
		}
	}
}

// reportProject is a project whose pytest run has one test of each
// outcome, a class and a parametrized test; its fake script reports the
// same. One test checks the sandbox around the report from the inside.
func reportProject(t *testing.T, extra ...string) (map[string]string, []jobs.TestCase) {
	t.Helper()
	const f = "tests/test_r.py::"
	want := []jobs.TestCase{
		{NodeID: f + "test_pass", Outcome: "passed"},
		{NodeID: f + "test_fail", Outcome: "failed", Message: "AssertionError: boom\nassert False"},
		{NodeID: f + "test_err", Outcome: "error", Message: `failed on setup with "ValueError: fixture exploded"`},
		{NodeID: f + "test_skip", Outcome: "skipped", Message: "nope"},
		{NodeID: f + "TestC::test_p[1]", Outcome: "passed"},
		{NodeID: f + "TestC::test_p[2]", Outcome: "failed", Message: "assert 2 == 1"},
		{NodeID: f + "test_sandbox", Outcome: "passed"},
	}
	rep, err := json.Marshal(jobs.TestReport{Tests: want, DurationS: 0.5})
	if err != nil {
		t.Fatal(err)
	}
	lines := append(extra, `report `+strconv.Quote(string(rep)), `exit 1`)
	return map[string]string{
		"tests/test_r.py": `import os, stat, time
import pytest


def test_pass():
    pass


def test_fail():
    assert False, "boom"


@pytest.fixture
def broken():
    raise ValueError("fixture exploded")


def test_err(broken):
    pass


@pytest.mark.skip(reason="nope")
def test_skip():
    pass


class TestC:
    @pytest.mark.parametrize("x", [1, 2])
    def test_p(self, x):
        assert x == 1


def test_sandbox():
    assert not os.access("/workspace", os.W_OK)
    with pytest.raises(PermissionError):
        open("/workspace/x", "w")
    st = os.stat("/workspace/.ci-results")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (os.getuid(), os.getgid(), 0o700)
    if os.environ.get("CI_TEST_SLOW"):
        print("marker", flush=True)
        time.sleep(2)
`,
		FakeScript: script(lines...),
	}, want
}

// assertReport checks that res carries want's tests.
func assertReport(t *testing.T, res jobs.Result, want []jobs.TestCase) {
	t.Helper()
	if res.ExitCode != 1 {
		t.Errorf("exit code=%d, want 1", res.ExitCode)
	}
	if res.Report == nil {
		t.Fatal("Report=nil")
	}
	if got := withoutDurations(res.Report.Tests); !reflect.DeepEqual(got, want) {
		t.Errorf("Report.Tests=%+v\nwant         %+v", got, want)
	}
	if res.Report.DurationS <= 0 {
		t.Errorf("Report.DurationS=%v, want > 0", res.Report.DurationS)
	}
}

func TestFakeReport(t *testing.T) {
	testReport(t, func(t *testing.T) reattacher { return &Fake{} })
}

func TestDockerReport(t *testing.T) {
	newTestDocker(t, testImage(), true) // skip early, once, if no engine
	testReport(t, func(t *testing.T) reattacher { return newTestDocker(t, testImage(), true) })
}

// testReport checks the Report of Run and of Reattach.
func testReport(t *testing.T, newExec func(t *testing.T) reattacher) {
	t.Run("run", func(t *testing.T) {
		ex := newExec(t)
		files, want := reportProject(t)
		res, rec := mustRun(t, ex, newSpec(t, files))
		assertReport(t, res, want)
		if out := rec.text(jobs.StreamStdout); t.Failed() {
			t.Logf("stdout:\n%s", out)
		}
	})

	t.Run("no report", func(t *testing.T) {
		ex := newExec(t)
		// pytest writes the report where the user says: there is none.
		spec := newSpec(t, map[string]string{
			"test_ok.py": "def test_ok():\n    pass\n",
			FakeScript:   script(`stdout "1 passed\n"`, `exit 0`),
		}, "--junitxml=/tmp/mine.xml")
		res, _ := mustRun(t, ex, spec)
		if res.ExitCode != 0 || res.Report != nil {
			t.Errorf("exit code=%d Report=%+v, want 0 and nil", res.ExitCode, res.Report)
		}
	})

	t.Run("reattach", func(t *testing.T) {
		ex := newExec(t)
		files, want := reportProject(t, `stdout "marker\n"`, `sleep 2s`)
		files["conftest.py"] = "import os\nos.environ['CI_TEST_SLOW'] = '1'\n"
		spec := newSpec(t, files, "-s")
		rec := &recorder{}
		runDetached(t, ex, spec, rec, "marker")
		res, _, err := reattach(t, ex, spec)
		if err != nil {
			t.Fatalf("Reattach: %v", err)
		}
		assertReport(t, res, want)
		if _, _, err := reattach(t, ex, spec); !errors.Is(err, jobs.ErrGone) {
			t.Errorf("second Reattach: err=%v, want jobs.ErrGone", err)
		}
	})
}
