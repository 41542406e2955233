// Package metrics measures ci-server for Prometheus. Metrics implements the
// measurement hooks of the other packages (jobs.Metrics, and those of ws,
// api and executor, which take plain strings and durations) with
// github.com/prometheus/client_golang, and Handler serves them, with the
// Go runtime's and the process's, in the Prometheus text format.
//
// Every metric is named ci_*, and every label value a hook may pass is
// made at zero up front, so a series exists before its first event.
package metrics

import (
	"context"
	"log/slog"
	"net/http"
	"time"

	"ci/jobs"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Label values the hooks pass. They are the constants of the packages that
// measure (ws.StreamEvents, api.RejectTooLarge, executor.DepsCached...),
// repeated here so that this package depends on the domain only; the tests
// check they agree.
var (
	terminalStatuses = []jobs.Status{jobs.StatusPassed, jobs.StatusFailed, jobs.StatusError, jobs.StatusTimedOut, jobs.StatusCanceled}
	phases           = []string{jobs.PhaseInstall, jobs.PhaseTest}
	streams          = []string{"events", "jobs"}
	rejectReasons    = []string{"unsupported_type", "too_large", "invalid", "queue_full"}
	containerKinds   = []string{"test", "install"}
	depsResults      = []string{"installed", "cached", "failed"}
)

// Histogram buckets, in seconds or events.
var (
	// durationBuckets fit jobs and phases: seconds to the default
	// one-hour limit.
	durationBuckets = []float64{0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600}
	// commitBuckets fit one SQLite transaction: well under a second.
	commitBuckets = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5}
	// batchBuckets go up to the recorder's largest batch (1024).
	batchBuckets = prometheus.ExponentialBuckets(1, 2, 11)
	// startBuckets fit a container start: about 0.2 s on a local engine.
	startBuckets = []float64{0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 2, 5, 10}
)

// Metrics holds ci-server's metrics in a registry of its own. It is safe
// for concurrent use; no method allocates on the paths measured per batch
// of events.
type Metrics struct {
	reg *prometheus.Registry

	submitted       prometheus.Counter
	finished        map[jobs.Status]prometheus.Counter
	jobDuration     map[jobs.Status]prometheus.Observer
	phaseDuration   map[string]prometheus.Observer
	eventsPersisted prometheus.Counter
	batchSize       prometheus.Histogram
	commitDuration  prometheus.Histogram
	subscribers     *prometheus.GaugeVec
	followFallbacks prometheus.Counter
	watchFallbacks  prometheus.Counter
	uploadBytes     prometheus.Counter
	uploadsRejected *prometheus.CounterVec
	containerStart  *prometheus.HistogramVec
	depsInstalls    *prometheus.CounterVec
}

var _ jobs.Metrics = (*Metrics)(nil)

