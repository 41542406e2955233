package executor

import (
	"reflect"
	"testing"

	"github.com/docker/docker/api/types/container"

	"ci/jobs"
)

func TestContainerConfig(t *testing.T) {
	env := []string{
		"PYTHONPATH=/workspace/src:/workspace",
		"PYTHONDONTWRITEBYTECODE=1",
		"PYTHONUNBUFFERED=1",
		"PY_COLORS=1",
	}
	tests := []struct {
		name    string
		spec    jobs.Spec
		image   string
		wantCmd []string
	}{
		{
			name:    "no args",
			spec:    jobs.Spec{JobID: "job1", Archive: "/tmp/x.zip"},
			image:   "ci-python:latest",
			wantCmd: []string{"python", "-m", "pytest", "-p", "no:cacheprovider"},
		},
		{
			name:    "args appended, not interpreted by a shell",
			spec:    jobs.Spec{JobID: "job2", Args: []string{"-k", "a and not b", "$(reboot)"}},
			image:   "python:3.12-slim",
			wantCmd: []string{"python", "-m", "pytest", "-p", "no:cacheprovider", "-k", "a and not b", "$(reboot)"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, host := containerConfig(tt.spec, tt.image)
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
			if host.AutoRemove {
				t.Error("AutoRemove set: Run removes the container itself, after reading its exit state")
			}
		})
	}
}

// TestContainerConfigArgsNotAliased checks that the command does not share
// its backing array with spec.Args.
func TestContainerConfigArgsNotAliased(t *testing.T) {
	args := make([]string, 1, 10)
	args[0] = "-x"
	cfg, _ := containerConfig(jobs.Spec{Args: args}, "img")
	cfg.Cmd[len(cfg.Cmd)-1] = "changed"
	if args[0] != "-x" {
		t.Errorf("spec.Args changed to %q", args)
	}
}
