package executor

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"ci/jobs"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
)

var _ jobs.Sweeper = (*Docker)(nil)

// Sweep removes the containers (test, claimed warm, and install ones) of
// every job for which ended reports true, and returns how many it
// removed. A replica calls it when it starts: a job whose lease expired
// while its replica was away was ended by another replica, and nobody
// else would remove what it left running on this engine. ended must
// report false for jobs it does not know: the engine may run other
// servers' jobs.
func (d *Docker) Sweep(ctx context.Context, ended func(job string) bool) (int, error) {
	byJob := map[string][]string{} // job -> container IDs
	for _, f := range []filters.KeyValuePair{
		filters.Arg("label", LabelJob),
		filters.Arg("label", LabelInstall),
		filters.Arg("name", "^/"+jobContainerName("")),
	} {
		list, err := d.cli.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(f)})
		if err != nil {
			return 0, fmt.Errorf("sweep: list containers: %w", err)
		}
		for _, c := range list {
			job := c.Labels[LabelJob]
			if job == "" {
				job = c.Labels[LabelInstall]
			}
			for _, name := range c.Names {
				if j, ok := strings.CutPrefix(name, "/"+jobContainerName("")); ok && job == "" {
					job = j
				}
			}
			if job != "" && !slices.Contains(byJob[job], c.ID) {
				byJob[job] = append(byJob[job], c.ID)
			}
		}
	}
	removed := 0
	for job, ids := range byJob {
		if !ended(job) {
			continue
		}
		for _, id := range ids {
			d.log.Info("removing the container of a job another server ended", "job", job, "container", shortID(id))
			d.remove(ctx, id, d.log.With("job", job, "container", shortID(id)))
			removed++
		}
	}
	return removed, nil
}
