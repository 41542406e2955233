package jobs

import (
	"encoding/json"
	"sync"
)

// DefaultSubscriptionBuffer is the number of events a subscription holds
// for a reader that is behind before it overflows.
const DefaultSubscriptionBuffer = 256

// Broker fans a job's newly persisted events out to in-process watchers.
//
// It only ever says "here is what was just committed"; the Store stays the
// truth. A subscriber that falls behind is never waited for and never makes
// the broker buffer without bound: when its buffer is full, its
// subscription is closed, and the subscriber catches up from the store and
// subscribes again (see Subscription). The zero value is not usable; use
// NewBroker.
type Broker struct {
	mu      sync.Mutex
	subs    map[string]map[*Subscription]struct{}
	jobSubs map[*JobSubscription]struct{}
}

// NewBroker returns an empty broker.
func NewBroker() *Broker {
	return &Broker{
		subs:    make(map[string]map[*Subscription]struct{}),
		jobSubs: make(map[*JobSubscription]struct{}),
	}
}

// Subscription receives the events of one job published after it was made.
type Subscription struct {
	// C delivers events in seq order. It is closed when the subscription
	// overflowed (the reader was too slow) or was closed. After an overflow
	// some published events were not delivered: read them from the store.
	// The events are shared with every other subscriber: read them, never
	// modify them. (Pointers keep a subscription's buffer small: 8 bytes
	// an event instead of the event's 200-odd, times thousands of
	// watchers.)
	C <-chan *Event

	c      chan *Event
	b      *Broker
	jobID  string
	closed bool // guarded by b.mu
}

// Subscribe returns a subscription to the events of the job with the given
// ID, with room for buffer undelivered events (DefaultSubscriptionBuffer
// when buffer <= 0). Close it when done.
func (b *Broker) Subscribe(jobID string, buffer int) *Subscription {
	if buffer <= 0 {
		buffer = DefaultSubscriptionBuffer
	}
	c := make(chan *Event, buffer)
	s := &Subscription{C: c, c: c, b: b, jobID: jobID}
	b.mu.Lock()
	defer b.mu.Unlock()
	m := b.subs[jobID]
	if m == nil {
		m = make(map[*Subscription]struct{})
		b.subs[jobID] = m
	}
	m[s] = struct{}{}
	return s
}

// Publish delivers events, which must already be persisted and be in seq
// order, to every subscriber of jobID without blocking. Subscribers get
// pointers into events, which must not be modified afterwards. Each event
// is encoded once here (Raw, unless it has one), for every watcher to send
// as it is.
func (b *Broker) Publish(jobID string, events []Event) {
	for i := range events {
		if events[i].Raw == nil {
			events[i].Raw, _ = json.Marshal(&events[i]) // plain fields: it can't fail
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for s := range b.subs[jobID] {
		for i := range events {
			select {
			case s.c <- &events[i]:
			default:
				// Slow reader: drop the subscription rather than buffer
				// without bound. The reader sees C closed and falls back to
				// the store.
				s.closeLocked()
			}
			if s.closed {
				break
			}
		}
	}
}

// Subscribers returns the number of live subscriptions to jobID.
func (b *Broker) Subscribers(jobID string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.subs[jobID])
}

// Close ends the subscription and closes C. It is safe to call more than
// once.
func (s *Subscription) Close() {
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	s.closeLocked()
}

func (s *Subscription) closeLocked() {
	if s.closed {
		return
	}
	s.closed = true
	close(s.c)
	m := s.b.subs[s.jobID]
	delete(m, s)
	if len(m) == 0 {
		delete(s.b.subs, s.jobID)
	}
}

// JobSubscription receives a snapshot of a job each time any job is
// created or changes status, after the change is persisted.
type JobSubscription struct {
	// C delivers jobs in the order of their changes. It is closed on
	// overflow (the reader was too slow: some changes were not delivered)
	// or by Close.
	C <-chan Job

	c      chan Job
	b      *Broker
	closed bool // guarded by b.mu
}

// SubscribeJobs returns a subscription to changes of every job, with room
// for buffer undelivered changes (DefaultSubscriptionBuffer when <= 0).
func (b *Broker) SubscribeJobs(buffer int) *JobSubscription {
	if buffer <= 0 {
		buffer = DefaultSubscriptionBuffer
	}
	c := make(chan Job, buffer)
	s := &JobSubscription{C: c, c: c, b: b}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.jobSubs[s] = struct{}{}
	return s
}

// PublishJob tells job subscribers about a persisted change of job,
// without blocking.
func (b *Broker) PublishJob(job Job) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for s := range b.jobSubs {
		select {
		case s.c <- job:
		default:
			s.closeLocked()
		}
	}
}

// jobSubscribers returns the number of job list subscriptions.
func (b *Broker) jobSubscribers() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.jobSubs)
}

// ResyncJobs ends every job subscription as an overflow does, so that
// each watcher starts again from a fresh snapshot: for when changes may
// have been missed (a replica's change feed lost its connection).
func (b *Broker) ResyncJobs() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for s := range b.jobSubs {
		s.closeLocked()
	}
}

// Close ends the subscription and closes C. It is safe to call more than
// once.
func (s *JobSubscription) Close() {
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	s.closeLocked()
}

func (s *JobSubscription) closeLocked() {
	if s.closed {
		return
	}
	s.closed = true
	close(s.c)
	delete(s.b.jobSubs, s)
}
