package executor

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/pkg/stdcopy"

	"ci/jobs"
)

var _ jobs.Reattacher = (*Docker)(nil)

// Reattach implements jobs.Reattacher: it picks up the container an
// earlier Run (of this or an earlier process) created for spec.JobID, found
// by its ci.job label. Of spec's other fields only Archive is used, if it
// can be read: its file list helps to rebuild the node IDs of the Report.
//
//   - No such container: an error wrapping jobs.ErrGone.
//   - Created but never started (the server died between the two): Reattach
//     removes it and returns an error wrapping jobs.ErrGone.
//   - Running or exited: Reattach writes the container's whole output to
//     out from its first byte, read from its json-file log (stdout and
//     stderr apart, each in order, the same bytes Run handed out: see
//     Run), follows it while it runs, and returns its exit code and OOM
//     kill as Run does (including Run's note about an OOM-killed
//     subprocess), and its Report as Run does.
//
// The log hands out a line only once its newline has arrived (or at the
// end of the output, or 16 KiB of it), so while Reattach follows a running
// container a partial line, such as pytest's progress dots, shows up only
// when its line is complete; nothing is lost. The engine's follow can also
// end at the exit before the very last, newline-less part of the output
// (seen with 20.10): after the exit Reattach reads the log once more and
// hands out what is missing.
//
// ctx works as for Run: when it is done (even before Reattach was called)
// Reattach stops the container gracefully and returns the cancellation,
// except that with the cause jobs.ErrDetach it returns at once and leaves
// the container as it is. Whatever other way it returns, the container and
// its volume are removed. On a container that has already exited it takes
// a few tens of milliseconds, most of it the removal.
func (d *Docker) Reattach(ctx context.Context, spec jobs.Spec, out jobs.Output) (jobs.Result, error) {
	if detached(ctx) {
		return jobs.Result{}, ctxError(ctx)
	}
	log := d.log.With("job", spec.JobID)

	// Look up and inspect on a context that ctx does not cancel: a
	// canceled Reattach still stops and removes the job's container.
	lookCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), removeTimeout)
	defer cancel()
	list, err := d.jobContainers(lookCtx, spec.JobID)
	if err != nil {
		return jobs.Result{}, fmt.Errorf("find the container of job %s: %w", spec.JobID, err)
	}
	if len(list) == 0 {
		return jobs.Result{}, fmt.Errorf("container of job %s no longer exists: %w", spec.JobID, jobs.ErrGone)
	}
	// There is one: Run creates one container per job. Should there be
	// more, follow one that was started and remove them all.
	id := list[0].ID
	for _, c := range list {
		if c.State != "created" {
			id = c.ID
			break
		}
	}
	keep := false
	defer func() {
		if keep {
			return
		}
		for _, c := range list {
			d.remove(ctx, c.ID, log.With("container", shortID(c.ID)))
		}
	}()
	log = log.With("container", shortID(id))

	info, err := d.cli.ContainerInspect(lookCtx, id)
	if err != nil {
		return jobs.Result{}, gone(spec.JobID, "inspect container", err)
	}
	if info.ContainerJSONBase == nil || info.State == nil {
		return jobs.Result{}, fmt.Errorf("inspect container of job %s: no state", spec.JobID)
	}
	state := info.State
	if state.Status == "created" || !d.warmStarted(lookCtx, info) {
		log.Info("reattach: the container was never started; removing it")
		return jobs.Result{}, fmt.Errorf("container of job %s was created but never started (removed it): %w",
			spec.JobID, jobs.ErrGone)
	}
	running := state.Running || state.Paused || state.Restarting
	log.Info("reattaching", "state", state.Status)
	start := time.Now()

	// Registered before the logs are read: a not-running wait returns at
	// once if the container has already exited.
	waitCtx, cancelWait := context.WithCancel(ctx)
	defer cancelWait()
	waited := d.wait(waitCtx, id, container.WaitConditionNotRunning)

	// The log stream is closed by follow (on detach or after a stop), not
	// by ctx, so that a stop still hands out the last output.
	logsCtx, cancelLogs := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelLogs()
	rc, err := d.cli.ContainerLogs(logsCtx, id, container.LogsOptions{
		ShowStdout: true,
		ShowStderr: true,
		Follow:     running,
	})
	if err != nil {
		return jobs.Result{}, ctxErr(ctx, gone(spec.JobID, "read container log", err))
	}
	defer rc.Close()

	res, err := d.reattach(ctx, id, rc, cancelLogs, running, waited, out, log)
	if err != nil {
		keep = detached(ctx)
		if keep {
			log.Info("detached: container left for Reattach", "cause", context.Cause(ctx))
		}
		return jobs.Result{}, ctxErr(ctx, gone(spec.JobID, "follow container", err))
	}
	res.Report = d.report(ctx, id, archiveFiles(spec.Archive), log)
	log.Info("reattached container exited", "exit_code", res.ExitCode, "oom_killed", res.OOMKilled,
		"was_running", running, "took", time.Since(start).Round(time.Millisecond))
	return res, nil
}

