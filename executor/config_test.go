package executor

import (
	"math"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/mount"

	"ci/jobs"
)

func TestContainerConfig(t *testing.T) {
	env := []string{
		"HOME=/tmp",
		"PYTHONPATH=/workspace/src:/workspace",
		"PYTHONDONTWRITEBYTECODE=1",
		"PYTHONUNBUFFERED=1",
		"PY_COLORS=1",
	}
	tests := []struct {
		name    string
		spec    jobs.Spec
		image   string
		lim     Limits
		wantCmd []string
		// The hardening values the container must get from lim.
		wantTmpfs    string
		wantNanoCPUs int64
		wantGrace    int
	}{
		{
			name:  "no args, default limits",
			spec:  jobs.Spec{JobID: "job1", Archive: "/tmp/x.zip"},
			image: "ci-python:latest",
			lim:   mustLimits(t, DockerConfig{}),
			wantCmd: []string{"python", "-c", pytestLauncher, "--junitxml=/workspace/.ci-results/report.xml",
				"-o", "junit_family=xunit1", "-p", "no:cacheprovider"},
			wantTmpfs:    "rw,exec,nosuid,nodev,size=536870912,mode=1777",
			wantNanoCPUs: 1e9,
			wantGrace:    5,
		},
		{
			name:  "args appended, not interpreted by a shell; custom limits",
			spec:  jobs.Spec{JobID: "job2", Args: []string{"-k", "a and not b", "$(reboot)"}},
			image: "python:3.12-slim",
			lim: mustLimits(t, DockerConfig{User: "1000:1000", Memory: 64 << 20, CPUs: 0.5,
				Pids: 32, TmpfsSize: 16 << 20, StopGrace: 1500 * time.Millisecond}),
			wantCmd: []string{"python", "-c", pytestLauncher, "--junitxml=/workspace/.ci-results/report.xml",
				"-o", "junit_family=xunit1", "-p", "no:cacheprovider", "-k", "a and not b", "$(reboot)"},
			wantTmpfs:    "rw,exec,nosuid,nodev,size=16777216,mode=1777",
			wantNanoCPUs: 5e8,
			wantGrace:    2,
		},
		{
			name:  "a user's own report options come last and win",
			spec:  jobs.Spec{JobID: "job3", Args: []string{"--junitxml=mine.xml", "-o", "junit_family=xunit2"}},
			image: "ci-python:latest",
			lim:   mustLimits(t, DockerConfig{}),
			wantCmd: []string{"python", "-c", pytestLauncher, "--junitxml=/workspace/.ci-results/report.xml",
				"-o", "junit_family=xunit1", "-p", "no:cacheprovider",
				"--junitxml=mine.xml", "-o", "junit_family=xunit2"},
			wantTmpfs:    "rw,exec,nosuid,nodev,size=536870912,mode=1777",
			wantNanoCPUs: 1e9,
			wantGrace:    5,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, host := containerConfig(tt.spec, tt.image, tt.lim, "")
			if cfg.Image != tt.image {
				t.Errorf("Image=%q, want %q", cfg.Image, tt.image)
			}
			if got := []string(cfg.Cmd); !reflect.DeepEqual(got, tt.wantCmd) {
				t.Errorf("Cmd=%q, want %q", got, tt.wantCmd)
			}
			if cfg.WorkingDir != "/workspace" {
				t.Errorf("WorkingDir=%q, want /workspace", cfg.WorkingDir)
			}
			if !reflect.DeepEqual(cfg.Env, env) {
				t.Errorf("Env=%q, want %q", cfg.Env, env)
			}
			if want := map[string]string{"ci.job": tt.spec.JobID}; !reflect.DeepEqual(cfg.Labels, want) {
				t.Errorf("Labels=%v, want %v", cfg.Labels, want)
			}
			if want := map[string]struct{}{"/workspace": {}}; !reflect.DeepEqual(cfg.Volumes, want) {
				t.Errorf("Volumes=%v, want %v", cfg.Volumes, want)
			}
			if cfg.Tty || cfg.OpenStdin || cfg.AttachStdin {
				t.Errorf("Tty=%v OpenStdin=%v AttachStdin=%v, want all false", cfg.Tty, cfg.OpenStdin, cfg.AttachStdin)
			}
			if !cfg.AttachStdout || !cfg.AttachStderr {
				t.Errorf("AttachStdout=%v AttachStderr=%v, want true", cfg.AttachStdout, cfg.AttachStderr)
			}
			if len(cfg.Entrypoint) != 0 {
				t.Errorf("Entrypoint=%q, want unset", cfg.Entrypoint)
			}
			if host.NetworkMode != container.NetworkMode("none") {
				t.Errorf("NetworkMode=%q, want none", host.NetworkMode)
			}
			if len(host.Binds) != 0 || len(host.Mounts) != 0 {
				t.Errorf("Binds=%v Mounts=%v, want none: the project goes in through the API", host.Binds, host.Mounts)
			}
			if host.LogConfig.Type != "json-file" {
				t.Errorf("LogConfig.Type=%q, want json-file (Reattach reads the log back)", host.LogConfig.Type)
			}
			if host.AutoRemove {
				t.Error("AutoRemove set: Run removes the container itself, after reading its exit state")
			}

			// The sandbox.
			if cfg.User != tt.lim.User {
				t.Errorf("User=%q, want %q", cfg.User, tt.lim.User)
			}
			if !host.ReadonlyRootfs {
				t.Error("ReadonlyRootfs=false, want true")
			}
			if want := map[string]string{"/tmp": tt.wantTmpfs}; !reflect.DeepEqual(host.Tmpfs, want) {
				t.Errorf("Tmpfs=%q, want %q", host.Tmpfs, want)
			}
			if got := []string(host.CapDrop); !reflect.DeepEqual(got, []string{"ALL"}) || len(host.CapAdd) != 0 {
				t.Errorf("CapDrop=%q CapAdd=%q, want [ALL] and none", got, host.CapAdd)
			}
			if want := []string{"no-new-privileges"}; !reflect.DeepEqual(host.SecurityOpt, want) {
				t.Errorf("SecurityOpt=%q, want %q", host.SecurityOpt, want)
			}
			if host.Privileged {
				t.Error("Privileged=true")
			}
			if host.Init == nil || !*host.Init {
				t.Errorf("Init=%v, want true (tini passes SIGTERM on to pytest)", host.Init)
			}
			if host.Memory != tt.lim.Memory || host.MemorySwap != tt.lim.Memory {
				t.Errorf("Memory=%d MemorySwap=%d, want both %d", host.Memory, host.MemorySwap, tt.lim.Memory)
			}
			if host.NanoCPUs != tt.wantNanoCPUs {
				t.Errorf("NanoCPUs=%d, want %d", host.NanoCPUs, tt.wantNanoCPUs)
			}
			if host.PidsLimit == nil || *host.PidsLimit != tt.lim.Pids {
				t.Errorf("PidsLimit=%v, want %d", host.PidsLimit, tt.lim.Pids)
			}
			if cfg.StopSignal != "SIGTERM" || cfg.StopTimeout == nil || *cfg.StopTimeout != tt.wantGrace {
				t.Errorf("StopSignal=%q StopTimeout=%v, want SIGTERM and %d", cfg.StopSignal, cfg.StopTimeout, tt.wantGrace)
			}
		})
	}
}

