package e2e

import (
	"fmt"
	"regexp"
	"strings"
	"testing"

	"ci/client"
)

// pytestSummaryRE matches pytest's last line, such as "===== 1 failed,
// 2 passed in 0.12s =====".
var pytestSummaryRE = regexp.MustCompile(`(?m)^=+ (.*) in [0-9.]+s(?: \([0-9:]+\))? =+$`)

// countsRE matches one count of pytest's summary or of ci's.
var countsRE = regexp.MustCompile(`(\d+) (passed|failed|errors?|skipped)`)

// parseCounts adds up the counts that text names.
func parseCounts(text string) client.TestCounts {
	var c client.TestCounts
	for _, m := range countsRE.FindAllStringSubmatch(text, -1) {
		var n int
		fmt.Sscan(m[1], &n)
		switch m[2] {
		case "passed":
			c.Passed += n
		case "failed":
			c.Failed += n
		case "error", "errors":
			c.Errors += n
		case "skipped":
			c.Skipped += n
		}
	}
	c.Total = c.Passed + c.Failed + c.Errors + c.Skipped
	return c
}

// TestMixedResults runs a fixture with passing, failing, erroring and
// skipped tests: ci's summary line and GET /api/v1/jobs/{id}/tests count
// what pytest's own summary line says.
func TestMixedResults(t *testing.T) {
	needEngine(t)
	s := startServer(t, t.TempDir())
	r := s.ci(t, fixture(t, "mixed"), "submit", "test")
	id := jobID(t, r)
	if r.code != 1 {
		t.Fatalf("exit %d, want 1\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	m := pytestSummaryRE.FindAllStringSubmatch(r.stdout, -1)
	if m == nil {
		t.Fatalf("stdout lacks pytest's summary line:\n%s", r.stdout)
	}
	pytest := m[len(m)-1][1]
	if pytest != "1 failed, 2 passed, 1 skipped, 1 error" {
		t.Errorf("pytest's summary %q, want the fixture's \"1 failed, 2 passed, 1 skipped, 1 error\"", pytest)
	}
	want := parseCounts(pytest)

	ciLine := regexp.MustCompile(`(?m)^ci: (\d+) tests: (.*) in [0-9.]+s$`).FindStringSubmatch(r.stderr)
	if ciLine == nil {
		t.Fatalf("stderr lacks ci's summary line:\n%s", r.stderr)
	}
	if got := parseCounts(ciLine[2]); got != want || ciLine[1] != fmt.Sprint(want.Total) {
		t.Errorf("ci's summary %q, want the counts of pytest's %q", ciLine[0], pytest)
	}
	for _, node := range []string{"test_mixed.py::test_wrong", "test_mixed.py::test_broken_fixture"} {
		if !strings.Contains(r.stderr, "ci: FAILED "+node+"\n") {
			t.Errorf("stderr lacks \"ci: FAILED %s\":\n%s", node, r.stderr)
		}
	}

	var report struct {
		Counts client.TestCounts `json:"counts"`
		Tests  []struct {
			NodeID  string `json:"nodeid"`
			Outcome string `json:"outcome"`
		} `json:"tests"`
	}
	getJSON(t, s.url+"/api/v1/jobs/"+id+"/tests", &report)
	if report.Counts != want {
		t.Errorf("GET /tests counts %+v, want %+v (pytest's %q)", report.Counts, want, pytest)
	}
	outcomes := map[string]string{}
	for _, tc := range report.Tests {
		outcomes[tc.NodeID] = tc.Outcome
	}
	wantOutcomes := map[string]string{
		"test_mixed.py::test_adds":            "passed",
		"test_mixed.py::test_concatenates":    "passed",
		"test_mixed.py::test_wrong":           "failed",
		"test_mixed.py::test_broken_fixture":  "error",
		"test_mixed.py::test_not_on_this_box": "skipped",
	}
	if fmt.Sprint(outcomes) != fmt.Sprint(wantOutcomes) {
		t.Errorf("GET /tests outcomes %v, want %v", outcomes, wantOutcomes)
	}
}
