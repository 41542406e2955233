package persistence_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"ci/internal/pgtest"
	"ci/jobs"
	"ci/persistence"
)

// BenchmarkAppendEvents measures the rate of persisting small log events in
// batches, as the group-commit writer does: on SQLite (batch=N), and on
// PostgreSQL (postgres/batch=N) when pgtest.EnvDSN names a server.
func BenchmarkAppendEvents(b *testing.B) {
	benchmarkAppendEvents(b, func(b *testing.B) *persistence.Store { return MustOpen(b) })
	b.Run("postgres", func(b *testing.B) {
		dsn := pgtest.DSN(b)
		benchmarkAppendEvents(b, func(b *testing.B) *persistence.Store { return MustOpenPath(b, dsn) })
	})
}

// benchmarkAppendEvents runs BenchmarkAppendEvents on stores that open
// opens.
func benchmarkAppendEvents(b *testing.B, open func(*testing.B) *persistence.Store) {
	for _, batch := range []int{1, 32, 256, 1024} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			ctx := context.Background()
			s := open(b)
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

// BenchmarkReplay measures reading a whole 1,000,000-event job back in
// pages, as a follower that starts from seq 0 does (the service reads 256
// events a page; /log reads larger pages).
func BenchmarkReplay(b *testing.B) {
	const total = 1_000_000
	ctx := context.Background()
	s := MustOpen(b)
	job := MustCreateJob(b, s)
	text := strings.Repeat("x", 60) + "\n"
	events := make([]jobs.Event, 1024)
	for job.LastSeq < total {
		n := min(len(events), int(total-job.LastSeq))
		now := time.Now()
		for i := range events[:n] {
			events[i] = jobs.Event{JobID: job.ID, Seq: job.LastSeq + 1 + int64(i), Time: now,
				Type: jobs.EventLog, Stream: jobs.StreamStdout, Text: text}
		}
		job.LastSeq += int64(n)
		if err := s.AppendEvents(ctx, job, events[:n]); err != nil {
			b.Fatal(err)
		}
	}
	for _, page := range []int{256, 10000} {
		b.Run(fmt.Sprintf("page=%d", page), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				var after int64
				for {
					evs, err := s.Events(ctx, job.ID, after, page)
					if err != nil {
						b.Fatal(err)
					}
					if len(evs) == 0 {
						break
					}
					after = evs[len(evs)-1].Seq
				}
				if after != total {
					b.Fatalf("replayed to seq %d, want %d", after, total)
				}
			}
			b.ReportMetric(float64(total)*float64(b.N)/b.Elapsed().Seconds(), "events/s")
		})
	}
}
