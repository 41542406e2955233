package persistence

import (
	"encoding/json"
	"fmt"
	"time"

	"ci/jobs"
)

// jobRow is a row of the jobs table.
type jobRow struct {
	ID          string     `gorm:"primaryKey;type:text;not null;index:idx_jobs_status_id,priority:2"`
	Status      string     `gorm:"type:text;not null;index:idx_jobs_status_id,priority:1"`
	Args        string     `gorm:"type:text;not null"` // JSON array of strings
	Archive     string     `gorm:"type:text;not null"`
	ArchiveSize int64      `gorm:"not null"`
	CreatedAt   time.Time  `gorm:"not null;autoCreateTime:false"`
	StartedAt   *time.Time `gorm:""`
	FinishedAt  *time.Time `gorm:""`
	ExitCode    *int       `gorm:""`
	Reason      string     `gorm:"type:text;not null"`
	LastSeq     int64      `gorm:"not null"`
	TimeoutMS   int64      `gorm:"column:timeout_ms;not null;default:0"` // 0: the server's maximum
	// StdoutBytes and StderrBytes are the job's output offsets (see
	// jobs.Offsets), saved with the events they account for.
	StdoutBytes int64 `gorm:"not null;default:0"`
	StderrBytes int64 `gorm:"not null;default:0"`
	// Phase is the job's phase (jobs.PhaseInstall, jobs.PhaseTest), saved
	// with its phase event; "" when it has none.
	Phase string `gorm:"type:text;not null;default:''"`
	// Replica is the ci-server that claimed the job ("" while queued, and
	// for jobs run before replicas shared a store); LeaseUntil is when its
	// claim lapses (NULL for such jobs: they never expire).
	Replica    string     `gorm:"type:text;not null;default:''"`
	LeaseUntil *time.Time `gorm:""`
	// CancelRequested is set by RequestCancel for the replica running
	// the job.
	CancelRequested bool `gorm:"not null;default:false"`

	// Events is only here so that AutoMigrate declares the foreign key
	// events.job_id -> jobs.id. It is never loaded or saved.
	Events []eventRow `gorm:"foreignKey:JobID;references:ID;constraint:OnDelete:CASCADE"`
}

// TableName implements gorm's schema.Tabler.
func (jobRow) TableName() string { return "jobs" }

// eventRow is a row of the events table, whose primary key is (job_id, seq).
type eventRow struct {
	JobID    string    `gorm:"primaryKey;type:text;not null;autoIncrement:false"`
	Seq      int64     `gorm:"primaryKey;not null;autoIncrement:false"`
	Time     time.Time `gorm:"not null"`
	Type     string    `gorm:"type:text;not null"`
	Status   string    `gorm:"type:text;not null"`
	ExitCode *int      `gorm:""`
	Reason   string    `gorm:"type:text;not null"`
	Stream   string    `gorm:"type:text;not null"`
	Text     string    `gorm:"type:text;not null"`
	// Data holds, as JSON, the fields of a result event (test counts,
	// duration, failures) or a phase event (the phase); empty for other
	// events.
	Data string `gorm:"type:text;not null;default:''"`
}

// eventExtra is what eventRow.Data holds.
type eventExtra struct {
	Phase     string           `json:"phase,omitempty"`
	Tests     *jobs.TestCounts `json:"tests,omitempty"`
	DurationS float64          `json:"duration_s,omitempty"`
	Failures  []jobs.Failure   `json:"failures,omitempty"`
}

// eventData encodes the result and phase fields of e, or "" when it has
// none.
func eventData(e *jobs.Event) (string, error) {
	if e.Tests == nil && e.DurationS == 0 && len(e.Failures) == 0 && e.Phase == "" {
		return "", nil
	}
	b, err := json.Marshal(eventExtra{Phase: e.Phase, Tests: e.Tests, DurationS: e.DurationS, Failures: e.Failures})
	if err != nil {
		return "", fmt.Errorf("encode result event: %w", err)
	}
	return string(b), nil
}

// testRow is a row of the tests table: one test's result in a job.
type testRow struct {
	JobID     string  `gorm:"primaryKey;type:text;not null;autoIncrement:false"`
	Idx       int     `gorm:"primaryKey;not null;autoIncrement:false"` // order in pytest's report
	NodeID    string  `gorm:"type:text;not null"`
	Outcome   string  `gorm:"type:text;not null"`
	DurationS float64 `gorm:"not null"`
	Message   string  `gorm:"type:text;not null"`
}