// New returns the metrics, registered with a new registry together with
// the Go runtime and process collectors.
func New() *Metrics {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	a := promauto.With(reg)
	fallbacks := a.NewCounterVec(prometheus.CounterOpts{Name: "ci_slow_reader_fallbacks_total",
		Help: "Followers that fell behind their live subscription and caught up from the store: stream=events reads the missed events, stream=jobs gets a fresh snapshot."},
		[]string{"stream"})
	m := &Metrics{
		reg: reg,
		submitted: a.NewCounter(prometheus.CounterOpts{Name: "ci_jobs_submitted_total",
			Help: "Jobs accepted and queued since the server started."}),
		eventsPersisted: a.NewCounter(prometheus.CounterOpts{Name: "ci_events_persisted_total",
			Help: "Job events committed to the store by the group-commit recorders (each job's first event, stored with the job, is not counted)."}),
		batchSize: a.NewHistogram(prometheus.HistogramOpts{Name: "ci_event_batch_size",
			Help: "Events per committed batch (transaction) of a recorder.", Buckets: batchBuckets}),
		commitDuration: a.NewHistogram(prometheus.HistogramOpts{Name: "ci_event_commit_duration_seconds",
			Help: "Time to commit one batch of events to the store, retries included.", Buckets: commitBuckets}),
		subscribers: a.NewGaugeVec(prometheus.GaugeOpts{Name: "ci_websocket_subscribers",
			Help: "Open WebSocket streams: stream=events for a job's events, stream=jobs for the job list feed."},
			[]string{"stream"}),
		followFallbacks: fallbacks.WithLabelValues("events"),
		watchFallbacks:  fallbacks.WithLabelValues("jobs"),
		uploadBytes: a.NewCounter(prometheus.CounterOpts{Name: "ci_upload_bytes_total",
			Help: "Bytes of upload bodies read, refused uploads included."}),
		uploadsRejected: a.NewCounterVec(prometheus.CounterOpts{Name: "ci_uploads_rejected_total",
			Help: "Uploads refused, by reason: unsupported_type (415), too_large (413), invalid (400), queue_full (503)."},
			[]string{"reason"}),
		containerStart: a.NewHistogramVec(prometheus.HistogramOpts{Name: "ci_container_start_duration_seconds",
			Help:    "Time the Docker engine took to start a container (the start call), by container: test or install.",
			Buckets: startBuckets}, []string{"container"}),
		depsInstalls: a.NewCounterVec(prometheus.CounterOpts{Name: "ci_dependency_installs_total",
			Help: "Dependency phases of jobs with a requirements.txt, by result: installed, cached (no install needed) or failed."},
			[]string{"result"}),
		finished:      make(map[jobs.Status]prometheus.Counter),
		jobDuration:   make(map[jobs.Status]prometheus.Observer),
		phaseDuration: make(map[string]prometheus.Observer),
	}
	finished := a.NewCounterVec(prometheus.CounterOpts{Name: "ci_jobs_finished_total",
		Help: "Jobs that reached a terminal status since the server started, by status."}, []string{"status"})
	jobDuration := a.NewHistogramVec(prometheus.HistogramOpts{Name: "ci_job_duration_seconds",
		Help:    "Run time of finished jobs, from start to end, by terminal status (jobs canceled while queued never started and are not observed).",
		Buckets: durationBuckets}, []string{"status"})
	for _, s := range terminalStatuses {
		m.finished[s] = finished.WithLabelValues(string(s))
		m.jobDuration[s] = jobDuration.WithLabelValues(string(s))
	}
	phaseDuration := a.NewHistogramVec(prometheus.HistogramOpts{Name: "ci_job_phase_duration_seconds",
		Help:    "Time jobs spent in a phase: install (requirements.txt) or test (pytest; a job without requirements counts its whole run).",
		Buckets: durationBuckets}, []string{"phase"})
	for _, p := range phases {
		m.phaseDuration[p] = phaseDuration.WithLabelValues(p)
	}
	for _, s := range streams {
		m.subscribers.WithLabelValues(s)
	}
	for _, r := range rejectReasons {
		m.uploadsRejected.WithLabelValues(r)
	}
	for _, k := range containerKinds {
		m.containerStart.WithLabelValues(k)
	}
	for _, r := range depsResults {
		m.depsInstalls.WithLabelValues(r)
	}
	return m
}

// Handler serves the metrics in the Prometheus text format (or what the
// scraper asks for).
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// Registry returns the registry the metrics are registered with.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// ObserveLoad registers the gauges ci_jobs_queued and ci_jobs_running,
// read from load at each scrape (for example jobs.Service.Load). Call it
// once.
func (m *Metrics) ObserveLoad(load func() jobs.Load) {
	m.reg.MustRegister(&loadCollector{
		load:    load,
		queued:  prometheus.NewDesc("ci_jobs_queued", "Jobs waiting in the queue (queue depth).", nil, nil),
		running: prometheus.NewDesc("ci_jobs_running", "Jobs running, including those left running by a previous server and not re-attached yet.", nil, nil),
	})
}

