package client

import "time"

// The statuses of a job: queued, then running, then one terminal status.
const (
	StatusQueued   = "queued"
	StatusRunning  = "running"
	StatusPassed   = "passed"
	StatusFailed   = "failed"
	StatusError    = "error"
	StatusTimedOut = "timed_out"
	StatusCanceled = "canceled"
)

// The event types of the WebSocket protocol.
const (
	EventStatus = "status"
	EventLog    = "log"
	EventResult = "result"
	EventPhase  = "phase" // the job enters a phase: output that follows belongs to it
)

// The phases of a job whose project has dependencies to install (a
// requirements.txt): first PhaseInstall, whose output is pip's, then
// PhaseTest, pytest's. A job without dependencies has no phase events.
const (
	PhaseInstall = "install"
	PhaseTest    = "test"
)

// The streams of a log event.
const (
	StreamStdout = "stdout"
	StreamStderr = "stderr"
)

// Terminal reports whether status is a final status of a job.
func Terminal(status string) bool {
	switch status {
	case StatusPassed, StatusFailed, StatusError, StatusTimedOut, StatusCanceled:
		return true
	}
	return false
}

// Job is a job as the API shows it.
type Job struct {
	ID     string `json:"id"`
	Status string `json:"status"`
	// Args are the extra pytest arguments.
	Args        []string `json:"args"`
	ArchiveSize int64    `json:"archive_size"`

	CreatedAt  time.Time  `json:"created_at"`
	StartedAt  *time.Time `json:"started_at,omitempty"`
	FinishedAt *time.Time `json:"finished_at,omitempty"`
	// ExitCode is pytest's exit code, when pytest ran to its end.
	ExitCode *int `json:"exit_code,omitempty"`
	// Reason says why a job did not pass.
	Reason string `json:"reason,omitempty"`
	// LastSeq is the seq of the job's newest event.
	LastSeq int64 `json:"last_seq"`
	// Replica names the ci-server that claimed and runs (or ran) the
	// job; "" while it is queued.
	Replica string `json:"replica,omitempty"`
	// Phase is the phase the job is in or ended in: "" until it enters
	// one (a job without dependencies never does), then PhaseInstall,
	// then PhaseTest.
	Phase string `json:"phase,omitempty"`

	// EventsURL is the job's WebSocket event stream; WebURL its web page.
	EventsURL string `json:"events_url,omitempty"`
	WebURL    string `json:"web_url,omitempty"`
}

// Terminal reports whether the job has ended.
func (j *Job) Terminal() bool { return Terminal(j.Status) }

// JobList is one page of jobs, newest first.
type JobList struct {
	Jobs []Job `json:"jobs"`
	// Next is the value of before for the next page; "" on the last page.
	Next string `json:"next"`
}

// Event is one entry of a job's event stream. Seq starts at 1 and is
// gapless.
type Event struct {
	Seq  int64     `json:"seq"`
	Time time.Time `json:"time"`
	Type string    `json:"type"`
	// Stream and Text are set on log events. Text is a chunk of output,
	// not necessarily a whole line.
	Stream string `json:"stream,omitempty"`
	Text   string `json:"text,omitempty"`
	// Status is set on status events; ExitCode and Reason on terminal ones.
	Status   string `json:"status,omitempty"`
	ExitCode *int   `json:"exit_code,omitempty"`
	Reason   string `json:"reason,omitempty"`
	// Phase is set on phase events: PhaseInstall or PhaseTest.
	Phase string `json:"phase,omitempty"`
	// Tests, DurationS and Failures are set on result events (ExitCode
	// too): the summary of pytest's per-test results.
	Tests     *TestCounts `json:"tests,omitempty"`
	DurationS float64     `json:"duration_s,omitempty"`
	Failures  []Failure   `json:"failures,omitempty"`
}

// TestCounts counts a job's tests by outcome.
type TestCounts struct {
	Total   int `json:"total"`
	Passed  int `json:"passed"`
	Failed  int `json:"failed"`
	Errors  int `json:"errors"`
	Skipped int `json:"skipped"`
}

// Failure is a failed or erroring test of a result event.
type Failure struct {
	NodeID  string `json:"nodeid"`
	Message string `json:"message,omitempty"`
}

// Terminal reports whether e is the terminal status event of its job: the
// last one.
func (e Event) Terminal() bool { return e.Type == EventStatus && Terminal(e.Status) }

// Exit codes of ci for job endings other than pytest's own codes.
const (
	ExitError    = 125 // the CI system could not run the tests
	ExitTimedOut = 124
	ExitCanceled = 130
)

// ExitCode is the exit code of ci for a job that ended with status:
// 0 for passed, pytest's exitCode for failed (1 when it is unknown or
// zero), 125 for error, 124 for timed_out, 130 for canceled, and 125 for
// any other status.
func ExitCode(status string, exitCode *int) int {
	switch status {
	case StatusPassed:
		return 0
	case StatusFailed:
		if exitCode != nil && *exitCode != 0 {
			return *exitCode
		}
		return 1
	case StatusTimedOut:
		return ExitTimedOut
	case StatusCanceled:
		return ExitCanceled
	default:
		return ExitError
	}
}
