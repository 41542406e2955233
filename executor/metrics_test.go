package executor

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeMetrics records the executor's measurements.
type fakeMetrics struct {
	mu     sync.Mutex
	starts map[string]int
	deps   []string
}

func (m *fakeMetrics) ContainerStarted(kind string, took time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if took <= 0 {
		panic(fmt.Sprintf("container start of %s took %s", kind, took))
	}
	if m.starts == nil {
		m.starts = map[string]int{}
	}
	m.starts[kind]++
}

func (m *fakeMetrics) DepsResolved(result string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.deps = append(m.deps, result)
}

// check fails the test unless m has counted tests and installs container
// starts and the dependency results deps, in order.
func (m *fakeMetrics) check(t *testing.T, tests, installs int, deps ...string) {
	t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.starts[ContainerTest] != tests || m.starts[ContainerInstall] != installs {
		t.Fatalf("container starts %v, want %d test and %d install", m.starts, tests, installs)
	}
	if got, want := strings.Join(m.deps, ","), strings.Join(deps, ","); got != want {
		t.Fatalf("dependency results %q, want %q", got, want)
	}
}
