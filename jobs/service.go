package jobs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
)

// Config tunes a Service.
type Config struct {
	// Concurrency is the most jobs run at once; 0 means the number of CPUs.
	Concurrency int
	// SubscriptionBuffer is the broker buffer of each follower; 0 means
	// DefaultSubscriptionBuffer.
	SubscriptionBuffer int
	// MaxTimeout caps every job's run time; 0 means DefaultMaxTimeout.
	MaxTimeout time.Duration
	// MaxQueued is the most jobs that may wait in the queue; past it,
	// Submit refuses with EUNAVAILABLE. 0 means no limit.
	MaxQueued int
	// MaxFiles is the most entries an uploaded archive may hold; 0 means
	// DefaultMaxFiles.
	MaxFiles int
	// MaxUnpacked is the most bytes an uploaded archive may unpack to;
	// 0 means DefaultMaxUnpacked.
	MaxUnpacked int64
	// MaxOutput caps the output stored per job in bytes; 0 means
	// DefaultMaxOutput. Past it only the last OutputTail bytes are kept.
	MaxOutput int64
	// OutputTail is how much of the end of a job's output is kept past
	// MaxOutput; 0 means DefaultOutputTail.
	OutputTail int64
	// Secrets are masked ("***") wherever they appear in a job's output,
	// even split across chunks; for example the server's API token.
	Secrets []string
	// Logger receives the service's logs; nil discards them.
	Logger *slog.Logger
	// Metrics receives the service's measurements; nil measures nothing.
	Metrics Metrics

	// Replica names this server among the servers that share the store:
	// it is recorded on each job it claims. "" means DefaultReplica.
	Replica string
	// Changes, when set, tells this server what other servers sharing
	// the store commit (the PostgreSQL store's feed): it turns on the
	// behaviour of a replica (see Service). nil means the store is this
	// server's alone.
	Changes ChangeFeed
	// Lease is how long a replica's claim on a running job lasts unless
	// renewed (every Lease/3); 0 means DefaultLease. Only replicas use it.
	Lease time.Duration
	// Poll is how often a replica looks in the store for what its change
	// feed may have missed: queued jobs, and new events of followed jobs;
	// 0 means DefaultPoll.
	Poll time.Duration
}

// Defaults of a replica's timing.
const (
	DefaultReplica = "local"
	DefaultLease   = 15 * time.Second
	DefaultPoll    = time.Second
)

// Defaults of the output cap.
const (
	DefaultMaxOutput  = 50 << 20
	DefaultOutputTail = 1 << 20
)

// DefaultMaxTimeout is the default cap on a job's run time.
const DefaultMaxTimeout = 30 * time.Minute

// Causes of a job's context ending early.
var (
	errCanceled = errors.New("canceled by user")
	errTimedOut = errors.New("time limit reached")
)

// SubmitOptions are a client's choices for one job.
type SubmitOptions struct {
	// Args are extra pytest arguments.
	Args []string
	// Timeout limits the run time of the tests; 0 means the server's
	// maximum, and a longer one is capped to it.
	Timeout time.Duration
}

// Service queues jobs, runs them on an Executor with bounded concurrency,
// records their events in a Store and fans them out to followers.
//
// The queue is the store's: jobs run first in, first out, and queued jobs
// survive a restart. Each worker claims the oldest queued job from the
// store (Store.ClaimJob), so several servers may share one store, each
// with its own concurrency: they are then replicas (Config.Changes set).
// A replica renews a lease on the jobs it runs and ends, with an error,
// the running jobs of a replica whose lease expired; it follows jobs that
// other replicas run through the change feed, and asks the replica that
// runs a job to cancel it.
type Service struct {
	store    Store
	archives Archives
	exec     Executor
	broker   *Broker
	cfg      Config
	log      *slog.Logger
	metrics  Metrics

	replica string
	lease   time.Duration
	poll    time.Duration
	relay   relay // events of other replicas' jobs, for local followers

	mu      sync.Mutex
	queued  chan struct{}          // capacity 1: the queue may have grown
	running map[string]*runningJob // jobs claimed by this server, by ID
	// recovering holds running jobs of a previous server, to re-attach
	// before taking queued ones; canceledEarly, those of them canceled
	// before a worker got to them.
	recovering    []string
	canceledEarly map[string]bool

	ctx    context.Context // canceled by Close: stops workers and jobs
	cancel context.CancelCauseFunc
	wg     sync.WaitGroup
}

