package main

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"time"
)

// percentiles of latencies in µs, nearest rank; sorts lat.
type percentiles struct {
	n             int
	p50, p99, max time.Duration
}

func percentilesOf(lat []int32) percentiles {
	if len(lat) == 0 {
		return percentiles{}
	}
	slices.Sort(lat)
	at := func(q float64) time.Duration {
		i := int(q*float64(len(lat))+0.999999) - 1
		i = max(0, min(i, len(lat)-1))
		return time.Duration(lat[i]) * time.Microsecond
	}
	return percentiles{n: len(lat), p50: at(0.50), p99: at(0.99), max: time.Duration(lat[len(lat)-1]) * time.Microsecond}
}

// median of xs (the mean of the middle two for an even count).
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// ms formats d in milliseconds.
func ms(d time.Duration) string {
	return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond))
}

// mib formats KiB as MiB.
func mib(kb int64) string {
	return fmt.Sprintf("%.1f MiB", float64(kb)/1024)
}

// loadavg returns the 1-, 5- and 15-minute load averages.
func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// metOrNot says whether a target is met.
func metOrNot(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT met"
}
