// Command ci-server runs the ci service: it accepts project uploads, runs
// pytest on them in Docker containers and streams their output.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"ci/api"
	"ci/executor"
	"ci/jobs"
	"ci/metrics"
	"ci/persistence"
	"ci/webui"
	"ci/ws"

	"github.com/spf13/pflag"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if len(os.Args) > 1 && os.Args[1] == "deps" {
		os.Exit(depsCommand(ctx, os.Args[2:], os.Stdout, os.Stderr))
	}
	m := NewMain()
	if err := m.ParseFlags(os.Args[1:], os.Stderr); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "ci-server:", err)
		os.Exit(64)
	}
	if err := m.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "ci-server:", err)
		m.Close()
		os.Exit(1)
	}
	<-ctx.Done()
	stop() // a second signal kills at once
	m.Log.Info("shutting down")
	if err := m.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "ci-server:", err)
		os.Exit(1)
	}
}

// Main is the server program: flags, wiring and lifecycle. Tests run it
// in-process on ":0" with a temporary data dir.
type Main struct {
	Addr        string
	DataDir     string
	DB          string
	Image       string
	Concurrency int
	MaxUpload   int64
	JobTimeout  time.Duration
	MaxQueued   int
	MaxOutput   int64
	MaxFiles    int
	MaxUnpacked int64
	Token       string
	Private     bool
	// Sandbox limits of every test container (0: the executor's default).
	User      string
	Memory    int64
	CPUs      float64
	Pids      int64
	TmpfsSize int64
	StopGrace time.Duration
	// The dependency phase: the install containers' network and the
	// cache's limits (0: no limit).
	InstallNetwork string
	DepsCacheMax   int
	DepsCacheSize  int64
	// Warm is how many test containers are kept started ahead of jobs.
	Warm int
	// Replica names this server among replicas sharing a PostgreSQL
	// database ("" until ParseFlags: <host>-<hash of the data dir>), and
	// Lease is how long its claim on a running job lasts unrenewed.
	Replica  string
	Lease    time.Duration
	LogLevel string
	// Pprof is the address of a separate listener serving net/http/pprof
	// under /debug/pprof/; "" serves none. It is never served on Addr, has
	// no auth, and belongs on loopback.
	Pprof string

	// Log is the server's logger; ParseFlags sets a text logger on stderr
	// at LogLevel when it is nil.
	Log *slog.Logger

	// Executor overrides the Docker executor (tests); nil means Docker.
	Executor jobs.Executor

	listener      net.Listener
	server        *http.Server
	pprofListener net.Listener
	pprofServer   *http.Server
	metrics       *metrics.Metrics
	events        *ws.Handler
	service       *jobs.Service
	store         *persistence.Store
	dbArchives    *persistence.DBArchives // PostgreSQL only
	docker        *executor.Docker
}

// NewMain returns a Main with the default configuration.
func NewMain() *Main {
	return &Main{
		Addr:        ":8000",
		DataDir:     "./data",
		Image:       "python:3.12-slim",
		Concurrency: runtime.NumCPU(),
		MaxUpload:   api.DefaultMaxUpload,
		JobTimeout:  jobs.DefaultMaxTimeout,
		MaxQueued:   1000,
		MaxOutput:   jobs.DefaultMaxOutput,
		MaxFiles:    jobs.DefaultMaxFiles,
		MaxUnpacked: jobs.DefaultMaxUnpacked,
		// Each entry is a venv: mostly tens to hundreds of MiB.
		InstallNetwork: executor.DefaultInstallNetwork,
		DepsCacheMax:   50,
		DepsCacheSize:  10 << 30,
		Warm:           2,
		Lease:          jobs.DefaultLease,
		LogLevel:       "info",
	}
}

