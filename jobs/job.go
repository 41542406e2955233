// Package jobs is the domain of ci: jobs, their statuses and events, the
// service that queues, runs and records them, and the in-process broker that
// fans events out to watchers. It defines the small interfaces it needs from
// the outside world (Store, Archives, Executor) and imports only the standard
// library.
package jobs

import (
	"context"
	"errors"
	"io"
	"time"
)

// Status is where a job is in its lifecycle: queued, then running, then
// exactly one terminal status.
type Status string

// The statuses of a job. See DESIGN.md for what each one means.
const (
	StatusQueued   Status = "queued"
	StatusRunning  Status = "running"
	StatusPassed   Status = "passed"    // pytest exited 0
	StatusFailed   Status = "failed"    // pytest ran and exited non-zero
	StatusError    Status = "error"     // ci could not run the tests
	StatusTimedOut Status = "timed_out" // ran past its time limit
	StatusCanceled Status = "canceled"  // canceled by a user
)

// Terminal reports whether s is a final status: nothing follows it.
func (s Status) Terminal() bool {
	switch s {
	case StatusPassed, StatusFailed, StatusError, StatusTimedOut, StatusCanceled:
		return true
	}
	return false
}

// Valid reports whether s is one of the known statuses.
func (s Status) Valid() bool {
	return s == StatusQueued || s == StatusRunning || s.Terminal()
}

// Job is one submitted test run.
type Job struct {
	ID     string `json:"id"`
	Status Status `json:"status"`
	// Args are extra pytest arguments given by the client.
	Args []string `json:"args"`
	// Archive is the key of the uploaded project zip in Archives.
	Archive     string `json:"-"`
	ArchiveSize int64  `json:"archive_size"`

	CreatedAt  time.Time  `json:"created_at"`
	StartedAt  *time.Time `json:"started_at,omitempty"`
	FinishedAt *time.Time `json:"finished_at,omitempty"`
	// ExitCode is pytest's exit code, set when pytest ran to its end.
	ExitCode *int `json:"exit_code,omitempty"`
	// Reason says, for a human, why a job did not pass.
	Reason string `json:"reason,omitempty"`
	// LastSeq is the seq of the job's newest persisted event.
	LastSeq int64 `json:"last_seq"`
	// Replica names the ci-server that claimed the job and runs (or ran)
	// it; "" while it is queued.
	Replica string `json:"replica,omitempty"`
	// LeaseUntil is when the claim of a running job lapses unless its
	// replica renews it (see Store.RenewLeases); nil until it is claimed.
	// It is left as it was when the job ends.
	LeaseUntil *time.Time `json:"-"`
	// CancelRequested is set by Store.RequestCancel: the replica running
	// the job is to stop it and end it canceled.
	CancelRequested bool `json:"-"`
	// Timeout is how long the tests may run before they are stopped and
	// the job ends timed_out. It is set when the job is submitted.
	Timeout time.Duration `json:"-"`
	// Phase is the phase the job is in or ended in: "" until the executor
	// announces one (jobs without dependencies never do), then
	// PhaseInstall, then PhaseTest. It is saved with the phase event.
	Phase string `json:"phase,omitempty"`
	// Offsets says how much of the test phase's output streams the stored
	// events hold, in bytes of the raw stream. It is saved in the same transaction as
	// the events, so after a crash a re-attached job skips exactly that.
	Offsets Offsets `json:"-"`
}

// Offsets are byte positions in a job's raw stdout and stderr.
type Offsets struct {
	Stdout, Stderr int64
}

// EventType is the kind of an Event.
type EventType string

// The event types of the WebSocket protocol.
const (
	EventStatus EventType = "status" // a status change; the terminal one is last
	EventLog    EventType = "log"    // a chunk of output (not necessarily a whole line)
	EventResult EventType = "result" // a summary of the test run
	EventPhase  EventType = "phase"  // the job enters a phase: output that follows belongs to it
)

// The phases of a job that has dependencies to install. A job without any
// has no phase events: all of its output is the tests'.
const (
	// PhaseInstall installs the project's requirements; its output is
	// pip's. It may be skipped (one line says so) when they are cached.
	PhaseInstall = "install"
	// PhaseTest runs pytest.
	PhaseTest = "test"
)