// NewService returns a service; call Start to run jobs.
func NewService(store Store, archives Archives, exec Executor, cfg Config) *Service {
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = runtime.NumCPU()
	}
	if cfg.MaxTimeout <= 0 {
		cfg.MaxTimeout = DefaultMaxTimeout
	}
	if cfg.MaxOutput <= 0 {
		cfg.MaxOutput = DefaultMaxOutput
	}
	if cfg.OutputTail <= 0 {
		cfg.OutputTail = DefaultOutputTail
	}
	if cfg.MaxFiles <= 0 {
		cfg.MaxFiles = DefaultMaxFiles
	}
	if cfg.MaxUnpacked <= 0 {
		cfg.MaxUnpacked = DefaultMaxUnpacked
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	metrics := cfg.Metrics
	if metrics == nil {
		metrics = nopMetrics{}
	}
	replica := cfg.Replica
	if replica == "" {
		replica = DefaultReplica
	}
	lease, poll := cfg.Lease, cfg.Poll
	if lease <= 0 {
		lease = DefaultLease
	}
	if poll <= 0 {
		poll = DefaultPoll
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	return &Service{
		replica:       replica,
		lease:         lease,
		poll:          poll,
		relay:         relay{last: map[string]int64{}},
		store:         store,
		archives:      archives,
		exec:          exec,
		broker:        NewBroker(),
		cfg:           cfg,
		log:           log,
		metrics:       metrics,
		queued:        make(chan struct{}, 1),
		running:       make(map[string]*runningJob),
		canceledEarly: make(map[string]bool),
		ctx:           ctx,
		cancel:        cancel,
	}
}

// Broker returns the service's event broker.
func (s *Service) Broker() *Broker { return s.broker }

// Start recovers the jobs a previous server left unfinished and starts the
// workers. Jobs that were running are picked up again first, through the
// executor's Reattach: a job whose test process still runs is followed on,
// one whose process has exited gets its remaining output and real exit
// code, one whose process is gone ends error. (With an executor that can't
// re-attach they end error.) Queued jobs stay in the store's queue, which
// the workers take from, oldest first.
//
// A replica recovers only the running jobs that it claimed itself (same
// Config.Replica): another replica's are its own business until their
// lease expires. It also starts following the change feed, renewing its
// leases and reaping expired ones.
func (s *Service) Start(ctx context.Context) error {
	stale, err := s.store.JobsByStatus(ctx, StatusRunning)
	if err != nil {
		return fmt.Errorf("recover running jobs: %w", err)
	}
	_, canReattach := s.exec.(Reattacher)
	for _, job := range stale {
		if s.cfg.Changes != nil && job.Replica != s.replica {
			continue
		}
		if canReattach {
			s.mu.Lock()
			s.recovering = append(s.recovering, job.ID)
			s.mu.Unlock()
			s.log.Info("re-attaching job left running by a previous server", "job", job.ID)
			continue
		}
		if err := s.end(ctx, job, StatusError, "ci-server stopped while the job was running; submit it again"); err != nil {
			return fmt.Errorf("end stale job %s: %w", job.ID, err)
		}
		s.log.Warn("ended job left running by a previous server", "job", job.ID)
	}
	if sw, ok := s.exec.(Sweeper); ok && s.cfg.Changes != nil {
		// Jobs of this replica that another ended while it was away
		// (their lease expired) may have left containers running here.
		n, err := sw.Sweep(ctx, func(id string) bool {
			job, err := s.store.Job(ctx, id)
			return err == nil && job.Status.Terminal()
		})
		if err != nil {
			s.log.Warn("remove what jobs ended elsewhere left", "err", err)
		} else if n > 0 {
			s.log.Info("removed what jobs ended elsewhere left", "count", n)
		}
	}
	s.notify()
	for range s.cfg.Concurrency {
		s.wg.Add(1)
		go s.worker()
	}
	if s.cfg.Changes != nil {
		s.wg.Add(3)
		go s.watchChanges()
		go s.keepLeases()
		go s.pollQueue()
	}
	return nil
}

// end records the end of a job that no executor runs here (it is queued,
// or its runner is gone), from its stored state. It fails with an
// ECONFLICT error when the job's log moved on meanwhile (it was claimed,
// or ended by another server).
func (s *Service) end(ctx context.Context, job *Job, status Status, reason string) error {
	rec := newRecorder(s.store, s.broker, s.metrics, s.log, job)
	err := rec.Status(status, func(j *Job) {
		now := utcNow()
		j.FinishedAt = &now
		j.Reason = reason
	})
	if cerr := rec.Close(); err == nil {
		err = cerr
	}
	return err
}

// Close stops the workers and returns when they are done. Queued jobs stay
// queued for the next start. Running jobs are left running when the
// executor can re-attach to them (the next Start picks them up); otherwise
// they are stopped and end error.
func (s *Service) Close() error {
	if _, ok := s.exec.(Reattacher); ok {
		s.cancel(ErrDetach)
	} else {
		s.cancel(nil)
	}
	s.wg.Wait()
	return nil
}

// Submit stores the zip archive read from r and queues a job for it.
func (s *Service) Submit(ctx context.Context, r io.Reader, opts SubmitOptions) (*Job, error) {
	for _, a := range opts.Args {
		if strings.ContainsRune(a, 0) {
			return nil, Errorf(EINVALID, "pytest argument %q contains a NUL byte", a)
		}
	}
	timeout := opts.Timeout
	switch {
	case timeout < 0:
		return nil, Errorf(EINVALID, "timeout must be positive, got %s", timeout)
	case timeout == 0 || timeout > s.cfg.MaxTimeout:
		timeout = s.cfg.MaxTimeout
	}
	if s.cfg.MaxQueued > 0 {
		n, err := s.store.CountJobs(ctx, StatusQueued)
		if err != nil {
			return nil, fmt.Errorf("count queued jobs: %w", err)
		}
		if n >= int64(s.cfg.MaxQueued) {
			return nil, Errorf(EUNAVAILABLE, "the queue is full (%d jobs waiting); try again later", n)
		}
	}
	key, size, err := s.archives.Put(ctx, r)
	if err != nil {
		return nil, fmt.Errorf("store archive: %w", err)
	}
	path, err := s.archives.Local(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("store archive: %w", err)
	}
	if err := validateZip(ctx, path, s.cfg.MaxFiles, s.cfg.MaxUnpacked); err != nil {
		// Content-addressed: a job can only refer to a valid archive, so an
		// invalid one is never shared with another job.
		if rerr := s.archives.Remove(key); rerr != nil {
			s.log.Error("remove refused archive", "key", key, "err", rerr)
		}
		return nil, err
	}
	now := utcNow()
	job := &Job{
		Status:      StatusQueued,
		Args:        append([]string{}, opts.Args...),
		Archive:     key,
		ArchiveSize: size,
		CreatedAt:   now,
		LastSeq:     1,
		Timeout:     timeout,
	}
	first := []Event{{Seq: 1, Time: now, Type: EventStatus, Status: StatusQueued}}
	if err := s.store.CreateJob(ctx, job, first); err != nil {
		return nil, fmt.Errorf("create job: %w", err)
	}
	s.log.Info("job queued", "job", job.ID, "size", size, "args", job.Args)
	s.metrics.JobSubmitted()
	s.broker.PublishJob(*job)
	s.notify()
	return job, nil
}

// Job returns the job with the given ID.
func (s *Service) Job(ctx context.Context, id string) (*Job, error) {
	return s.store.Job(ctx, id)
}

// Jobs returns a page of jobs, newest first.
func (s *Service) Jobs(ctx context.Context, opts ListOptions) ([]*Job, error) {
	return s.store.Jobs(ctx, opts)
}

// Events returns up to limit persisted events of a job with seq > after.
func (s *Service) Events(ctx context.Context, id string, after int64, limit int) ([]Event, error) {
	return s.store.Events(ctx, id, after, limit)
}

// replayPage is how many events Follow reads from the store at a time: at
// most replayPage*maxMergedText bytes of text (4 MiB) in memory per
// follower catching up.
const replayPage = 256

// Follow calls fn with every event of the job with seq > after, in seq
// order and each exactly once: first those already stored, then new ones as
// they are committed. It returns nil after the terminal event, ctx's error
// when ctx ends, or fn's error.
//
// It subscribes before it reads the store, so an event committed during the
// replay is either in the replay or in the subscription (or both: live
// events at or below the last seq sent are skipped). When the subscription
// overflows because fn is slow, it catches up from the store and subscribes
// again, so a slow follower costs bounded memory and loses nothing.
func (s *Service) Follow(ctx context.Context, id string, after int64, fn func(Event) error) error {
	last := after // follow reads the job first: an unknown one is ENOTFOUND
	for {
		sub := s.broker.Subscribe(id, s.cfg.SubscriptionBuffer)
		done, err := s.follow(ctx, sub, id, &last, fn)
		sub.Close()
		if done || err != nil {
			return err
		}
		s.metrics.FollowOverflowed()
	}
}

// follow replays from the store, then delivers from sub. It reports done
// after the terminal event, or not done when sub overflowed (or showed a
// gap) and the caller must catch up from the store again.
func (s *Service) follow(ctx context.Context, sub *Subscription, id string, last *int64, fn func(Event) error) (done bool, err error) {
	deliver := func(ev Event) (bool, error) {
		if ev.Seq != *last+1 {
			return false, fmt.Errorf("follow job %s: got seq %d after %d", id, ev.Seq, *last)
		}
		if err := fn(ev); err != nil {
			return false, err
		}
		*last = ev.Seq
		return ev.Terminal(), nil
	}
	// Read the job before the replay: if it has ended by now, the replay
	// holds all its events (a terminal status is committed with its event),
	// and a follower that starts at or past the end is done after it.
	job, err := s.store.Job(ctx, id)
	if err != nil {
		return false, err
	}
	// catchUp delivers the stored events after *last.
	catchUp := func() (bool, error) {
		for {
			evs, err := s.store.Events(ctx, id, *last, replayPage)
			if err != nil {
				return false, fmt.Errorf("replay events: %w", err)
			}
			for _, ev := range evs {
				if done, err := deliver(ev); done || err != nil {
					return done, err
				}
			}
			if len(evs) < replayPage {
				return false, nil
			}
		}
	}
	if done, err := catchUp(); done || err != nil {
		return done, err
	}
	if job.Status.Terminal() {
		return true, nil
	}
	// A replica's events of jobs that other replicas run come through the
	// change feed; should it miss some, the store is read again after a
	// poll interval without any event.
	var poll <-chan time.Time
	if s.cfg.Changes != nil {
		t := time.NewTicker(s.poll)
		defer t.Stop()
		poll = t.C
	}
	seen := *last
	for {
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case <-poll:
			if seen != *last {
				seen = *last // events flow: the feed works
				continue
			}
			if done, err := catchUp(); done || err != nil {
				return done, err
			}
			seen = *last
		case ev, ok := <-sub.C:
			if !ok {
				return false, nil // overflowed: catch up from the store
			}
			if ev.Seq <= *last {
				continue // already sent by the replay
			}
			if ev.Seq != *last+1 {
				return false, nil // cannot happen without overflow; recover anyway
			}
			if done, err := deliver(*ev); done || err != nil {
				return done, err
			}
		}
	}
}