// ParseFlags sets the configuration from command-line arguments.
func (m *Main) ParseFlags(args []string, stderr io.Writer) error {
	fs := pflag.NewFlagSet("ci-server", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&m.Addr, "addr", m.Addr, "address to listen on")
	fs.StringVar(&m.DataDir, "data", m.DataDir, "data directory (database and uploaded archives)")
	fs.StringVar(&m.DB, "db", m.DB, "SQLite database file (default <data>/ci.db), or a postgres:// URL "+
		"(default $CI_DATABASE_URL) that several ci-server replicas share")
	fs.StringVar(&m.Replica, "replica", m.Replica, "this server's name among replicas sharing a PostgreSQL database, "+
		"recorded on the jobs it runs; keep it across restarts (default <hostname>-<hash of --data>)")
	fs.DurationVar(&m.Lease, "lease", m.Lease, "replicas: how long a claim on a running job lasts unrenewed; "+
		"a replica that dies has its running jobs ended error that long after")
	fs.StringVar(&m.Image, "image", m.Image, "Docker image the tests run in (needs python and pytest)")
	fs.IntVar(&m.Concurrency, "concurrency", m.Concurrency, "most jobs running at once")
	fs.Int64Var(&m.MaxUpload, "max-upload", m.MaxUpload, "largest accepted upload in bytes")
	fs.DurationVar(&m.JobTimeout, "job-timeout", m.JobTimeout, "longest a job's tests may run (a job may ask for less)")
	fs.IntVar(&m.MaxQueued, "max-queued", m.MaxQueued, "most jobs waiting in the queue; more are refused with 503")
	fs.Int64Var(&m.MaxOutput, "max-output", m.MaxOutput, "output stored per job in bytes; past it only the last 1 MiB is kept")
	fs.IntVar(&m.MaxFiles, "max-files", m.MaxFiles, "most files an uploaded archive may hold")
	fs.Int64Var(&m.MaxUnpacked, "max-unpacked", m.MaxUnpacked, "most bytes an uploaded archive may unpack to")
	// The default comes from the environment after parsing, so that --help
	// never prints the token.
	fs.StringVar(&m.Token, "token", "", "API token that submit and cancel need (default $CI_SERVER_TOKEN); clients send it from $CI_TOKEN")
	fs.BoolVar(&m.Private, "private", m.Private, "make every API read need the token too")
	fs.StringVar(&m.User, "user", "65534:65534", "numeric uid:gid the tests run as (never root)")
	fs.Int64Var(&m.Memory, "memory", 2<<30, "memory limit of a test container in bytes (tmpfs /tmp counts towards it)")
	fs.Float64Var(&m.CPUs, "cpus", 1, "CPU limit of a test container")
	fs.Int64Var(&m.Pids, "pids", 512, "most processes in a test container")
	fs.Int64Var(&m.TmpfsSize, "tmpfs-size", 512<<20, "size of the writable /tmp of a test container in bytes")
	fs.DurationVar(&m.StopGrace, "stop-grace", 5*time.Second, "time between SIGTERM and SIGKILL when a job is canceled or times out")
	fs.StringVar(&m.InstallNetwork, "install-network", m.InstallNetwork,
		"Docker network of the containers that install requirements.txt (\"none\" for offline setups with local wheels)")
	fs.IntVar(&m.DepsCacheMax, "deps-cache-max", m.DepsCacheMax,
		"most dependency sets (venvs) kept; past it the least recently used go (0: no limit)")
	fs.Int64Var(&m.DepsCacheSize, "deps-cache-size", m.DepsCacheSize,
		"most bytes the kept venvs may take together, the same way (0: no limit)")
	fs.IntVar(&m.Warm, "warm", m.Warm,
		"test containers kept created and started ahead of jobs, so a job starts without waiting for one (0: none)")
	fs.StringVar(&m.LogLevel, "log-level", m.LogLevel, "log level: debug, info, warn or error")
	fs.StringVar(&m.Pprof, "pprof", m.Pprof,
		"serve net/http/pprof on this separate address, e.g. 127.0.0.1:6060 (no auth: keep it on loopback; default off)")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: ci-server [flags]\n       ci-server deps list|prune [flags]\n\n"+
			"Runs the ci service (see ci-server deps --help for the dependency cache). Flags:\n%s", fs.FlagUsages())
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if !fs.Changed("token") {
		m.Token = os.Getenv("CI_SERVER_TOKEN")
	}
	// From the environment too: a PostgreSQL URL holds a password.
	if !fs.Changed("db") {
		m.DB = os.Getenv("CI_DATABASE_URL")
	}
	if m.Replica == "" {
		m.Replica = defaultReplica(m.DataDir)
	}
	if m.Lease < time.Second {
		return fmt.Errorf("--lease must be at least 1s, got %s", m.Lease)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q (see ci-server --help)", fs.Args())
	}
	if m.Concurrency < 1 {
		return fmt.Errorf("--concurrency must be at least 1, got %d", m.Concurrency)
	}
	if m.JobTimeout <= 0 {
		return fmt.Errorf("--job-timeout must be positive, got %s", m.JobTimeout)
	}
	if m.MaxQueued < 1 {
		return fmt.Errorf("--max-queued must be at least 1, got %d", m.MaxQueued)
	}
	if m.MaxOutput < 1<<20 {
		return fmt.Errorf("--max-output must be at least 1 MiB, got %d", m.MaxOutput)
	}
	if m.MaxFiles < 1 || m.MaxUnpacked < 1 {
		return fmt.Errorf("--max-files and --max-unpacked must be positive")
	}
	if m.Token != "" && len(m.Token) < 16 {
		return errors.New("--token must be at least 16 characters long")
	}
	if m.Private && m.Token == "" {
		return errors.New("--private needs --token (or CI_SERVER_TOKEN)")
	}
	if m.MaxUpload < 1 {
		return fmt.Errorf("--max-upload must be positive, got %d", m.MaxUpload)
	}
	if m.Image == "" {
		return errors.New("--image must not be empty")
	}
	if m.InstallNetwork == "" {
		return errors.New("--install-network must not be empty (\"none\" for no network)")
	}
	if m.Warm < 0 {
		return fmt.Errorf("--warm must not be negative, got %d", m.Warm)
	}
	if m.DepsCacheMax < 0 || m.DepsCacheSize < 0 {
		return errors.New("--deps-cache-max and --deps-cache-size must not be negative (0: no limit)")
	}
	if m.Pprof != "" {
		if _, _, err := net.SplitHostPort(m.Pprof); err != nil {
			return fmt.Errorf("--pprof must be host:port, such as 127.0.0.1:6060, got %q", m.Pprof)
		}
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(m.LogLevel)); err != nil {
		return fmt.Errorf("--log-level must be debug, info, warn or error, got %q", m.LogLevel)
	}
	if m.Log == nil {
		m.Log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	}
	return nil
}