func mustLimits(tb testing.TB, cfg DockerConfig) Limits {
	tb.Helper()
	l, err := cfg.limits()
	if err != nil {
		tb.Fatalf("limits(%+v): %v", cfg, err)
	}
	return l
}

func TestDockerConfigLimits(t *testing.T) {
	defaults := Limits{User: "65534:65534", Memory: 2 << 30, CPUs: 1, Pids: 512, TmpfsSize: 512 << 20, StopGrace: 5 * time.Second}
	tests := []struct {
		name    string
		cfg     DockerConfig
		want    Limits
		wantErr string
	}{
		{name: "zero means defaults", cfg: DockerConfig{}, want: defaults},
		{
			name: "set",
			cfg:  DockerConfig{User: "1000:100", Memory: 64 << 20, CPUs: 2.5, Pids: 64, TmpfsSize: 1 << 20, StopGrace: 2 * time.Second},
			want: Limits{User: "1000:100", Memory: 64 << 20, CPUs: 2.5, Pids: 64, TmpfsSize: 1 << 20, StopGrace: 2 * time.Second},
		},
		{
			name: "grace rounded up to seconds",
			cfg:  DockerConfig{StopGrace: 100 * time.Millisecond},
			want: func() Limits { l := defaults; l.StopGrace = time.Second; return l }(),
		},
		{name: "root user", cfg: DockerConfig{User: "0:0"}, wantErr: "root"},
		{name: "root group", cfg: DockerConfig{User: "1000:0"}, wantErr: "root"},
		{name: "uid without gid", cfg: DockerConfig{User: "1000"}, wantErr: "uid:gid"},
		{name: "user name", cfg: DockerConfig{User: "nobody:nogroup"}, wantErr: "uid:gid"},
		{name: "negative uid", cfg: DockerConfig{User: "-1:1"}, wantErr: "uid:gid"},
		{name: "memory too small", cfg: DockerConfig{Memory: 1 << 20}, wantErr: "memory"},
		{name: "negative memory", cfg: DockerConfig{Memory: -1}, wantErr: "memory"},
		{name: "negative CPUs", cfg: DockerConfig{CPUs: -1}, wantErr: "CPU"},
		{name: "NaN CPUs", cfg: DockerConfig{CPUs: math.NaN()}, wantErr: "CPU"},
		{name: "too few pids", cfg: DockerConfig{Pids: 2}, wantErr: "pids"},
		{name: "negative tmpfs", cfg: DockerConfig{TmpfsSize: -1}, wantErr: "tmpfs"},
		{name: "negative grace", cfg: DockerConfig{StopGrace: -time.Second}, wantErr: "grace"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.cfg.limits()
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("err=%v, want one containing %q", err, tt.wantErr)
				}
				if _, nerr := NewDocker(tt.cfg); nerr == nil {
					t.Error("NewDocker accepted the config")
				}
				return
			}
			if err != nil {
				t.Fatalf("err=%v", err)
			}
			if got != tt.want {
				t.Errorf("limits=%+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestFormatBytes(t *testing.T) {
	for n, want := range map[int64]string{
		2 << 30: "2 GiB", 64 << 20: "64 MiB", 1536 << 20: "1536 MiB", 4 << 10: "4 KiB", 1000: "1000 bytes",
	} {
		if got := formatBytes(n); got != want {
			t.Errorf("formatBytes(%d)=%q, want %q", n, got, want)
		}
	}
}

// TestContainerConfigArgsNotAliased checks that the command does not share
// its backing array with spec.Args.
func TestContainerConfigArgsNotAliased(t *testing.T) {
	args := make([]string, 1, 10)
	args[0] = "-x"
	cfg, _ := containerConfig(jobs.Spec{Args: args}, "img", mustLimits(t, DockerConfig{}), "")
	cfg.Cmd[len(cfg.Cmd)-1] = "changed"
	if args[0] != "-x" {
		t.Errorf("spec.Args changed to %q", args)
	}
}

// TestContainerConfigWithDeps checks the test container of a project with
// dependencies: the venv's volume read-only, its python running pytest,
// its bin first on PATH, and still no network.
func TestContainerConfigWithDeps(t *testing.T) {
	lim := mustLimits(t, DockerConfig{})
	cfg, host := containerConfig(jobs.Spec{JobID: "j", Args: []string{"-x"}}, "sha256:abc", lim, "ci-deps-k")
	if cfg.Image != "sha256:abc" {
		t.Errorf("Image=%q, want the image ID", cfg.Image)
	}
	if want := pytestCommand("/ci-deps/venv/bin/python", []string{"-x"}); !reflect.DeepEqual([]string(cfg.Cmd), want) {
		t.Errorf("Cmd=%q, want %q", cfg.Cmd, want)
	}
	want := []mount.Mount{{Type: mount.TypeVolume, Source: "ci-deps-k", Target: "/ci-deps", ReadOnly: true}}
	if !reflect.DeepEqual(host.Mounts, want) {
		t.Errorf("Mounts=%+v, want %+v", host.Mounts, want)
	}
	env := strings.Join(cfg.Env, " ")
	if !strings.Contains(env, "PATH=/ci-deps/venv/bin:/usr/local/sbin:") || !strings.Contains(env, "VIRTUAL_ENV=/ci-deps/venv") {
		t.Errorf("Env=%q, want the venv first on PATH and VIRTUAL_ENV", cfg.Env)
	}
	if host.NetworkMode != "none" || !host.ReadonlyRootfs {
		t.Errorf("NetworkMode=%q ReadonlyRootfs=%v, want none and true", host.NetworkMode, host.ReadonlyRootfs)
	}
}

// TestInstallConfig checks the install container: the tests' sandbox,
// with the install network, the deps volume writable, labels that are not
// a test container's, and the install script.
func TestInstallConfig(t *testing.T) {
	lim := mustLimits(t, DockerConfig{Memory: 256 << 20})
	cfg, host := installConfig("job1", "key1", "sha256:abc", "ci-deps-key1", "bridge", lim)
	if cfg.Image != "sha256:abc" || cfg.User != lim.User || cfg.WorkingDir != "/workspace" {
		t.Errorf("Image=%q User=%q WorkingDir=%q", cfg.Image, cfg.User, cfg.WorkingDir)
	}
	if want := map[string]string{"ci.install": "job1", "ci.deps": "key1"}; !reflect.DeepEqual(cfg.Labels, want) {
		t.Errorf("Labels=%v, want %v (no ci.job: Reattach must not take it for the tests)", cfg.Labels, want)
	}
	if len(cfg.Cmd) != 3 || cfg.Cmd[0] != "sh" || !strings.Contains(cfg.Cmd[2], "pip install -r requirements.txt") ||
		!strings.Contains(cfg.Cmd[2], "venv --without-pip --system-site-packages /ci-deps/venv") {
		t.Errorf("Cmd=%q, want the install script", cfg.Cmd)
	}
	want := []mount.Mount{{Type: mount.TypeVolume, Source: "ci-deps-key1", Target: "/ci-deps"}}
	if !reflect.DeepEqual(host.Mounts, want) {
		t.Errorf("Mounts=%+v, want %+v (writable)", host.Mounts, want)
	}
	if host.NetworkMode != "bridge" {
		t.Errorf("NetworkMode=%q, want bridge", host.NetworkMode)
	}
	if !host.ReadonlyRootfs || host.Resources.Memory != 256<<20 || len(host.CapDrop) != 1 || host.CapDrop[0] != "ALL" ||
		!reflect.DeepEqual(host.SecurityOpt, []string{"no-new-privileges"}) {
		t.Errorf("install container not sandboxed like the tests: %+v", host)
	}
	if strings.Contains(strings.Join(cfg.Env, " "), "PYTHONDONTWRITEBYTECODE") {
		t.Error("install env has PYTHONDONTWRITEBYTECODE: the venv is read-only later, so its .pyc files are made now")
	}
}