// WatchJobs calls fn first with a snapshot of the newest jobs (at most
// limit), then with each job as it is created or changes status, until ctx
// ends (it returns ctx's error) or fn fails. It subscribes before it reads
// the snapshot, so no change is missed; a change may repeat what the
// snapshot shows, and watchers should keep, per job, the state with the
// highest LastSeq. A watcher that falls behind gets a fresh snapshot
// instead of the changes it missed: memory stays bounded.
func (s *Service) WatchJobs(ctx context.Context, limit int, fn func(snapshot []*Job, change *Job) error) error {
	for {
		sub := s.broker.SubscribeJobs(s.cfg.SubscriptionBuffer)
		err := s.watchJobs(ctx, sub, limit, fn)
		sub.Close()
		if err != nil {
			return err
		}
		s.metrics.WatchOverflowed()
	}
}

// watchJobs sends one snapshot and then changes until sub overflows (nil)
// or an error.
func (s *Service) watchJobs(ctx context.Context, sub *JobSubscription, limit int, fn func([]*Job, *Job) error) error {
	snapshot, err := s.store.Jobs(ctx, ListOptions{Limit: limit})
	if err != nil {
		return fmt.Errorf("list jobs: %w", err)
	}
	if snapshot == nil {
		snapshot = []*Job{}
	}
	if err := fn(snapshot, nil); err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case job, ok := <-sub.C:
			if !ok {
				return nil // overflowed: send a fresh snapshot
			}
			if err := fn(nil, &job); err != nil {
				return err
			}
		}
	}
}

