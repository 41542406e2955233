package jobs

import "testing"

func TestBrokerDeliversInOrderToEverySubscriber(t *testing.T) {
	b := NewBroker()
	s1 := b.Subscribe("a", 10)
	s2 := b.Subscribe("a", 10)
	other := b.Subscribe("b", 10)
	defer s1.Close()
	defer s2.Close()
	defer other.Close()
	b.Publish("a", []Event{{Seq: 1}, {Seq: 2}})
	for _, s := range []*Subscription{s1, s2} {
		for want := int64(1); want <= 2; want++ {
			if ev := <-s.C; ev.Seq != want {
				t.Fatalf("seq=%d, want %d", ev.Seq, want)
			}
		}
	}
	select {
	case ev := <-other.C:
		t.Fatalf("subscriber of b got %+v", ev)
	default:
	}
}

func TestBrokerOverflowClosesSubscription(t *testing.T) {
	b := NewBroker()
	s := b.Subscribe("a", 2)
	b.Publish("a", []Event{{Seq: 1}, {Seq: 2}, {Seq: 3}})
	var got []int64
	for ev := range s.C { // must end: the overflow closed C
		got = append(got, ev.Seq)
	}
	if len(got) != 2 || got[0] != 1 || got[1] != 2 {
		t.Fatalf("got %v, want [1 2] then closed", got)
	}
	if n := b.Subscribers("a"); n != 0 {
		t.Fatalf("subscribers=%d after overflow, want 0", n)
	}
	s.Close()                         // idempotent
	b.Publish("a", []Event{{Seq: 4}}) // no subscriber: must not block or panic
}
