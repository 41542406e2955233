package jobs

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// What replicas sharing one store do besides running jobs: follow the
// change feed, keep leases on their running jobs, end the jobs of a
// replica that died, and look for queued jobs now and then in case the
// feed missed a notification.

// errLost is the cause with which a replica stops a job that another
// replica has ended, because this one's lease on it had expired.
var errLost = errors.New("another ci-server ended the job: this one's lease on it had expired")

// storeTimeout bounds the store calls of the background loops.
const storeTimeout = 30 * time.Second

// watchChanges follows the change feed until the service closes. The
// feed reconnects by itself (and says Resync); should it give up, the
// replica still works, from the store: workers and followers poll it.
func (s *Service) watchChanges() {
	defer s.wg.Done()
	err := s.cfg.Changes.WatchChanges(s.ctx, s.onChange)
	if s.ctx.Err() == nil {
		s.log.Error("change feed stopped: other replicas' jobs are seen by polling the store only", "err", err)
	}
}

// onChange handles one change committed by any server.
func (s *Service) onChange(c Change) {
	switch {
	case c.Resync:
		// Changes may have been missed: look for queued jobs, catch local
		// followers up from the store, and give job list watchers a fresh
		// snapshot.
		s.notify()
		s.broker.ResyncJobs()
		for _, id := range s.relay.jobs() {
			s.relayEvents(id, 0, 0)
		}
	case c.Cancel:
		s.cancelLocal(c.JobID, false)
	default:
		if c.Status {
			// A job was created (or claimed, or ended): maybe one to
			// claim, and a change for job list watchers.
			s.notify()
			s.publishJob(c.JobID)
		}
		s.relayEvents(c.JobID, c.First, c.Last)
	}
}

// publishJob tells job list watchers of a change of another server's job.
func (s *Service) publishJob(id string) {
	if s.broker.jobSubscribers() == 0 || s.runsLocally(id) {
		return // nobody watches the list, or its recorder tells them
	}
	ctx, cancel := context.WithTimeout(s.ctx, storeTimeout)
	defer cancel()
	job, err := s.store.Job(ctx, id)
	if err != nil {
		s.log.Warn("read a changed job", "job", id, "err", err)
		return
	}
	s.broker.PublishJob(*job)
}

// runsLocally reports whether a recorder of this server writes the job's
// log (and so publishes its events itself).
func (s *Service) runsLocally(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.running[id]
	return ok
}

// relay keeps, per job followed here but run by another server, the seq
// of the last event published to the local broker.
type relay struct {
	mu   sync.Mutex
	last map[string]int64
}

// jobs returns the jobs being relayed.
func (r *relay) jobs() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	ids := make([]string, 0, len(r.last))
	for id := range r.last {
		ids = append(ids, id)
	}
	return ids
}

// relayEvents publishes to the local broker the events of a job that
// another server committed, first to upTo (0: all there are after the
// last relayed), reading them from the store: notifications carry seqs,
// not events. Only jobs that someone here follows are read. The relay of
// a job starts at the first seq it is told of: a follower subscribes
// before it replays the store, so what it misses in between is in its
// replay.
func (s *Service) relayEvents(id string, first, upTo int64) {
	if s.broker.Subscribers(id) == 0 || s.runsLocally(id) {
		s.relay.mu.Lock()
		delete(s.relay.last, id)
		s.relay.mu.Unlock()
		return
	}
	s.relay.mu.Lock()
	after, ok := s.relay.last[id]
	s.relay.mu.Unlock()
	if !ok {
		if first <= 0 {
			return
		}
		after = first - 1
	}
	ctx, cancel := context.WithTimeout(s.ctx, storeTimeout)
	defer cancel()
	for upTo == 0 || after < upTo {
		evs, err := s.store.Events(ctx, id, after, replayPage)
		if err != nil {
			s.log.Warn("relay events", "job", id, "err", err)
			return
		}
		if len(evs) == 0 {
			break
		}
		s.broker.Publish(id, evs)
		after = evs[len(evs)-1].Seq
		if evs[len(evs)-1].Terminal() {
			s.relay.mu.Lock()
			delete(s.relay.last, id)
			s.relay.mu.Unlock()
			return
		}
		if len(evs) < replayPage {
			break
		}
	}
	s.relay.mu.Lock()
	s.relay.last[id] = after
	s.relay.mu.Unlock()
}

// keepLeases renews the leases of the jobs this replica runs, every third
// of a lease, stops those it lost or that a user canceled through another
// replica, and ends the jobs of replicas whose lease expired.
func (s *Service) keepLeases() {
	defer s.wg.Done()
	t := time.NewTicker(s.lease / 3)
	defer t.Stop()
	for {
		s.renewLeases()
		s.reapExpired()
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
	}
}

// renewLeases renews this replica's leases and acts on what it learns.
func (s *Service) renewLeases() {
	s.mu.Lock()
	ids := make([]string, 0, len(s.running)+len(s.recovering))
	for id := range s.running {
		ids = append(ids, id)
	}
	ids = append(ids, s.recovering...)
	s.mu.Unlock()
	if len(ids) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(s.ctx, storeTimeout)
	defer cancel()
	leases, err := s.store.RenewLeases(ctx, s.replica, ids, utcNow().Add(s.lease))
	if err != nil {
		if s.ctx.Err() == nil {
			s.log.Error("renew leases", "err", err)
		}
		return
	}
	for _, l := range leases {
		switch {
		case !l.Held:
			s.mu.Lock()
			if rj := s.running[l.ID]; rj != nil {
				s.log.Warn("stopping a job this server no longer holds", "job", l.ID)
				rj.cancel(errLost)
			}
			s.mu.Unlock()
		case l.CancelRequested:
			s.cancelLocal(l.ID, false)
		}
	}
}

// reapExpired ends, with an error, the running jobs of other replicas
// whose lease expired: those replicas died or lost the database. A job
// another server ends or renews meanwhile is left alone (the store's
// seq check makes this end and that write exclusive).
func (s *Service) reapExpired() {
	ctx, cancel := context.WithTimeout(s.ctx, storeTimeout)
	defer cancel()
	expired, err := s.store.ExpiredJobs(ctx, s.replica, utcNow())
	if err != nil {
		if s.ctx.Err() == nil {
			s.log.Error("look for expired leases", "err", err)
		}
		return
	}
	for _, job := range expired {
		since := "an unknown time"
		if job.LeaseUntil != nil {
			since = job.LeaseUntil.Format(time.RFC3339)
		}
		reason := fmt.Sprintf("ci-server replica %q stopped renewing its lease on the job (it expired at %s): "+
			"it died or lost the database while the job was running, so the job's result is unknown; submit it again",
			job.Replica, since)
		err := s.end(ctx, job, StatusError, reason)
		switch {
		case ErrorCode(err) == ECONFLICT:
			continue // it moved on: its replica is alive after all, or another reaped it
		case err != nil:
			s.log.Error("end a job whose lease expired", "job", job.ID, "err", err)
		default:
			s.log.Warn("ended a job whose replica's lease expired", "job", job.ID, "replica", job.Replica)
		}
	}
}

// pollQueue wakes a worker every poll interval, to claim jobs whose
// notification was missed.
func (s *Service) pollQueue() {
	defer s.wg.Done()
	t := time.NewTicker(s.poll)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
			s.notify()
		}
	}
}