func (s *Service) notify() {
	select {
	case s.queued <- struct{}{}:
	default:
	}
}

// runningJob is a job a worker has claimed, or is about to re-attach.
type runningJob struct {
	ctx    context.Context // canceled (with a cause) to stop the job
	cancel context.CancelCauseFunc
}

// nextRecovering takes the next job to re-attach and registers it as
// running, or returns false when there is none.
func (s *Service) nextRecovering() (string, *runningJob, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.recovering) == 0 {
		return "", nil, false
	}
	var id string
	id, s.recovering = s.recovering[0], s.recovering[1:]
	return id, s.registerLocked(id), true
}

// registerLocked registers a job this server runs, canceled at once if a
// cancel request came first. s.mu must be held.
func (s *Service) registerLocked(id string) *runningJob {
	ctx, cancel := context.WithCancelCause(s.ctx)
	rj := &runningJob{ctx: ctx, cancel: cancel}
	if s.canceledEarly[id] {
		delete(s.canceledEarly, id)
		cancel(errCanceled)
	}
	s.running[id] = rj
	return rj
}

// claim claims the oldest queued job in the store and registers it as
// running. It returns nil when none is queued (or the store failed: the
// error is logged and the worker waits for the next poll).
func (s *Service) claim() (*Job, *runningJob) {
	now := utcNow()
	job, ev, err := s.store.ClaimJob(s.ctx, s.replica, now, now.Add(s.lease))
	took := time.Since(now)
	if err != nil {
		if s.ctx.Err() == nil {
			s.log.Error("claim a queued job", "err", err)
		}
		return nil, nil
	}
	if job == nil {
		return nil, nil
	}
	s.metrics.EventsPersisted(1, took)
	s.mu.Lock()
	rj := s.registerLocked(job.ID)
	s.mu.Unlock()
	// The running event is committed: tell followers, as a recorder does.
	s.broker.Publish(job.ID, []Event{*ev})
	s.broker.PublishJob(*job)
	return job, rj
}