// Run opens the store, starts the job service and starts serving HTTP. It
// returns once the server listens; Close stops it.
func (m *Main) Run(ctx context.Context) error {
	if err := os.MkdirAll(m.DataDir, 0o755); err != nil {
		return fmt.Errorf("create data dir: %w", err)
	}
	dbPath := m.DB
	if dbPath == "" {
		dbPath = filepath.Join(m.DataDir, "ci.db")
	}
	store, err := persistence.Open(ctx, dbPath)
	if err != nil {
		return fmt.Errorf("open database %s: %w", redactDSN(dbPath), err)
	}
	m.store = store
	var archives jobs.Archives
	changes := store.ChangeFeed()
	if changes != nil {
		// Replicas share the database, and so the uploads: kept in it,
		// with the data dir as a local cache.
		m.dbArchives, err = persistence.OpenDBArchives(ctx, dbPath, filepath.Join(m.DataDir, "archives"))
		if err != nil {
			return fmt.Errorf("open archives in %s: %w", redactDSN(dbPath), err)
		}
		archives = m.dbArchives
		m.Log.Info("replica of a shared database", "replica", m.Replica, "lease", m.Lease)
	} else {
		fileArchives, err := persistence.NewArchives(filepath.Join(m.DataDir, "archives"))
		if err != nil {
			return fmt.Errorf("open archive dir: %w", err)
		}
		archives = fileArchives
	}

	m.metrics = metrics.New()
	exec := m.Executor
	if exec == nil {
		d, err := executor.NewDocker(executor.DockerConfig{
			Image:     m.Image,
			User:      m.User,
			Memory:    m.Memory,
			CPUs:      m.CPUs,
			Pids:      m.Pids,
			TmpfsSize: m.TmpfsSize,
			StopGrace: m.StopGrace,
			Deps:      depsConfig(m.DataDir, m.InstallNetwork, m.DepsCacheMax, m.DepsCacheSize),
			Warm:      m.Warm,
			PoolOwner: poolOwner(m.DataDir),
			Logger:    m.Log.With("component", "docker"),
			Metrics:   m.metrics,
		})
		if err != nil {
			return err // says what is wrong with which setting
		}
		m.docker = d
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if err := d.Ping(pctx); err != nil {
			// Jobs will end in error with this message until it answers;
			// the server itself is still useful (status, logs).
			m.Log.Warn("no Docker engine answers; jobs will fail until one does", "err", err)
		}
		cancel()
		// Unclaimed warm containers of an earlier server go first; claimed
		// ones are jobs, which the service re-attaches.
		d.StartPool(ctx)
		exec = d
	}

	m.service = jobs.NewService(store, archives, exec, jobs.Config{
		Concurrency: m.Concurrency,
		MaxTimeout:  m.JobTimeout,
		MaxQueued:   m.MaxQueued,
		MaxOutput:   m.MaxOutput,
		MaxFiles:    m.MaxFiles,
		MaxUnpacked: m.MaxUnpacked,
		Secrets:     secrets(m.Token),
		Logger:      m.Log.With("component", "jobs"),
		Metrics:     m.metrics,
		Replica:     m.Replica,
		Changes:     changes,
		Lease:       m.Lease,
	})
	m.metrics.ObserveLoad(m.service.Load)
	m.metrics.ObserveStatuses(store.CountJobsByStatus)
	if err := m.service.Start(ctx); err != nil {
		return fmt.Errorf("start jobs: %w", err)
	}
	m.events = ws.NewHandler(m.service, m.Log.With("component", "ws"))
	m.events.Metrics = m.metrics
	handler := api.NewHandler(m.service, api.Config{
		Events:    m.events,
		JobEvents: http.HandlerFunc(m.events.ServeJobs),
		UI:        webui.Handler(),
		Metrics:   m.metrics.Handler(),
		Uploads:   m.metrics,
		MaxUpload: m.MaxUpload,
		Token:     m.Token,
		Private:   m.Private,
		Logger:    m.Log.With("component", "api"),
	})

	ln, err := net.Listen("tcp", m.Addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", m.Addr, err)
	}
	m.listener = ln
	m.server = &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(m.Log.Handler(), slog.LevelWarn),
	}
	go func() {
		if err := m.server.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			m.Log.Error("serve", "err", err)
		}
	}()
	m.Log.Info("ci-server listening", "addr", ln.Addr().String(), "data", m.DataDir, "image", m.Image,
		"concurrency", m.Concurrency, "auth", m.Token != "", "private", m.Private)
	if m.Pprof != "" {
		if err := m.servePprof(); err != nil {
			return err
		}
	}
	return nil
}

