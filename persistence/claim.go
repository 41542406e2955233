package persistence

import (
	"context"
	"fmt"
	"time"

	"gorm.io/gorm"
	"gorm.io/gorm/clause"

	"ci/jobs"
)

// Claims and leases: replicas sharing a database take queued jobs with
// ClaimJob, keep them with RenewLeases, and end those of a replica that
// stopped renewing (ExpiredJobs). On SQLite the writer's immediate
// transactions make a claim exclusive; on PostgreSQL, a row lock taken
// with SKIP LOCKED, so that racing claimers take different jobs instead
// of waiting for each other.

// ClaimJob takes the oldest queued job for replica: in one transaction it
// sets its status to running, StartedAt to now, Replica to replica,
// LeaseUntil to leaseUntil and CancelRequested to false, and appends the
// running status event (seq LastSeq+1, time now). It returns the job as
// stored and the event, or nil, nil when no job is queued (or every
// queued job is being claimed by someone else). Times are kept in UTC, on
// PostgreSQL to the microsecond.
func (s *Store) ClaimJob(ctx context.Context, replica string, now, leaseUntil time.Time) (*jobs.Job, *jobs.Event, error) {
	now, leaseUntil = s.stamp(now), s.stamp(leaseUntil)
	var (
		job *jobs.Job
		ev  *jobs.Event
	)
	err := s.w.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		q := tx.Where("status = ?", string(jobs.StatusQueued)).Order("id ASC").Limit(1)
		if s.d == postgresDialect {
			q = q.Clauses(clause.Locking{Strength: clause.LockingStrengthUpdate, Options: clause.LockingOptionsSkipLocked})
		}
		var rows []jobRow
		if err := q.Find(&rows).Error; err != nil {
			return fmt.Errorf("select queued job: %w", err)
		}
		if len(rows) == 0 {
			return nil
		}
		r := &rows[0]
		prev := r.LastSeq
		r.Status, r.StartedAt, r.Replica, r.LeaseUntil, r.CancelRequested = string(jobs.StatusRunning), &now, replica, &leaseUntil, false
		r.LastSeq++
		res := tx.Model(&jobRow{}).Where("id = ? AND last_seq = ?", r.ID, prev).Updates(map[string]any{
			"status": r.Status, "started_at": now, "replica": replica, "lease_until": leaseUntil,
			"cancel_requested": false, "last_seq": r.LastSeq,
		})
		if res.Error != nil {
			return fmt.Errorf("update job: %w", res.Error)
		}
		if res.RowsAffected != 1 {
			// The lock (or the single writer) rules this out.
			return fmt.Errorf("update job %q: %d rows changed, want 1", r.ID, res.RowsAffected)
		}
		e := jobs.Event{JobID: r.ID, Seq: r.LastSeq, Time: now, Type: jobs.EventStatus, Status: jobs.StatusRunning}
		if err := tx.Create(newEventRows(r.ID, []jobs.Event{e})).Error; err != nil {
			return fmt.Errorf("insert event: %w", err)
		}
		if err := s.notify(tx, jobs.Change{JobID: r.ID, First: e.Seq, Last: e.Seq, Status: true}); err != nil {
			return err
		}
		j, err := r.job()
		if err != nil {
			return err
		}
		job, ev = j, &e
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("claim job: %w", err)
	}
	return job, ev, nil
}

// leaseState is a job's claim, as RenewLeases reads it.
type leaseState struct {
	ID              string
	Status          string
	Replica         string
	CancelRequested bool
}

// RenewLeases sets to until the lease of each job of ids that is running
// and held by replica, and returns the lease of every job of ids that
// exists, in no particular order: Held when it is running and held by
// replica (renewed, then), and whether a cancel was requested. No ids,
// no query.
func (s *Store) RenewLeases(ctx context.Context, replica string, ids []string, until time.Time) ([]jobs.Lease, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	until = s.stamp(until)
	var rows []leaseState
	err := s.w.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		err := tx.Model(&jobRow{}).Where("id IN ? AND status = ? AND replica = ?", ids, string(jobs.StatusRunning), replica).
			Update("lease_until", until).Error
		if err != nil {
			return fmt.Errorf("update: %w", err)
		}
		err = tx.Model(&jobRow{}).Select("id", "status", "replica", "cancel_requested").Where("id IN ?", ids).
			Find(&rows).Error
		if err != nil {
			return fmt.Errorf("select: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("renew leases: %w", err)
	}
	leases := make([]jobs.Lease, len(rows))
	for i, r := range rows {
		leases[i] = jobs.Lease{
			ID:              r.ID,
			Held:            r.Status == string(jobs.StatusRunning) && r.Replica == replica,
			CancelRequested: r.CancelRequested,
		}
	}
	return leases, nil
}

// ExpiredJobs returns the running jobs held by replicas other than replica
// whose lease ended before now, oldest first. Running jobs without a lease
// (claimed before leases existed) never expire.
func (s *Store) ExpiredJobs(ctx context.Context, replica string, now time.Time) ([]*jobs.Job, error) {
	var rows []jobRow
	err := s.r.WithContext(ctx).
		Where("status = ? AND replica <> ? AND lease_until < ?", string(jobs.StatusRunning), replica, now.UTC()).
		Order("id ASC").Find(&rows).Error
	if err != nil {
		return nil, fmt.Errorf("expired jobs: %w", err)
	}
	js, err := toJobs(rows)
	if err != nil {
		return nil, fmt.Errorf("expired jobs: %w", err)
	}
	return js, nil
}

// RequestCancel sets CancelRequested on the job with the given ID if it is
// running, and on PostgreSQL tells the change feed (Change.Cancel) if that
// changed it. A job that is not running is left as it is; an unknown job
// is an ENOTFOUND error.
func (s *Store) RequestCancel(ctx context.Context, id string) error {
	err := s.w.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		res := tx.Model(&jobRow{}).Where("id = ? AND status = ? AND cancel_requested = ?", id, string(jobs.StatusRunning), false).
			Update("cancel_requested", true)
		if res.Error != nil {
			return res.Error
		}
		if res.RowsAffected == 1 {
			return s.notify(tx, jobs.Change{JobID: id, Cancel: true})
		}
		var n int64
		if err := tx.Model(&jobRow{}).Where("id = ?", id).Count(&n).Error; err != nil {
			return err
		}
		if n == 0 {
			return jobs.Errorf(jobs.ENOTFOUND, "job %q not found", id)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("request cancel: %w", err)
	}
	return nil
}