func (s *Service) worker() {
	defer s.wg.Done()
	for s.ctx.Err() == nil {
		// Jobs left running by a previous server come first.
		if id, rj, ok := s.nextRecovering(); ok {
			s.notify() // another worker may take the next one
			s.runTaken(id, rj)
			continue
		}
		if job, rj := s.claim(); job != nil {
			s.notify() // there may be more: wake another worker
			s.runClaimed(job, rj)
			continue
		}
		select {
		case <-s.ctx.Done():
		case <-s.queued:
		}
	}
}

// unregister forgets a job this server ran.
func (s *Service) unregister(id string, rj *runningJob) {
	s.mu.Lock()
	delete(s.running, id)
	s.mu.Unlock()
	rj.cancel(nil)
}

// runClaimed runs a job this server claimed and unregisters it.
func (s *Service) runClaimed(job *Job, rj *runningJob) {
	defer s.unregister(job.ID, rj)
	s.run(rj.ctx, job, false)
}

// runTaken re-attaches a job left running by a previous server and
// unregisters it.
func (s *Service) runTaken(id string, rj *runningJob) {
	defer s.unregister(id, rj)
	job, err := s.store.Job(s.ctx, id)
	if err != nil {
		s.log.Error("load job", "job", id, "err", err)
		return
	}
	if job.Status != StatusRunning {
		return
	}
	s.run(rj.ctx, job, true)
}

// Cancel cancels a job. A queued job ends canceled at once; a running one
// is stopped (SIGTERM, then SIGKILL after a grace period) and ends canceled
// when it has stopped, by the server that runs it. It returns the job as
// it is after the request, an ENOTFOUND error for an unknown job, and an
// ECONFLICT error for a job that has already ended.
func (s *Service) Cancel(ctx context.Context, id string) (*Job, error) {
	if s.cancelLocal(id, false) {
		s.log.Info("cancel requested", "job", id)
		return s.store.Job(ctx, id)
	}
	for {
		job, err := s.store.Job(ctx, id)
		if err != nil {
			return nil, err
		}
		switch {
		case job.Status.Terminal():
			return nil, Errorf(ECONFLICT, "job %s has already ended: %s", id, job.Status)
		case job.Status == StatusQueued:
			final, err := s.cancelQueued(ctx, job)
			if ErrorCode(err) == ECONFLICT {
				continue // claimed (or ended) meanwhile: look again
			}
			return final, err
		case job.Replica == s.replica && s.cancelLocal(id, true):
			// Claimed here, perhaps not registered yet: done either way.
		default:
			// Another replica runs it: it learns of the request through
			// the change feed, or at its next lease renewal.
			if err := s.store.RequestCancel(ctx, id); err != nil {
				return nil, fmt.Errorf("request cancel: %w", err)
			}
		}
		s.log.Info("cancel requested", "job", id, "replica", job.Replica)
		return job, nil
	}
}

// cancelLocal cancels the job if this server runs it, or is about to
// re-attach it. With claimed, the job is known to be claimed by this
// server: if it is not registered yet, it is canceled when it is. It
// reports whether it took the request.
func (s *Service) cancelLocal(id string, claimed bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if rj := s.running[id]; rj != nil {
		// Harmless if the job has just ended: its run is over.
		rj.cancel(errCanceled)
		return true
	}
	if claimed || slices.Contains(s.recovering, id) {
		// Not started yet: its worker starts it canceled, which stops its
		// process.
		s.canceledEarly[id] = true
		return true
	}
	return false
}

// cancelQueued ends a queued job canceled. A worker of any server may
// claim it meanwhile: the store's check of the log's last seq lets only
// one of the two write, and the loser gets an ECONFLICT error.
func (s *Service) cancelQueued(ctx context.Context, job *Job) (*Job, error) {
	rec := newRecorder(s.store, s.broker, s.metrics, s.log, job)
	now := utcNow()
	err := rec.Status(StatusCanceled, func(j *Job) {
		j.FinishedAt = &now
		j.Reason = "canceled by user before it started"
	})
	if cerr := rec.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("cancel queued job: %w", err)
	}
	s.log.Info("queued job canceled", "job", job.ID)
	final := rec.Job()
	return &final, nil
}