// servePprof starts the pprof listener on m.Pprof, apart from the API.
func (m *Main) servePprof() error {
	ln, err := net.Listen("tcp", m.Pprof)
	if err != nil {
		return fmt.Errorf("listen for pprof on %s: %w", m.Pprof, err)
	}
	m.pprofListener = ln
	m.pprofServer = &http.Server{
		Handler:           pprofHandler(),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(m.Log.Handler(), slog.LevelWarn),
	}
	go func() {
		if err := m.pprofServer.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			m.Log.Error("serve pprof", "err", err)
		}
	}()
	if !loopback(ln.Addr()) {
		m.Log.Warn("pprof listens beyond loopback: anyone who reaches it can profile the server and read its command line; use 127.0.0.1", "addr", ln.Addr().String())
	} else {
		m.Log.Info("pprof listening", "addr", ln.Addr().String())
	}
	return nil
}

// pprofHandler serves net/http/pprof under /debug/pprof/. (Importing the
// package also registers it on http.DefaultServeMux, which ci-server never
// serves.)
func pprofHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index) // the index and every named profile
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

// loopback reports whether addr is a loopback address.
func loopback(addr net.Addr) bool {
	tcp, ok := addr.(*net.TCPAddr)
	return ok && tcp.IP.IsLoopback()
}