// reattach copies the container's log rc to out, waits for the exit and
// returns how the container ended. If rc follows (the container ran when
// it was opened), it reads the log once more after the exit, for what the
// follow missed.
func (d *Docker) reattach(ctx context.Context, id string, rc io.ReadCloser, cancelLogs func(), followed bool,
	waited <-chan waitResult, out jobs.Output, log *slog.Logger) (jobs.Result, error) {
	stdout := &streamWriter{out: out, stream: jobs.StreamStdout}
	stderr := &streamWriter{out: out, stream: jobs.StreamStderr}
	closeLogs := func() { cancelLogs(); rc.Close() }
	if err := d.copyOutput(ctx, id, rc, closeLogs, stdout, stderr, log); err != nil {
		return jobs.Result{}, err
	}
	if err := waitExit(ctx, waited); err != nil {
		return jobs.Result{}, err
	}
	if followed {
		// The engine's follow can end at the container's exit before it
		// has handed out the log's last messages (those of an output that
		// does not end with a newline, seen with 20.10). The log is
		// complete once the container has exited: read it again, skipping
		// what was handed out.
		if err := d.catchUp(ctx, id, stdout, stderr, log); err != nil {
			return jobs.Result{}, err
		}
	}
	return d.result(ctx, id, out, log)
}

// catchUp reads the whole log of the exited container id and hands out
// what is beyond what stdout and stderr have handed out already.
func (d *Docker) catchUp(ctx context.Context, id string, stdout, stderr *streamWriter, log *slog.Logger) error {
	before := stdout.n + stderr.n
	rc, err := d.cli.ContainerLogs(ctx, id, container.LogsOptions{ShowStdout: true, ShowStderr: true})
	if err != nil {
		return fmt.Errorf("read container log: %w", err)
	}
	defer rc.Close()
	_, err = stdcopy.StdCopy(&skipWriter{w: stdout, skip: stdout.n}, &skipWriter{w: stderr, skip: stderr.n}, rc)
	if err := outputError(err); err != nil {
		return err
	}
	if n := stdout.n + stderr.n - before; n > 0 {
		log.Info("log read again after the exit: the follow had missed the end", "bytes", n)
	}
	return nil
}

// gone returns err, wrapping jobs.ErrGone too if it says that the
// container of job does not exist (anymore).
func gone(job, what string, err error) error {
	if cerrdefs.IsNotFound(err) {
		return fmt.Errorf("container of job %s was removed by someone else (%s: %w): %w", job, what, err, jobs.ErrGone)
	}
	return err
}

// jobContainers lists the containers of job: the cold one, labelled with
// it, or the warm one it claimed, named after it.
func (d *Docker) jobContainers(ctx context.Context, job string) ([]container.Summary, error) {
	byLabel, err := d.cli.ContainerList(ctx, container.ListOptions{All: true,
		Filters: filters.NewArgs(filters.Arg("label", LabelJob+"="+job))})
	if err != nil {
		return nil, err
	}
	byName, err := d.cli.ContainerList(ctx, container.ListOptions{All: true,
		Filters: filters.NewArgs(filters.Arg("name", "^/"+jobContainerName(job)+"$"))})
	if err != nil {
		return nil, err
	}
	return append(byLabel, byName...), nil
}

// warmStarted reports whether the container of info, if it is a warm
// one, got its job's arguments (its launcher wrote StartedFile): a server
// that died between claiming it and writing them leaves one waiting for
// ever, whose tests never started. A cold container counts as started.
func (d *Docker) warmStarted(ctx context.Context, info container.InspectResponse) bool {
	if info.Config == nil || info.Config.Labels[LabelPool] == "" {
		return true
	}
	_, err := d.cli.ContainerStatPath(ctx, info.ID, StartedFile)
	return err == nil
}
