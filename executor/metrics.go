package executor

import "time"

// Metrics receives the Docker executor's measurements. Its methods must be
// safe for concurrent use and must not block.
type Metrics interface {
	// ContainerStarted reports how long the engine took to start a
	// container of kind (ContainerTest or ContainerInstall): the start
	// call alone, when it succeeded.
	ContainerStarted(kind string, took time.Duration)
	// DepsResolved counts the dependency phase of a run whose project
	// has a requirements file, by result: DepsInstalled, DepsCached, or
	// DepsFailed when the install ran and failed (not when the run was
	// canceled, timed out or detached meanwhile).
	DepsResolved(result string)
}

// The kinds of container, as Metrics names them.
const (
	ContainerTest    = "test"    // runs pytest
	ContainerInstall = "install" // installs requirements.txt
)

// The results of a dependency phase, as Metrics names them.
const (
	DepsInstalled = "installed"
	DepsCached    = "cached"
	DepsFailed    = "failed"
)

// nopMetrics is the Metrics of a Docker configured without any.
type nopMetrics struct{}

func (nopMetrics) ContainerStarted(string, time.Duration) {}
func (nopMetrics) DepsResolved(string)                    {}