// URL returns the base URL the server listens on, once Run has returned.
func (m *Main) URL() string {
	return "http://" + m.listener.Addr().String()
}

// PprofURL returns the base URL of the pprof listener once Run has
// returned, or "" without --pprof.
func (m *Main) PprofURL() string {
	if m.pprofListener == nil {
		return ""
	}
	return "http://" + m.pprofListener.Addr().String()
}

// Close stops accepting requests, ends event streams with 1001, stops the
// job service (queued jobs stay queued for the next start) and closes the
// store. It is safe to call after a failed Run.
func (m *Main) Close() error {
	var errs []error
	if m.server != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := m.server.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("http shutdown: %w", err))
		}
		cancel()
	}
	if m.pprofServer != nil {
		// Close, not Shutdown: a CPU profile in progress may take long.
		if err := m.pprofServer.Close(); err != nil {
			errs = append(errs, fmt.Errorf("pprof close: %w", err))
		}
	}
	if m.events != nil {
		m.events.Close()
	}
	if m.service != nil {
		errs = append(errs, m.service.Close())
	}
	if m.docker != nil {
		errs = append(errs, m.docker.Close())
	}
	if m.dbArchives != nil {
		errs = append(errs, m.dbArchives.Close())
	}
	if m.store != nil {
		errs = append(errs, m.store.Close())
	}
	return errors.Join(errs...)
}

// depsConfig returns the dependency phase's configuration: its usage file
// lives in the data dir.
func depsConfig(dataDir, network string, max int, size int64) executor.DepsConfig {
	return executor.DepsConfig{
		Network:    network,
		MaxEntries: max,
		MaxBytes:   size,
		StateFile:  filepath.Join(dataDir, "deps-usage.json"),
	}
}

// poolOwner names this server's warm containers after its data dir, so
// that a restarted server removes the unclaimed ones it left, and never
// those of another server on the same engine.
func poolOwner(dataDir string) string {
	abs, err := filepath.Abs(dataDir)
	if err != nil {
		abs = dataDir
	}
	sum := sha256.Sum256([]byte(abs))
	return "data-" + hex.EncodeToString(sum[:8])
}

// defaultReplica names a replica after its host and data dir: stable
// across restarts, distinct for two servers on one host.
func defaultReplica(dataDir string) string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "ci-server"
	}
	return host + "-" + strings.TrimPrefix(poolOwner(dataDir), "data-")[:6]
}

// redactDSN hides the password of a database URL, for messages.
func redactDSN(dsn string) string {
	if u, err := url.Parse(dsn); err == nil && u.Scheme != "" && u.User != nil {
		return u.Redacted()
	}
	return dsn
}

// secrets lists the values masked in job output.
func secrets(token string) []string {
	if token == "" {
		return nil
	}
	return []string{token}
}
