package persistence

import (
	"math/rand/v2"
	"testing"
	"time"
)

// TestTimeText checks that timeText formats exactly as go-sqlite3 binds a
// time.Time, so times read back the same whichever way they were written.
func TestTimeText(t *testing.T) {
	var f timeText
	base := time.Date(2026, 12, 3, 19, 4, 5, 0, time.FixedZone("X", 3600))
	for i := range 10000 {
		tm := base.Add(time.Duration(rand.Int64N(int64(72 * time.Hour))))
		switch i % 4 {
		case 0:
			tm = tm.Truncate(time.Second)
		case 1:
			tm = tm.Truncate(time.Millisecond)
		}
		if got, want := f.format(tm), tm.UTC().Format(timeLayout); got != want {
			t.Fatalf("format(%v)=%q, want %q", tm, got, want)
		}
	}
}