// TableName implements gorm's schema.Tabler.
func (testRow) TableName() string { return "tests" }

// TableName implements gorm's schema.Tabler.
func (eventRow) TableName() string { return "events" }

// newJobRow converts a job to a row. Times are stored in UTC.
func newJobRow(j *jobs.Job) (jobRow, error) {
	args := j.Args
	if args == nil {
		args = []string{}
	}
	b, err := json.Marshal(args)
	if err != nil {
		return jobRow{}, fmt.Errorf("encode args: %w", err)
	}
	return jobRow{
		ID:          j.ID,
		Status:      string(j.Status),
		Args:        string(b),
		Archive:     j.Archive,
		ArchiveSize: j.ArchiveSize,
		CreatedAt:   j.CreatedAt.UTC(),
		StartedAt:   utcPtr(j.StartedAt),
		FinishedAt:  utcPtr(j.FinishedAt),
		ExitCode:    j.ExitCode,
		Reason:      j.Reason,
		LastSeq:     j.LastSeq,
		TimeoutMS:   j.Timeout.Milliseconds(),
		StdoutBytes: j.Offsets.Stdout,
		StderrBytes: j.Offsets.Stderr,
		Phase:       j.Phase,
		Replica:     j.Replica,
		LeaseUntil:  utcPtr(j.LeaseUntil),

		CancelRequested: j.CancelRequested,
	}, nil
}

// job converts a row back to a job.
func (r *jobRow) job() (*jobs.Job, error) {
	var args []string
	if err := json.Unmarshal([]byte(r.Args), &args); err != nil {
		return nil, fmt.Errorf("decode args of job %q: %w", r.ID, err)
	}
	return &jobs.Job{
		ID:          r.ID,
		Status:      jobs.Status(r.Status),
		Args:        args,
		Archive:     r.Archive,
		ArchiveSize: r.ArchiveSize,
		CreatedAt:   r.CreatedAt.UTC(),
		StartedAt:   utcPtr(r.StartedAt),
		FinishedAt:  utcPtr(r.FinishedAt),
		ExitCode:    r.ExitCode,
		Reason:      r.Reason,
		LastSeq:     r.LastSeq,
		Timeout:     time.Duration(r.TimeoutMS) * time.Millisecond,
		Offsets:     jobs.Offsets{Stdout: r.StdoutBytes, Stderr: r.StderrBytes},
		Phase:       r.Phase,
		Replica:     r.Replica,
		LeaseUntil:  utcPtr(r.LeaseUntil),

		CancelRequested: r.CancelRequested,
	}, nil
}

// newEventRows converts events to rows of the job with the given ID.
func newEventRows(jobID string, events []jobs.Event) []eventRow {
	rows := make([]eventRow, len(events))
	for i := range events {
		e := &events[i]
		rows[i] = eventRow{
			JobID:    jobID,
			Seq:      e.Seq,
			Time:     e.Time.UTC(),
			Type:     string(e.Type),
			Status:   string(e.Status),
			ExitCode: e.ExitCode,
			Reason:   e.Reason,
			Stream:   e.Stream,
			Text:     e.Text,
		}
		rows[i].Data, _ = eventData(e) // CreateJob's events are status events
	}
	return rows
}

// event converts a row back to an event.
func (r *eventRow) event() jobs.Event {
	ev := r.baseEvent()
	if r.Data != "" {
		var d eventExtra
		if json.Unmarshal([]byte(r.Data), &d) == nil {
			ev.Phase, ev.Tests, ev.DurationS, ev.Failures = d.Phase, d.Tests, d.DurationS, d.Failures
		}
	}
	return ev
}

func (r *eventRow) baseEvent() jobs.Event {
	return jobs.Event{
		JobID:    r.JobID,
		Seq:      r.Seq,
		Time:     r.Time.UTC(),
		Type:     jobs.EventType(r.Type),
		Status:   jobs.Status(r.Status),
		ExitCode: r.ExitCode,
		Reason:   r.Reason,
		Stream:   r.Stream,
		Text:     r.Text,
	}
}

// utcPtr returns a copy of *t in UTC, or nil.
func utcPtr(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	u := t.UTC()
	return &u
}