// run runs one job to its end and records everything it does. ctx ends
// when the job is canceled or the service closes. With reattach, the job
// was running under a previous server: it is picked up through the
// executor's Reattach, skipping the output already stored.
func (s *Service) run(ctx context.Context, job *Job, reattach bool) {
	log := s.log.With("job", job.ID)
	rec := newRecorder(s.store, s.broker, s.metrics, log, job)

	// Claimed (running) with its start time, or re-attached.
	started := utcNow()
	if job.StartedAt != nil {
		started = *job.StartedAt
	}

	timeout := job.Timeout
	if timeout <= 0 || timeout > s.cfg.MaxTimeout {
		timeout = s.cfg.MaxTimeout
	}
	// The time limit counts from the job's start, also across a restart.
	rctx, cancel := context.WithDeadlineCause(ctx, started.Add(timeout), errTimedOut)
	defer cancel()

	stored := job.Offsets
	retry := false
	if reattach && job.Phase == PhaseInstall {
		// The server went away while the job was installing its
		// dependencies: its tests never started, so there is nothing to
		// re-attach to. Run it again from the start (the executor cleans
		// up what the earlier run left); its log says so.
		rec.Log(StreamStderr, "\n[ci: ci-server restarted while the job was installing its dependencies; installing again]\n", nil)
		reattach, stored, retry = false, Offsets{}, true
	}
	out := newRecordOutput(rec, s.cfg, stored)
	if !reattach {
		// Phases are timed from here; a re-attached job's began under
		// the previous server.
		out.metrics, out.phaseStart = s.metrics, time.Now()
	}
	spec := Spec{JobID: job.ID, Args: job.Args, Retry: retry}
	var res Result
	var err error
	// Not interrupted by a detach: a claimed job is started (and then
	// left for the next server) rather than left half-way.
	actx, acancel := context.WithTimeout(context.WithoutCancel(rctx), archiveTimeout)
	spec.Archive, err = s.archives.Local(actx, job.Archive)
	acancel()
	switch {
	case err != nil:
		err = fmt.Errorf("the job's project archive can't be read: %w", err)
	case reattach:
		log.Info("job re-attached", "offsets", job.Offsets)
		res, err = s.exec.(Reattacher).Reattach(rctx, spec, out)
	default:
		log.Info("job started", "timeout", timeout)
		res, err = s.exec.Run(rctx, spec, out)
	}
	cause := context.Cause(rctx)
	if err != nil && errors.Is(cause, ErrDetach) {
		// Shutting down: the job keeps running, to be re-attached by the
		// next server. Store what was recorded so far, with its offsets,
		// and nothing else: held-back bytes are replayed after the restart.
		if cerr := rec.Close(); cerr != nil {
			log.Error("job events not fully recorded", "err", cerr)
		}
		log.Info("job left running for the next server")
		return
	}
	out.flush()
	out.endPhase()

	status, exitCode, reason := outcome(res, err, cause, timeout, rec.Job().Phase)
	if res.Report != nil && err == nil {
		s.recordReport(rec, job.ID, res, log)
	}
	finished := utcNow()
	if serr := rec.Status(status, func(j *Job) {
		j.FinishedAt = &finished
		j.ExitCode = exitCode
		j.Reason = reason
	}); serr != nil {
		log.Error("record end", "err", serr)
	}
	if cerr := rec.Close(); cerr != nil {
		log.Error("job events not fully recorded", "err", cerr)
	}
	log.Info("job ended", "status", status, "exit_code", res.ExitCode, "duration", finished.Sub(started).Round(time.Millisecond), "reason", reason)
}

// archiveTimeout bounds the fetch of a job's archive from shared storage.
const archiveTimeout = 5 * time.Minute

// maxListedFailures bounds the failures a result event lists; all of them
// are in the job's tests.
const maxListedFailures = 100

// recordReport stores pytest's per-test results and records the result
// event that sums them up, before the terminal status.
func (s *Service) recordReport(rec *recorder, jobID string, res Result, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(s.ctx), 30*time.Second)
	defer cancel()
	if err := s.store.SaveTests(ctx, jobID, res.Report.Tests); err != nil {
		log.Error("save test results", "err", err)
	}
	counts := res.Report.Counts()
	code := res.ExitCode
	ev := Event{ExitCode: &code, Tests: &counts, DurationS: res.Report.DurationS}
	for _, t := range res.Report.Tests {
		if (t.Outcome == "failed" || t.Outcome == "error") && len(ev.Failures) < maxListedFailures {
			ev.Failures = append(ev.Failures, Failure{NodeID: t.NodeID, Message: t.Message})
		}
	}
	if err := rec.Result(ev); err != nil {
		log.Error("record result", "err", err)
	}
}

// Tests returns the per-test results of a job (none before it ends, or if
// pytest wrote none).
func (s *Service) Tests(ctx context.Context, id string) ([]TestCase, error) {
	if _, err := s.store.Job(ctx, id); err != nil {
		return nil, err
	}
	return s.store.Tests(ctx, id)
}