// ObserveStatuses registers the gauge ci_jobs{status}: how many stored
// jobs have each status, read from count at each scrape (for example
// persistence.Store.CountJobsByStatus), so it is right across restarts.
// A failed count leaves the gauge out of that scrape. Call it once.
func (m *Metrics) ObserveStatuses(count func(context.Context) (map[jobs.Status]int64, error)) {
	m.reg.MustRegister(&statusCollector{
		count: count,
		desc:  prometheus.NewDesc("ci_jobs", "Stored jobs by status.", []string{"status"}, nil),
	})
}

// statusCollector counts the stored jobs by status once per scrape.
type statusCollector struct {
	count func(context.Context) (map[jobs.Status]int64, error)
	desc  *prometheus.Desc
}

func (c *statusCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *statusCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	counts, err := c.count(ctx)
	if err != nil {
		slog.Warn("metrics: count jobs by status", "err", err)
		return
	}
	for _, st := range []jobs.Status{jobs.StatusQueued, jobs.StatusRunning, jobs.StatusPassed, jobs.StatusFailed,
		jobs.StatusError, jobs.StatusTimedOut, jobs.StatusCanceled} {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(counts[st]), string(st))
	}
}

// loadCollector reads the queued and running jobs once per scrape.
type loadCollector struct {
	load            func() jobs.Load
	queued, running *prometheus.Desc
}

func (c *loadCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.queued
	ch <- c.running
}

func (c *loadCollector) Collect(ch chan<- prometheus.Metric) {
	l := c.load()
	ch <- prometheus.MustNewConstMetric(c.queued, prometheus.GaugeValue, float64(l.Queued))
	ch <- prometheus.MustNewConstMetric(c.running, prometheus.GaugeValue, float64(l.Running))
}

// JobSubmitted implements jobs.Metrics.
func (m *Metrics) JobSubmitted() { m.submitted.Inc() }

// JobFinished implements jobs.Metrics.
func (m *Metrics) JobFinished(job *jobs.Job) {
	c, ok := m.finished[job.Status]
	if !ok {
		return // not terminal: cannot happen
	}
	c.Inc()
	if job.StartedAt != nil && job.FinishedAt != nil {
		m.jobDuration[job.Status].Observe(job.FinishedAt.Sub(*job.StartedAt).Seconds())
	}
}

// PhaseEnded implements jobs.Metrics.
func (m *Metrics) PhaseEnded(phase string, took time.Duration) {
	if o, ok := m.phaseDuration[phase]; ok {
		o.Observe(took.Seconds())
	}
}

// EventsPersisted implements jobs.Metrics.
func (m *Metrics) EventsPersisted(events int, took time.Duration) {
	m.eventsPersisted.Add(float64(events))
	m.batchSize.Observe(float64(events))
	m.commitDuration.Observe(took.Seconds())
}

// FollowOverflowed implements jobs.Metrics.
func (m *Metrics) FollowOverflowed() { m.followFallbacks.Inc() }

// WatchOverflowed implements jobs.Metrics.
func (m *Metrics) WatchOverflowed() { m.watchFallbacks.Inc() }

// StreamOpened implements ws.Metrics.
func (m *Metrics) StreamOpened(kind string) { m.subscribers.WithLabelValues(kind).Inc() }

// StreamClosed implements ws.Metrics.
func (m *Metrics) StreamClosed(kind string) { m.subscribers.WithLabelValues(kind).Dec() }

// UploadReceived implements api.UploadMetrics.
func (m *Metrics) UploadReceived(bytes int64) { m.uploadBytes.Add(float64(bytes)) }

// UploadRejected implements api.UploadMetrics.
func (m *Metrics) UploadRejected(reason string) { m.uploadsRejected.WithLabelValues(reason).Inc() }

// ContainerStarted implements executor.Metrics.
func (m *Metrics) ContainerStarted(kind string, took time.Duration) {
	m.containerStart.WithLabelValues(kind).Observe(took.Seconds())
}

// DepsResolved implements executor.Metrics.
func (m *Metrics) DepsResolved(result string) { m.depsInstalls.WithLabelValues(result).Inc() }