// The output streams of a log event.
const (
	StreamStdout = "stdout"
	StreamStderr = "stderr"
)

// Event is one entry of a job's event log. Seq starts at 1 for each job and
// is gapless and strictly increasing; an event is persisted before anyone is
// told about it.
type Event struct {
	JobID string    `json:"-"`
	Seq   int64     `json:"seq"`
	Time  time.Time `json:"time"`
	Type  EventType `json:"type"`
	// Status is set on status events.
	Status Status `json:"status,omitempty"`
	// ExitCode and Reason are set on terminal status events, as on the job.
	ExitCode *int   `json:"exit_code,omitempty"`
	Reason   string `json:"reason,omitempty"`
	// Stream and Text are set on log events. Text is valid UTF-8.
	Stream string `json:"stream,omitempty"`
	Text   string `json:"text,omitempty"`
	// Phase is set on phase events: PhaseInstall or PhaseTest.
	Phase string `json:"phase,omitempty"`
	// Tests, DurationS and Failures are set on result events (ExitCode
	// too): the summary of pytest's per-test results.
	Tests     *TestCounts `json:"tests,omitempty"`
	DurationS float64     `json:"duration_s,omitempty"`
	Failures  []Failure   `json:"failures,omitempty"`

	// Raw, when set, is the event's JSON encoding, made once when the
	// Broker published it: every watcher of a live event sends these same bytes
	// instead of encoding the event again. Events read from a Store have
	// none. It must not be modified.
	Raw []byte `json:"-"`
}

// Terminal reports whether e is the terminal status event of its job.
func (e *Event) Terminal() bool {
	return e.Type == EventStatus && e.Status.Terminal()
}

// ListOptions selects a page of jobs, newest first.
type ListOptions struct {
	// Limit is the most jobs to return; 0 means a default.
	Limit int
	// Before, when set, returns only jobs older than the job with this ID.
	Before string
}

// Store persists jobs and their events. Implementations must be safe for
// concurrent use.
type Store interface {
	// CreateJob inserts a new job together with its first events, in one
	// transaction, and sets job.ID to a new unique ID that sorts by creation
	// time. job.LastSeq must equal the seq of the last event.
	CreateJob(ctx context.Context, job *Job, events []Event) error

	// Job returns the job with the given ID, or an ENOTFOUND error.
	Job(ctx context.Context, id string) (*Job, error)

	// Jobs returns a page of jobs, newest first.
	Jobs(ctx context.Context, opts ListOptions) ([]*Job, error)

	// JobsByStatus returns every job with the given status, oldest first.
	JobsByStatus(ctx context.Context, status Status) ([]*Job, error)

	// AppendEvents appends events to job's log and saves job's mutable
	// fields (status, times, exit code, reason, LastSeq) in one transaction.
	// The events must be gapless and continue the stored log exactly: the
	// first seq is the stored LastSeq+1 and job.LastSeq is the last seq.
	// Otherwise it returns an ECONFLICT error and writes nothing.
	AppendEvents(ctx context.Context, job *Job, events []Event) error

	// Events returns up to limit events of the job with seq > after, in
	// seq order. An unknown job has no events.
	Events(ctx context.Context, jobID string, after int64, limit int) ([]Event, error)

	// SaveTests replaces the per-test results of a job.
	SaveTests(ctx context.Context, jobID string, tests []TestCase) error

	// Tests returns the per-test results of a job in pytest's order.
	Tests(ctx context.Context, jobID string) ([]TestCase, error)

	// CountJobs returns how many jobs have the given status, cheaply
	// (Submit asks it for the queue's length).
	CountJobs(ctx context.Context, status Status) (int64, error)

	// ClaimJob takes the oldest queued job for replica, atomically: in one
	// transaction it sets the job's status to running, StartedAt to now,
	// Replica to replica and LeaseUntil to leaseUntil, and appends the
	// running status event (seq LastSeq+1, time now). Of claimers racing
	// for a job, in this process or any other sharing the database,
	// exactly one gets it; the others take the next queued job or none.
	// It returns the job as updated and its running event, or nil, nil
	// when no job is queued.
	ClaimJob(ctx context.Context, replica string, now, leaseUntil time.Time) (*Job, *Event, error)

	// RenewLeases extends to until the lease of each job of ids that is
	// still running and held by replica, and returns the state of every
	// job of ids that it knows (in any order).
	RenewLeases(ctx context.Context, replica string, ids []string, until time.Time) ([]Lease, error)

	// ExpiredJobs returns the running jobs held by replicas other than
	// replica whose lease ended before now, oldest first.
	ExpiredJobs(ctx context.Context, replica string, now time.Time) ([]*Job, error)

	// RequestCancel marks a running job as to be canceled by the replica
	// that runs it (Job.CancelRequested). An unknown job is an ENOTFOUND
	// error; a job that is not running is left as it is.
	RequestCancel(ctx context.Context, id string) error
}