// outcome maps how the executor ended to the job's terminal status. cause
// is why the job's context ended (nil if it did not); phase is the phase
// the job was in.
func outcome(res Result, err error, cause error, timeout time.Duration, phase string) (Status, *int, string) {
	switch {
	case err != nil && errors.Is(cause, errTimedOut) && phase == PhaseInstall:
		return StatusTimedOut, nil, fmt.Sprintf("the job reached its time limit of %s while installing its dependencies, "+
			"before the tests started (the limit covers the install and the tests)", timeout)
	case err != nil && errors.Is(cause, errTimedOut):
		return StatusTimedOut, nil, fmt.Sprintf("the tests ran longer than the time limit of %s and were stopped", timeout)
	case err != nil && errors.Is(cause, errCanceled):
		return StatusCanceled, nil, "canceled by user"
	case err != nil && errors.Is(cause, errLost):
		return StatusError, nil, errLost.Error()
	case err != nil && cause != nil:
		return StatusError, nil, "ci-server shut down while the job was running; submit it again"
	case err != nil && errors.Is(err, ErrGone):
		return StatusError, nil, "the job's test container disappeared while ci-server was down (" + err.Error() + "); submit it again"
	case err != nil:
		return StatusError, nil, err.Error()
	case res.OOMKilled:
		code := res.ExitCode
		limit := "the container's limit"
		if res.MemoryLimit > 0 {
			limit = "the limit of " + formatBytes(res.MemoryLimit)
		}
		return StatusError, &code, "the tests were killed (out of memory): they used more than " + limit + "; ask for a higher --memory on the server or use less"
	case res.ExitCode == 0:
		code := 0
		return StatusPassed, &code, ""
	default:
		code := res.ExitCode
		return StatusFailed, &code, failReason(code)
	}
}

// failReason explains pytest's exit codes.
func failReason(code int) string {
	switch code {
	case 1:
		return "some tests failed"
	case 2:
		return "pytest was interrupted (for example by an error while collecting tests)"
	case 3:
		return "pytest hit an internal error"
	case 4:
		return "pytest was used wrongly (check the pytest arguments)"
	case 5:
		return "pytest collected no tests"
	}
	return fmt.Sprintf("the test process exited with code %d", code)
}

// recordOutput adapts a recorder to the Executor's Output. It keeps each
// stream's chunks valid UTF-8, masks secrets, and caps what a job stores:
// past limit bytes, output is no longer recorded, except for the last
// tailMax bytes, which flush records after one marker that says how much
// was dropped. So a flood can't fill the disk, and pytest's summary at the
// end survives.
//
// It also keeps the job's output offsets: how many raw bytes of each
// stream the recorded events account for (bytes held back for an
// incomplete rune or a possible secret are not counted yet). They are
// persisted with the events, and after a crash a re-attached job skips
// exactly that much of the replayed output, so every byte is stored once.
type recordOutput struct {
	rec      *recorder
	split    [2]utf8Splitter // by stream: stdout, stderr
	mask     [2]masker
	consumed [2]int64 // raw bytes received, skipped ones included
	skip     [2]int64 // raw bytes still to skip (stored before a re-attach)

	limit, tailMax int64
	written        int64 // bytes recorded live
	dropped        int64 // bytes dropped for good
	tail           []tailChunk
	tailBytes      int64

	// phase is the phase announced last ("" before any) and phaseStart
	// when it began, or the run's start; zero when phases are not
	// measured. metrics receives their durations.
	phase      string
	phaseStart time.Time
	metrics    Metrics
}

// tailChunk is output held back past the limit.
type tailChunk struct {
	stream, text string
}

func newRecordOutput(rec *recorder, cfg Config, stored Offsets) *recordOutput {
	o := &recordOutput{rec: rec, limit: cfg.MaxOutput, tailMax: cfg.OutputTail}
	o.mask[0].secrets, o.mask[1].secrets = cfg.Secrets, cfg.Secrets
	o.skip = [2]int64{stored.Stdout, stored.Stderr}
	o.written = stored.Stdout + stored.Stderr
	return o
}

func streamIndex(stream string) int {
	if stream == StreamStderr {
		return 1
	}
	return 0
}

// offsets returns the raw offsets the recorded output accounts for.
func (o *recordOutput) offsets() Offsets {
	held := func(i int) int64 { return int64(len(o.split[i].carry) + len(o.mask[i].held)) }
	return Offsets{Stdout: o.consumed[0] - held(0), Stderr: o.consumed[1] - held(1)}
}

func (o *recordOutput) Write(stream string, p []byte) error {
	i := streamIndex(stream)
	if stream != StreamStderr {
		stream = StreamStdout
	}
	if o.skip[i] > 0 {
		k := min(int64(len(p)), o.skip[i])
		o.skip[i] -= k
		o.consumed[i] += k
		p = p[k:]
		if len(p) == 0 {
			return nil
		}
	}
	o.consumed[i] += int64(len(p))
	return o.record(stream, o.mask[i].Next(o.split[i].Next(p)))
}

