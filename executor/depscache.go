package executor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/volume"
)

// DepsEntry is one entry of the dependency cache: the venv volume of a key
// and, once its install has succeeded, its ready volume.
type DepsEntry struct {
	Key string `json:"key"`
	// Volume is the venv volume's name; Ready tells whether the entry is
	// complete (an incomplete one is being installed, or was left by an
	// interrupted install).
	Volume string `json:"volume"`
	Ready  bool   `json:"ready"`
	// Size is the venv's size in bytes, when known.
	Size int64 `json:"size"`
	// Image is the image ID the venv was made for; Job the job whose
	// install made it.
	Image string `json:"image"`
	Job   string `json:"job"`
	// Installed is when the install completed (zero if not ready);
	// LastUsed when a job last used the entry, as far as this server's
	// state file knows (Installed otherwise).
	Installed time.Time `json:"installed"`
	LastUsed  time.Time `json:"last_used"`
	// InUse counts the containers, running or not, that mount the venv.
	InUse int `json:"in_use"`
}

// DepsEntries lists the dependency cache, least recently used first.
func (d *Docker) DepsEntries(ctx context.Context) ([]DepsEntry, error) {
	vols, err := d.cli.VolumeList(ctx, volume.ListOptions{Filters: filters.NewArgs(filters.Arg("label", LabelDeps))})
	if err != nil {
		return nil, fmt.Errorf("list dependency volumes: %w", err)
	}
	byKey := map[string]*DepsEntry{}
	entry := func(key string) *DepsEntry {
		e := byKey[key]
		if e == nil {
			e = &DepsEntry{Key: key}
			byKey[key] = e
		}
		return e
	}
	for _, v := range vols.Volumes {
		key := v.Labels[LabelDeps]
		if len(key) != 64 {
			continue
		}
		e := entry(key)
		e.Image, e.Job = v.Labels[LabelDepsImage], v.Labels[LabelDepsJob]
		switch v.Labels[LabelDepsRole] {
		case RoleVenv:
			e.Volume = v.Name
		case RoleReady:
			e.Ready = true
			e.Size, _ = strconv.ParseInt(v.Labels[LabelDepsSize], 10, 64)
			e.Installed, _ = time.Parse(time.RFC3339, v.CreatedAt)
		}
	}
	users, err := d.volumeUsers(ctx)
	if err != nil {
		return nil, err
	}
	var list []DepsEntry
	for _, e := range byKey {
		if e.Volume == "" {
			// A ready volume whose venv is gone (removed by hand): not
			// usable, listed so that prune removes it.
			e.Ready = false
			e.Volume = depsVolume(e.Key)
		}
		e.InUse = users[e.Volume]
		e.LastUsed = e.Installed
		if t, ok := d.deps.used.get(e.Key); ok && t.After(e.LastUsed) {
			e.LastUsed = t
		}
		list = append(list, *e)
	}
	sort.Slice(list, func(i, j int) bool {
		if !list[i].LastUsed.Equal(list[j].LastUsed) {
			return list[i].LastUsed.Before(list[j].LastUsed)
		}
		return list[i].Key < list[j].Key
	})
	return list, nil
}

// volumeUsers counts, by volume name, the ci containers (test and install,
// running or not) that mount it.
func (d *Docker) volumeUsers(ctx context.Context) (map[string]int, error) {
	users := map[string]int{}
	for _, label := range []string{LabelJob, LabelInstall} {
		list, err := d.cli.ContainerList(ctx, container.ListOptions{All: true,
			Filters: filters.NewArgs(filters.Arg("label", label))})
		if err != nil {
			return nil, fmt.Errorf("list containers: %w", err)
		}
		for _, c := range list {
			for _, m := range c.Mounts {
				if m.Name != "" {
					users[m.Name]++
				}
			}
		}
	}
	return users, nil
}

// PruneOptions selects the entries PruneDeps removes.
type PruneOptions struct {
	// UnusedFor, when positive, removes only entries not used for that
	// long; otherwise every entry goes.
	UnusedFor time.Duration
}

// PruneDeps removes the dependency cache's entries that opts selects and
// that no container uses, and returns them. Entries in use are skipped:
// the engine refuses to remove a volume a container mounts.
func (d *Docker) PruneDeps(ctx context.Context, opts PruneOptions) ([]DepsEntry, error) {
	list, err := d.DepsEntries(ctx)
	if err != nil {
		return nil, err
	}
	var removed []DepsEntry
	for _, e := range list {
		if opts.UnusedFor > 0 && time.Since(e.LastUsed) < opts.UnusedFor {
			continue
		}
		ok, err := d.removeEntry(ctx, e.Key)
		if err != nil {
			return removed, err
		}
		if ok {
			removed = append(removed, e)
		}
	}
	return removed, nil
}