// Lease is the state of a claimed job, as RenewLeases reports it.
type Lease struct {
	ID string
	// Held is true when the job is still running and held by the replica
	// that renewed it: false when another replica ended it (its lease had
	// expired) or it ended otherwise.
	Held bool
	// CancelRequested is set when a user asked, through any replica, to
	// cancel the job.
	CancelRequested bool
}

// Change is a commit to the store, by any server sharing it: new events
// of a job, or a request to cancel it.
type Change struct {
	JobID string
	// First and Last are the seqs of the committed events; 0 for a cancel
	// request.
	First, Last int64
	// Status is set when the events include a status event: the job was
	// created, claimed or ended.
	Status bool
	// Cancel is set for a cancel request (Store.RequestCancel).
	Cancel bool
	// Resync is set, alone, when changes may have been missed (the feed
	// lost its connection and is back): listeners should read the store
	// for what they care about.
	Resync bool
}

// ChangeFeed is implemented by stores that several ci-servers share (the
// PostgreSQL one): it tells each server what the others commit.
type ChangeFeed interface {
	// WatchChanges calls fn, from one goroutine, with every change
	// committed to the store by any server (this one included), in commit
	// order, until ctx ends; then it returns ctx's error. It reconnects
	// after a lost connection and then calls fn with a Resync change.
	WatchChanges(ctx context.Context, fn func(Change)) error
}

// Archives stores uploaded project archives (zip files) by content.
type Archives interface {
	// Put reads an archive from r to its end, stores it and returns its key
	// and size. Storing the same content twice yields the same key.
	Put(ctx context.Context, r io.Reader) (key string, size int64, err error)

	// Local returns the path of a local file holding the archive with the
	// given key, fetching it first from shared storage if the archives
	// are kept there; a missing archive is an ENOTFOUND error.
	Local(ctx context.Context, key string) (string, error)

	// Remove deletes the archive with the given key. Removing a missing
	// archive is not an error.
	Remove(key string) error
}

// Sweeper is implemented by executors that can remove what they hold of
// jobs that ended without them: a replica that comes back after its lease
// expired finds its jobs ended by another replica, and their containers
// still on its engine.
type Sweeper interface {
	// Sweep removes everything the executor holds of each job for which
	// ended reports true, and returns how many things it removed. ended
	// must report false for unknown jobs (other servers' on a shared
	// engine).
	Sweep(ctx context.Context, ended func(jobID string) bool) (int, error)
}

// Spec is what an Executor needs to run one job.
type Spec struct {
	JobID string
	// Archive is the local path of the project zip. The executor unpacks it
	// into /workspace of the test environment.
	Archive string
	// Args are extra arguments for pytest.
	Args []string
	// Retry is set when an earlier Run of the job was cut short during
	// its install phase (its server went away): the executor first
	// removes whatever that run left, even if ctx is already done.
	Retry bool
}

// Output receives a job's output as it is produced. Write and Phase are
// called from one goroutine at a time, in the order things happened; p is
// only valid during the call.
type Output interface {
	// Write hands out a chunk of one output stream (StreamStdout or
	// StreamStderr).
	Write(stream string, p []byte) error
	// Phase announces that the output that follows belongs to a new phase
	// (PhaseInstall, PhaseTest). An executor that installs dependencies
	// announces PhaseInstall before any of it, then PhaseTest right
	// before the test process's first byte: the output offsets that
	// Reattach relies on count from there. One that installs nothing need
	// not announce any phase.
	Phase(name string) error
}