func (o *recordOutput) record(stream, text string) error {
	if text == "" {
		return nil
	}
	if o.limit <= 0 || o.written+int64(len(text)) <= o.limit && len(o.tail) == 0 {
		o.written += int64(len(text))
		offs := o.offsets()
		return o.rec.Log(stream, text, &offs)
	}
	o.tail = append(o.tail, tailChunk{stream, text})
	o.tailBytes += int64(len(text))
	for o.tailBytes > o.tailMax {
		first := &o.tail[0]
		excess := o.tailBytes - o.tailMax
		if int64(len(first.text)) <= excess {
			o.dropped += int64(len(first.text))
			o.tailBytes -= int64(len(first.text))
			o.tail = o.tail[1:]
			continue
		}
		// Cut the front of the oldest chunk, on a rune boundary.
		cut := int(excess)
		for cut < len(first.text) && !utf8.RuneStart(first.text[cut]) {
			cut++
		}
		o.dropped += int64(cut)
		o.tailBytes -= int64(cut)
		first.text = first.text[cut:]
	}
	return nil
}

// Phase implements Output: what the previous phase held back is recorded
// first, and the output offsets start again from 0, since they count the
// test process's bytes (what Reattach replays).
func (o *recordOutput) Phase(name string) error {
	if !o.phaseStart.IsZero() {
		now := time.Now()
		if o.phase != "" { // before the first phase, the time is no phase's
			o.metrics.PhaseEnded(o.phase, now.Sub(o.phaseStart))
		}
		o.phase, o.phaseStart = name, now
	}
	o.flush()
	o.consumed, o.skip = [2]int64{}, [2]int64{}
	return o.rec.Phase(name, Offsets{})
}

// endPhase reports the duration of the phase the job ends in: the test
// phase when none was announced.
func (o *recordOutput) endPhase() {
	if o.phaseStart.IsZero() {
		return
	}
	phase := o.phase
	if phase == "" {
		phase = PhaseTest
	}
	o.metrics.PhaseEnded(phase, time.Since(o.phaseStart))
	o.phaseStart = time.Time{}
}

// flush records what the splitters and maskers hold back and the tail kept
// past the limit, after a marker if anything was dropped.
func (o *recordOutput) flush() {
	for i, stream := range []string{StreamStdout, StreamStderr} {
		text := o.split[i].Flush()
		o.record(stream, o.mask[i].Flush(o.mask[i].Next(text)))
	}
	offs := o.offsets()
	if o.dropped > 0 {
		o.rec.Log(StreamStderr, fmt.Sprintf("\n[ci: output passed the limit of %s: %s dropped; the last %s follows]\n",
			formatBytes(o.limit), formatBytes(o.dropped), formatBytes(o.tailBytes)), &offs)
		o.dropped = 0
	}
	for _, c := range o.tail {
		o.rec.Log(c.stream, c.text, &offs)
	}
	o.tail, o.tailBytes = nil, 0
}

// formatBytes writes n bytes the way people say it: 2 GiB, 1.5 MiB.
func formatBytes(n int64) string {
	unit := func(u int64, name string) string {
		if n%u == 0 {
			return fmt.Sprintf("%d %s", n/u, name)
		}
		return fmt.Sprintf("%.1f %s", float64(n)/float64(u), name)
	}
	switch {
	case n >= 1<<30:
		return unit(1<<30, "GiB")
	case n >= 1<<20:
		return unit(1<<20, "MiB")
	case n >= 1<<10:
		return unit(1<<10, "KiB")
	}
	return fmt.Sprintf("%d bytes", n)
}

// masker replaces secrets in a stream of text chunks with "***". It holds
// back the end of a chunk only while that end could be the start of a
// secret, so ordinary output (progress dots) is never delayed.
type masker struct {
	secrets []string
	held    string
}

// Next returns the masked text that is safe to emit now.
func (m *masker) Next(text string) string {
	if len(m.secrets) == 0 {
		return text
	}
	s := m.held + text
	m.held = ""
	for _, secret := range m.secrets {
		if secret != "" {
			s = strings.ReplaceAll(s, secret, "***")
		}
	}
	hold := 0
	for _, secret := range m.secrets {
		for k := min(len(secret)-1, len(s)); k > hold; k-- {
			if strings.HasSuffix(s, secret[:k]) {
				hold = k
				break
			}
		}
	}
	m.held = s[len(s)-hold:]
	return s[:len(s)-hold]
}

// Flush returns text followed by whatever is held back (at the end of the
// stream, where no secret can complete any more).
func (m *masker) Flush(text string) string {
	text += m.held
	m.held = ""
	return text
}
