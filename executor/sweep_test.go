package executor

import (
	"context"
	"strings"
	"testing"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
)

// TestDockerSweep creates containers the way jobs leave them (a cold test
// container labelled with its job, an install container, a claimed warm
// container known by its name only) for ended jobs, and one of a job that
// is not ended: Sweep removes the first three and keeps the last.
func TestDockerSweep(t *testing.T) {
	d := newTestDocker(t, testImage(), true)
	ctx := context.Background()
	suffix := strings.ToLower(t.Name())
	create := func(name string, labels map[string]string) string {
		t.Helper()
		c, err := d.cli.ContainerCreate(ctx, &container.Config{Image: testImage(), Cmd: []string{"true"}, Labels: labels},
			nil, nil, nil, name)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true}) })
		return c.ID
	}
	ended := map[string]bool{"ended1-" + suffix: true, "ended2-" + suffix: true, "ended3-" + suffix: true}
	gone := []string{
		create("", map[string]string{LabelJob: "ended1-" + suffix}),
		create("", map[string]string{LabelInstall: "ended2-" + suffix}),
		create(jobContainerName("ended3-"+suffix), nil),
	}
	kept := create("", map[string]string{LabelJob: "running-" + suffix})

	n, err := d.Sweep(ctx, func(job string) bool { return ended[job] })
	if err != nil {
		t.Fatal(err)
	}
	if n < len(gone) {
		t.Fatalf("Sweep removed %d containers, want at least %d", n, len(gone))
	}
	list, err := d.cli.ContainerList(ctx, container.ListOptions{All: true,
		Filters: filters.NewArgs(filters.Arg("id", kept))})
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 {
		t.Fatalf("the running job's container was removed")
	}
	for _, id := range gone {
		if _, err := d.cli.ContainerInspect(ctx, id); err == nil {
			t.Fatalf("container %s of an ended job is still there", shortID(id))
		}
	}
}