// Result is how a finished test process ended.
type Result struct {
	// ExitCode is the exit code of the test process.
	ExitCode int
	// OOMKilled is true when the process was killed for exceeding its
	// memory limit.
	OOMKilled bool
	// MemoryLimit is the memory limit in bytes the process ran with, when
	// the executor knows it (0 otherwise), to explain an OOM kill.
	MemoryLimit int64
	// Report holds pytest's per-test results, when pytest wrote them (nil
	// otherwise).
	Report *TestReport
}

// TestReport is pytest's per-test results of one run.
type TestReport struct {
	Tests     []TestCase `json:"tests"`
	DurationS float64    `json:"duration_s"` // pytest's own total time
}

// TestCase is one test's result.
type TestCase struct {
	NodeID    string  `json:"nodeid"`  // e.g. tests/test_x.py::TestC::test_y[param]
	Outcome   string  `json:"outcome"` // passed, failed, error, skipped
	DurationS float64 `json:"duration_s"`
	Message   string  `json:"message,omitempty"` // failure, error or skip message, at most 4 KiB
}

// TestCounts counts tests by outcome.
type TestCounts struct {
	Total   int `json:"total"`
	Passed  int `json:"passed"`
	Failed  int `json:"failed"`
	Errors  int `json:"errors"`
	Skipped int `json:"skipped"`
}

// Counts counts the report's tests by outcome.
func (r *TestReport) Counts() TestCounts {
	var c TestCounts
	for _, t := range r.Tests {
		c.Total++
		switch t.Outcome {
		case "passed":
			c.Passed++
		case "failed":
			c.Failed++
		case "error":
			c.Errors++
		case "skipped":
			c.Skipped++
		}
	}
	return c
}

// Failure is a failed or erroring test as a result event lists it.
type Failure struct {
	NodeID  string `json:"nodeid"`
	Message string `json:"message,omitempty"`
}

// Executor runs a job's tests in an isolated environment.
//
// Run prepares the environment (for Docker: image, container, project
// files), starts `python -m pytest` in the project's root and streams its
// output to out chunk by chunk as it is produced, stdout and stderr kept
// apart. It returns when the process has exited and all of its output has
// been written to out. A non-nil error means the tests could not be run (or
// their run could not be followed); its message is shown to the user as the
// job's reason.
//
// When ctx is canceled, Run stops the process and returns ctx's error
// promptly. Whatever way it returns, Run leaves nothing behind (no
// container, volume or temporary file). Run is safe to call concurrently for
// different jobs.
type Executor interface {
	Run(ctx context.Context, spec Spec, out Output) (Result, error)
}

// ErrDetach is the context cause with which the service stops following a
// job without stopping it, when ci-server shuts down: the executor returns
// promptly and leaves the test process running, for Reattach after the
// restart.
var ErrDetach = errors.New("ci-server is shutting down; the job keeps running")

// ErrGone (wrapped) is returned by Reattach when the job's test process no
// longer exists.
var ErrGone = errors.New("the job's test process is gone")

// Reattacher is implemented by executors that can pick up a job whose
// server went away (crashed, or shut down with ErrDetach).
type Reattacher interface {
	// Reattach finds the test process an earlier Run started for
	// spec.JobID, writes its whole output to out from the very first byte
	// (stdout and stderr kept apart; the caller skips what it already
	// has), follows it until the process exits if it still runs, and
	// returns like Run. It returns an error wrapping ErrGone if there is no
	// such process. Once it has returned (except on ErrDetach) nothing of
	// the job is left behind. ctx works as for Run.
	//
	// Only the test phase is re-attached: Reattach announces no phase, and
	// its output offsets count from the test process's first byte. A job
	// whose server went away during PhaseInstall is run again from the
	// start with Run instead, which must first clean up what the earlier
	// Run of the same job left.
	Reattach(ctx context.Context, spec Spec, out Output) (Result, error)
}

// utcNow returns the current time in UTC to the microsecond: the precision
// that every store keeps (PostgreSQL's), so that an event sent live and
// the same event read back from the store say the same time.
func utcNow() time.Time {
	return time.Now().UTC().Truncate(time.Microsecond)
}