// removeEntry removes key's venv volume, then its ready volume: never a
// ready volume without its venv. It reports false, and removes nothing,
// when the venv is in use or being installed.
func (d *Docker) removeEntry(ctx context.Context, key string) (bool, error) {
	d.deps.volMu.Lock()
	defer d.deps.volMu.Unlock()
	if d.deps.busy(key) {
		return false, nil
	}
	err := d.cli.VolumeRemove(ctx, depsVolume(key), false)
	switch {
	case cerrdefs.IsConflict(err):
		return false, nil // a container mounts it
	case err != nil && !cerrdefs.IsNotFound(err):
		return false, fmt.Errorf("remove dependency volume %s: %w", depsVolume(key), err)
	}
	if err := d.cli.VolumeRemove(ctx, readyVolume(key), false); err != nil && !cerrdefs.IsNotFound(err) {
		return true, fmt.Errorf("remove dependency volume %s: %w", readyVolume(key), err)
	}
	d.deps.used.forget(key)
	return true, nil
}

// evict removes the least recently used entries not in use until the
// cache is within DepsConfig's MaxEntries and MaxBytes, keeping the entry
// keep (just installed). Incomplete entries that no install is making go
// first: they are leftovers. Failures are logged: eviction is
// housekeeping, not part of the job.
func (d *Docker) evict(ctx context.Context, keep string, log *slog.Logger) {
	maxN, maxBytes := d.deps.cfg.MaxEntries, d.deps.cfg.MaxBytes
	if maxN <= 0 && maxBytes <= 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), removeTimeout)
	defer cancel()
	list, err := d.DepsEntries(ctx)
	if err != nil {
		log.Warn("dependency cache eviction", "err", err)
		return
	}
	var n int
	var total int64
	for _, e := range list {
		if e.Ready {
			n++
			total += e.Size
		}
	}
	// Leftovers first, then by last use (list is in that order already).
	sort.SliceStable(list, func(i, j int) bool { return !list[i].Ready && list[j].Ready })
	for _, e := range list {
		over := maxN > 0 && n > maxN || maxBytes > 0 && total > maxBytes
		if e.Ready && !over || e.Key == keep || e.InUse > 0 {
			continue
		}
		ok, err := d.removeEntry(ctx, e.Key)
		if err != nil {
			log.Warn("dependency cache eviction", "err", err)
			continue
		}
		if ok && e.Ready {
			n--
			total -= e.Size
			log.Info("evicted dependencies", "deps", shortKey(e.Key), "bytes", e.Size, "last_used", e.LastUsed)
		}
	}
	if maxN > 0 && n > maxN || maxBytes > 0 && total > maxBytes {
		log.Warn("dependency cache over its limits: the other entries are in use", "entries", n, "bytes", total)
	}
}

// usage remembers when each cache entry was last used, in a JSON file
// when it has one (written whole, through a rename, on every change).
type usage struct {
	file string

	mu   sync.Mutex
	last map[string]time.Time
}

// newUsage loads usage from file, if any; a missing or unreadable file
// starts empty.
func newUsage(file string) *usage {
	u := &usage{file: file, last: map[string]time.Time{}}
	if file == "" {
		return u
	}
	b, err := os.ReadFile(file)
	if err == nil {
		err = json.Unmarshal(b, &u.last)
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		slog.Warn("dependency cache usage file unreadable; starting afresh", "file", file, "err", err)
		u.last = map[string]time.Time{}
	}
	return u
}

func (u *usage) get(key string) (time.Time, bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	t, ok := u.last[key]
	return t, ok
}

func (u *usage) touch(key string, t time.Time) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.last[key] = t.UTC()
	u.saveLocked()
}

func (u *usage) forget(key string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if _, ok := u.last[key]; ok {
		delete(u.last, key)
		u.saveLocked()
	}
}

// saveLocked writes the file; a failure only costs LRU precision, so it is
// logged.
func (u *usage) saveLocked() {
	if u.file == "" {
		return
	}
	b, err := json.Marshal(u.last)
	if err == nil {
		tmp := u.file + ".tmp"
		if err = os.WriteFile(tmp, b, 0o600); err == nil {
			err = os.Rename(tmp, u.file)
		}
	}
	if err != nil {
		slog.Warn("save dependency cache usage", "file", filepath.Base(u.file), "err", err)
	}
}
