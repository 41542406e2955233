package jobs

import "sync"

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
	mu   sync.Mutex
	subs map[string]map[*Subscription]struct{}
}

// NewBroker returns an empty broker.
func NewBroker() *Broker {
	return &Broker{subs: make(map[string]map[*Subscription]struct{})}
}

// Subscription receives the events of one job published after it was made.
type Subscription struct {
	// C delivers events in seq order. It is closed when the subscription
	// overflowed (the reader was too slow) or was closed. After an overflow
	// some published events were not delivered: read them from the store.
	C <-chan Event

	c      chan Event
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
	c := make(chan Event, buffer)
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
// order, to every subscriber of jobID without blocking.
func (b *Broker) Publish(jobID string, events []Event) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for s := range b.subs[jobID] {
		for _, ev := range events {
			select {
			case s.c <- ev:
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
