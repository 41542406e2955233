package persistence

import (
	"crypto/rand"
	"strings"
	"sync"
	"time"

	"github.com/oklog/ulid/v2"
)

// ids generates job IDs: lowercase ULIDs from monotonic entropy, so that
// IDs sort by creation order even within one millisecond and even if the
// wall clock steps back.
var ids = struct {
	sync.Mutex
	entropy *ulid.MonotonicEntropy
	lastMS  uint64
}{entropy: ulid.Monotonic(rand.Reader, 0)}

// newID returns a new job ID for a job created at now.
func newID(now time.Time) (string, error) {
	ids.Lock()
	defer ids.Unlock()
	ms := max(ulid.Timestamp(now), ids.lastMS)
	id, err := ulid.New(ms, ids.entropy)
	if err != nil {
		return "", err
	}
	ids.lastMS = ms
	return strings.ToLower(id.String()), nil
}
