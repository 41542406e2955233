package jobs

import (
	"context"
	"time"
)

// Metrics receives the service's measurements, for monitoring. The service
// calls it from its workers, recorders and followers, so an implementation
// must be safe for concurrent use and must never block; it is called per
// committed batch of events, never per event or per chunk of output.
// Config.Metrics nil measures nothing.
type Metrics interface {
	// JobSubmitted counts a job that Submit accepted and queued.
	JobSubmitted()
	// JobFinished is called once per job when its terminal status event
	// is persisted, with the job as stored then: its Status, and its
	// StartedAt (nil for a job canceled while queued) and FinishedAt. job
	// must not be kept or changed.
	JobFinished(job *Job)
	// PhaseEnded reports how long a job spent in a phase (PhaseInstall or
	// PhaseTest). The install phase ends when the test phase starts or the
	// job ends; the test phase ends with the job. A job without
	// requirements announces no phase: all of its run counts as its test
	// phase. Phases of a job re-attached after a restart are not reported
	// (they began under the previous server).
	PhaseEnded(phase string, took time.Duration)
	// EventsPersisted reports one committed batch of a recorder: events
	// in it, and how long the store took to commit it (retries included).
	EventsPersisted(events int, took time.Duration)
	// FollowOverflowed counts a Follow whose subscription overflowed
	// because its reader was slow: it catches up from the store.
	FollowOverflowed()
	// WatchOverflowed counts a WatchJobs whose subscription overflowed:
	// it sends a fresh snapshot from the store.
	WatchOverflowed()
}

// nopMetrics is the Metrics of a service configured without any.
type nopMetrics struct{}

func (nopMetrics) JobSubmitted()                      {}
func (nopMetrics) JobFinished(*Job)                   {}
func (nopMetrics) PhaseEnded(string, time.Duration)   {}
func (nopMetrics) EventsPersisted(int, time.Duration) {}
func (nopMetrics) FollowOverflowed()                  {}
func (nopMetrics) WatchOverflowed()                   {}

// Load is how many jobs wait and run at one moment.
type Load struct {
	// Queued is the number of jobs waiting in the queue.
	Queued int
	// Running is the number of jobs running: taken by a worker, or left
	// running by a previous server and waiting to be re-attached.
	Running int
}

// Load returns how many jobs wait and run now: queued jobs are counted
// in the store (all replicas' queue, when it is shared), running ones are
// this server's.
func (s *Service) Load() Load {
	ctx, cancel := context.WithTimeout(s.ctx, 5*time.Second)
	defer cancel()
	queued, err := s.store.CountJobs(ctx, StatusQueued)
	if err != nil {
		s.log.Warn("count queued jobs", "err", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return Load{Queued: int(queued), Running: len(s.running) + len(s.recovering)}
}
