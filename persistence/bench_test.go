package persistence_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"ci/jobs"
)

// BenchmarkAppendEvents measures the rate of persisting small log events in
// batches, as the group-commit writer does.
func BenchmarkAppendEvents(b *testing.B) {
	for _, batch := range []int{1, 32, 256, 1024} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			ctx := context.Background()
			s := MustOpen(b)
			job := MustCreateJob(b, s)
			text := strings.Repeat("x", 60) + "\n"
			events := make([]jobs.Event, batch)
			b.ReportAllocs()
			n := 0
			for b.Loop() {
				now := time.Now()
				for i := range events {
					events[i] = jobs.Event{
						JobID: job.ID, Seq: job.LastSeq + 1 + int64(i), Time: now,
						Type: jobs.EventLog, Stream: jobs.StreamStdout, Text: text,
					}
				}
				job.LastSeq += int64(batch)
				if err := s.AppendEvents(ctx, job, events); err != nil {
					b.Fatal(err)
				}
				n += batch
			}
			b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "events/s")
		})
	}
}
