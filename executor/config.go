package executor

import (
	"github.com/docker/docker/api/types/container"

	"ci/jobs"
)

// Container layout and labels.
const (
	// Workspace is where the project is unpacked and pytest runs.
	Workspace = "/workspace"
	// LabelJob is the container label holding the job ID.
	LabelJob = "ci.job"
)

// containerConfig returns the configuration of the container that runs
// spec's tests with the given image. It is pure: everything the container
// is made of is decided here, so it can be table-tested.
func containerConfig(spec jobs.Spec, image string) (*container.Config, *container.HostConfig) {
	cmd := append([]string{"python", "-m", "pytest", "-p", "no:cacheprovider"}, spec.Args...)
	cfg := &container.Config{
		Image:      image,
		Cmd:        cmd,
		WorkingDir: Workspace,
		Env: []string{
			// src/ layouts import without installing the project.
			"PYTHONPATH=" + Workspace + "/src:" + Workspace,
			// No .pyc files written into the project.
			"PYTHONDONTWRITEBYTECODE=1",
			// Output reaches the attach stream as it is written, not when
			// a block buffer fills.
			"PYTHONUNBUFFERED=1",
			// Colour on: the web page renders it, and the CLI strips it
			// when it prints to a pipe. A user's --color=no still wins.
			"PY_COLORS=1",
		},
		Labels: map[string]string{LabelJob: spec.JobID},
		// stdout and stderr are kept apart: no TTY, no stdin.
		Tty:          false,
		OpenStdin:    false,
		AttachStdout: true,
		AttachStderr: true,
		// An anonymous volume, so the project can be copied in even when
		// the root fs is read-only. Removed with the container.
		Volumes: map[string]struct{}{Workspace: {}},
		// Hardening seam (later issue): User (non-root).
	}
	host := &container.HostConfig{
		NetworkMode: "none",
		// Hardening seam (later issue): ReadonlyRootfs with a tmpfs /tmp,
		// CapDrop ALL, SecurityOpt no-new-privileges, and Resources
		// (Memory, NanoCPUs, PidsLimit).
	}
	return cfg, host
}
