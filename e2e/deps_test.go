package e2e

import (
	"context"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"ci/client"
)

// depsArgs run the install containers offline (every requirement is a
// local file) and turn eviction off: a test never removes entries of
// another test, or of anyone else using the engine.
var depsArgs = []string{"--install-network", "none", "--deps-cache-max", "0", "--deps-cache-size", "0"}

// cachedRE matches the one line of a cached install phase.
var cachedRE = regexp.MustCompile(`^dependencies: cached \(key ([0-9a-f]{12})…\)\n$`)

// TestDepsCache runs a project with a local wheel in requirements.txt
// three times: the first run installs it in one install container; the
// second takes the venv from the cache, with no install container and one
// line of install output; after requirements.txt changes, the third
// installs again. `ci-server deps list` shows the entries; `deps prune
// --unused-for` keeps recent ones.
func TestDepsCache(t *testing.T) {
	needEngine(t)
	jobs := trackDeps(t)
	data := t.TempDir()
	s := startServer(t, data, depsArgs...)
	w := watchInstalls(t)
	token := newToken(t)
	dir := wheelProject(t, token)

	// First run: pip installs the wheel, under the install heading.
	r := s.ci(t, dir, "submit", "test")
	first := jobID(t, r)
	jobs.add(first)
	if r.code != 0 {
		t.Fatalf("first run: exit %d, want 0\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	install, test := strings.Index(r.stderr, "==> install\n"), strings.Index(r.stderr, "==> test\n")
	if install < 0 || test < install || strings.Count(r.stderr, "==> ") != 2 {
		t.Errorf("first run: stderr lacks \"==> install\" then \"==> test\", once each:\n%s", r.stderr)
	}
	if !strings.Contains(r.stdout, "Successfully installed ci-e2e-"+token+"-1.0") || !strings.Contains(r.stdout, "1 passed") {
		t.Errorf("first run: stdout lacks pip's \"Successfully installed\" or pytest's \"1 passed\":\n%s", r.stdout)
	}
	if n := w.installs(first); n != 1 {
		t.Errorf("first run: %d install containers created, want 1", n)
	}
	ps := phases(jobEvents(t, s, first))
	if got := phaseNames(ps); !slices.Equal(got, []string{"install", "test"}) {
		t.Fatalf("first run: phase events %q, want install, test", got)
	}
	if !strings.Contains(ps[1].text, "Successfully installed") || strings.Contains(ps[1].text, "passed") {
		t.Errorf("first run: install phase output is not pip's:\n%s", ps[1].text)
	}
	if !strings.Contains(ps[2].text, "1 passed") || strings.Contains(ps[2].text, "Successfully installed") {
		t.Errorf("first run: test phase output is not pytest's:\n%s", ps[2].text)
	}
	if j, err := client.New(s.url).Job(context.Background(), first); err != nil || j.Phase != "test" || j.Status != "passed" {
		t.Errorf("first run: job %+v, %v; want passed in phase test", j, err)
	}
	if n, m := labelled(t, labelInstall, first), labelled(t, labelJob, first); n+m != 0 {
		t.Errorf("first run: %d install and %d test containers left behind", n, m)
	}
	entries := depsList(t, data, first)
	if len(entries) != 1 {
		t.Fatalf("deps list: %d entries made by job %s, want 1: %+v", len(entries), first, entries)
	}
	e := entries[0]
	if !e.Ready || e.Size <= 0 || len(e.Key) != 64 || e.Volume != "ci-deps-"+e.Key[:32] || e.InUse != 0 ||
		!strings.HasPrefix(e.Image, "sha256:") || e.Installed.IsZero() || e.LastUsed.Before(e.Installed) {
		t.Errorf("deps list: entry %+v, want ready, sized, unused, installed, volume ci-deps-<key[:32]>", e)
	}
	key := e.Key

	// Second run: the cache has it. No install container; the install
	// phase is one line naming the key.
	r = s.ci(t, dir, "submit", "test")
	second := jobID(t, r)
	jobs.add(second)
	if r.code != 0 {
		t.Fatalf("cached run: exit %d, want 0\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	out := r.stdout + r.stderr
	if n := strings.Count(out, "dependencies: cached (key "); n != 1 || !strings.Contains(out, "dependencies: cached (key "+key[:12]+"…)") {
		t.Errorf("cached run: \"dependencies: cached (key %s…)\" printed %d times, want once:\n%s", key[:12], n, out)
	}
	if strings.Contains(out, "Successfully installed") || !strings.Contains(r.stderr, "==> install\n") || !strings.Contains(r.stderr, "==> test\n") {
		t.Errorf("cached run: want both headings and no pip output:\n%s", out)
	}
	if n := w.installs(second); n != 0 {
		t.Errorf("cached run: %d install containers created, want 0", n)
	}
	ps = phases(jobEvents(t, s, second))
	if got := phaseNames(ps); !slices.Equal(got, []string{"install", "test"}) {
		t.Fatalf("cached run: phase events %q, want install, test", got)
	}
	if m := cachedRE.FindStringSubmatch(ps[1].text); m == nil || m[1] != key[:12] {
		t.Errorf("cached run: install phase %q, want exactly one line \"dependencies: cached (key %s…)\"", ps[1].text, key[:12])
	}
	if mine := depsList(t, data, second); len(mine) != 0 {
		t.Errorf("deps list: the cached run made entries: %+v", mine)
	}
	if after := depsList(t, data, first); len(after) != 1 || !after[0].LastUsed.After(e.LastUsed) {
		t.Errorf("deps list: after the cached run %+v, want last_used later than %s", after, e.LastUsed)
	}

	// The table form names the entry and its job.
	if r := depsCmd(t, "list", "--data", data); r.code != 0 || !regexp.MustCompile(`(?m)^`+key[:12]+`\s.*\s`+first+`\s+ready$`).MatchString(r.stdout) {
		t.Errorf("deps list: exit %d, want a row for %s made by %s, ready:\n%s%s", r.code, key[:12], first, r.stdout, r.stderr)
	}
	// Prune with a long --unused-for keeps an entry used just now. (A
	// prune of every unused entry would touch other tests' entries.)
	p := depsCmd(t, "prune", "--unused-for", "87600h", "--data", data)
	if p.code != 0 || !regexp.MustCompile(`(?m)^\d+ entries removed, .* freed$`).MatchString(p.stdout) || strings.Contains(p.stdout, key[:12]) {
		t.Errorf("deps prune --unused-for 87600h: exit %d, want it to keep %s:\n%s%s", p.code, key[:12], p.stdout, p.stderr)
	}
	if after := depsList(t, data, first); len(after) != 1 || !after[0].Ready {
		t.Errorf("deps list after prune: %+v, want the entry still ready", after)
	}

	// Changed requirements: a second wheel. A new key, installed again.
	token2 := newToken(t)
	writeWheelProject(t, dir, token, token2)
	r = s.ci(t, dir, "submit", "test")
	third := jobID(t, r)
	jobs.add(third)
	if r.code != 0 || !strings.Contains(r.stdout, "Successfully installed") || strings.Contains(r.stdout, "dependencies: cached") {
		t.Fatalf("changed requirements: exit %d, want 0 with pip's output\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	if n := w.installs(third); n != 1 {
		t.Errorf("changed requirements: %d install containers created, want 1", n)
	}
	if mine := depsList(t, data, third); len(mine) != 1 || !mine[0].Ready || mine[0].Key == key {
		t.Errorf("deps list: entries of the changed requirements %+v, want one ready with a key other than %s", mine, key[:12])
	}
}

// TestDepsInstallFails runs a project whose requirement no index has: the
// job ends error (exit 125) with pip's message under the install heading
// and the reason on stderr, and leaves no ready cache entry.
func TestDepsInstallFails(t *testing.T) {
	needEngine(t)
	jobs := trackDeps(t)
	data := t.TempDir()
	s := startServer(t, data, depsArgs...)
	w := watchInstalls(t)
	token := newToken(t)
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "requirements.txt"), "--no-index\nno-such-package-"+token+"==1.0\n")
	writeFile(t, filepath.Join(dir, "test_ok.py"), "def test_ok():\n    pass\n")

	r := s.ci(t, dir, "submit", "test")
	id := jobID(t, r)
	jobs.add(id)
	out := r.stdout + r.stderr
	reason := "installing the dependencies of requirements.txt failed (exit code 1); pip's messages are in the log, under install"
	if r.code != 125 {
		t.Fatalf("exit %d, want 125\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	if !strings.Contains(out, "No matching distribution found for no-such-package-"+token+"==1.0") {
		t.Errorf("output lacks pip's \"No matching distribution found\":\n%s", out)
	}
	if !strings.Contains(r.stderr, "==> install\n") || strings.Contains(r.stderr, "==> test") {
		t.Errorf("stderr: want the install heading and no test heading:\n%s", r.stderr)
	}
	if !strings.Contains(r.stderr, "ci: job "+id+" error: "+reason+"\n") {
		t.Errorf("stderr lacks the reason %q:\n%s", reason, r.stderr)
	}
	if strings.Contains(out, "passed") {
		t.Errorf("the tests ran:\n%s", out)
	}
	j, err := client.New(s.url).Job(context.Background(), id)
	if err != nil || j.Status != "error" || j.Reason != reason || j.Phase != "install" {
		t.Errorf("job %+v, %v; want error in phase install with reason %q", j, err, reason)
	}
	ps := phases(jobEvents(t, s, id))
	if got := phaseNames(ps); !slices.Equal(got, []string{"install"}) || !strings.Contains(ps[1].text, "No matching distribution found") {
		t.Errorf("phase events %q, want install only, holding pip's error:\n%s", got, ps[len(ps)-1].text)
	}
	if n := w.installs(id); n != 1 {
		t.Errorf("%d install containers created, want 1", n)
	}
	if n, m := labelled(t, labelInstall, id), labelled(t, labelJob, id); n+m != 0 {
		t.Errorf("%d install and %d test containers left behind", n, m)
	}
	for _, e := range depsList(t, data, id) {
		if e.Ready {
			t.Errorf("deps list: a ready entry for the failed install: %+v", e)
		}
	}
}

// TestDepsSameKeyConcurrently submits two jobs with the same new
// requirements at once. The install of the first to get there is held
// (see gateProject) until the other says it waits for it: one install
// container in all, and the other job takes the venv from the cache.
func TestDepsSameKeyConcurrently(t *testing.T) {
	needEngine(t)
	jobs := trackDeps(t)
	s := startServer(t, t.TempDir(), append(depsArgs, "--concurrency", "2")...)
	w := watchInstalls(t)
	token := newToken(t)
	dir := gateProject(t, token)

	a := jobIDFromAsync(t, s.ci(t, dir, "submit", "test", "--async"))
	jobs.add(a)
	b := jobIDFromAsync(t, s.ci(t, dir, "submit", "test", "--async"))
	jobs.add(b)
	var cid, leader string
	waitFor(t, func() bool { cid, leader = runningInstall(t, a, b); return cid != "" })
	other := a
	if leader == a {
		other = b
	}
	waiting := "dependencies: job " + leader + " is installing the same requirements (key "
	waitFor(t, func() bool { return strings.Contains(jobLog(t, s, other), waiting) })
	release(t, cid)

	rl := s.ci(t, t.TempDir(), "wait", leader)
	ro := s.ci(t, t.TempDir(), "wait", other)
	if rl.code != 0 || ro.code != 0 {
		t.Fatalf("exit %d and %d, want 0 and 0\ninstaller:\n%s%s\nwaiter:\n%s%s", rl.code, ro.code, rl.stdout, rl.stderr, ro.stdout, ro.stderr)
	}
	if !strings.Contains(rl.stdout, "Successfully installed ci-e2e-"+token+"-1.0") {
		t.Errorf("the installing job lacks pip's output:\n%s", rl.stdout)
	}
	if n := w.installs(a, b); n != 1 {
		t.Errorf("%d install containers created, want 1", n)
	}
	ps := phases(jobEvents(t, s, other))
	wantRE := regexp.MustCompile(`^dependencies: job ` + regexp.QuoteMeta(leader) +
		` is installing the same requirements \(key ([0-9a-f]{12})…\); waiting for it\n` +
		`dependencies: cached \(key ([0-9a-f]{12})…\)\n$`)
	if got := phaseNames(ps); !slices.Equal(got, []string{"install", "test"}) {
		t.Fatalf("waiting job: phase events %q, want install, test", got)
	}
	if m := wantRE.FindStringSubmatch(ps[1].text); m == nil || m[1] != m[2] {
		t.Errorf("waiting job: install phase %q, want the waiting line, then the cached line, with the same key", ps[1].text)
	}
	if !strings.Contains(ps[2].text, "1 passed") {
		t.Errorf("waiting job: test phase lacks \"1 passed\":\n%s", ps[2].text)
	}
}

// TestDepsServerKilledDuringInstall kills ci-server with SIGKILL while a
// job's install is held (see gateProject) and restarts it: the job runs
// again from the start, installs in a new container, passes, and leaves
// no container behind.
func TestDepsServerKilledDuringInstall(t *testing.T) {
	needEngine(t)
	jobs := trackDeps(t)
	data := t.TempDir()
	s := startServer(t, data, depsArgs...)
	w := watchInstalls(t)
	token := newToken(t)
	id := jobIDFromAsync(t, s.ci(t, gateProject(t, token), "submit", "test", "--async"))
	jobs.add(id)

	var held string
	waitFor(t, func() bool { held, _ = runningInstall(t, id); return held != "" })
	// The restart decides by the stored phase.
	waitFor(t, func() bool {
		j, err := client.New(s.url).Job(context.Background(), id)
		return err == nil && j.Phase == "install"
	})
	s.kill()
	s.start()
	var again string
	waitFor(t, func() bool { again, _ = runningInstall(t, id); return again != "" && again != held })
	release(t, again)

	r := s.ci(t, t.TempDir(), "wait", id)
	if r.code != 0 {
		t.Fatalf("exit %d, want 0\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	note := "[ci: ci-server restarted while the job was installing its dependencies; installing again]"
	if !strings.Contains(r.stderr, note) || strings.Count(r.stderr, "==> install\n") != 2 || strings.Count(r.stderr, "==> test\n") != 1 {
		t.Errorf("stderr: want the restart note, two install headings and one test heading:\n%s", r.stderr)
	}
	if !strings.Contains(r.stdout, "Successfully installed ci-e2e-"+token+"-1.0") || !strings.Contains(r.stdout, "1 passed") {
		t.Errorf("stdout lacks pip's and pytest's success:\n%s", r.stdout)
	}
	ps := phases(jobEvents(t, s, id))
	if got := phaseNames(ps); !slices.Equal(got, []string{"install", "install", "test"}) {
		t.Errorf("phase events %q, want install, install, test", got)
	} else if !strings.Contains(ps[1].text, note) || !strings.Contains(ps[2].text, "Successfully installed") {
		t.Errorf("want the note at the end of the first install and pip's success in the second:\nfirst:\n%s\nsecond:\n%s", ps[1].text, ps[2].text)
	}
	if !strings.Contains(jobLog(t, s, id), note) {
		t.Errorf("the stored log lacks the restart note")
	}
	if n := w.installs(id); n != 2 {
		t.Errorf("%d install containers created, want 2", n)
	}
	if n, m := labelled(t, labelInstall, id), labelled(t, labelJob, id); n+m != 0 {
		t.Errorf("%d install and %d test containers left behind", n, m)
	}
	if e := depsList(t, data, id); len(e) != 1 || !e[0].Ready || e[0].InUse != 0 {
		t.Errorf("deps list: %+v, want one ready entry not in use", e)
	}
}
