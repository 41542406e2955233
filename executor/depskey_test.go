package executor

import (
	"archive/zip"
	"bytes"
	"reflect"
	"testing"
)

// planFiles returns the tar entries of a project of files.
func planFiles(t *testing.T, files map[string]string) []tarEntry {
	t.Helper()
	var entries []zipEntry
	for name, body := range files {
		entries = append(entries, zipEntry{Name: name, Body: body})
	}
	b := zipBytes(t, entries)
	zr, err := zip.NewReader(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	plan, err := planTar(zr)
	if err != nil {
		t.Fatal(err)
	}
	return plan
}

// keyOf returns the deps key of a project of files in image "sha256:img".
func keyOf(t *testing.T, files map[string]string) string {
	t.Helper()
	entries := planFiles(t, files)
	req := findRequirements(entries)
	if req == nil {
		t.Fatal("no requirements.txt")
	}
	key, err := depsKey(entries, req, "sha256:img")
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func TestDepsKeyChangesWithWhatTheInstallReads(t *testing.T) {
	base := map[string]string{
		"requirements.txt":              "-r requirements/base.txt\n./wheels/x-1.0-py3-none-any.whl  # local\n-c constraints.txt\n-e .\n--find-links=./links\n",
		"requirements/base.txt":         "attrs\n",
		"constraints.txt":               "attrs<30\n",
		"wheels/x-1.0-py3-none-any.whl": "wheel v1",
		"links/y-2.0.tar.gz":            "sdist",
		"pyproject.toml":                "[project]\nname='p'\n",
		"src/p/__init__.py":             "code v1",
		"tests/test_p.py":               "def test(): pass\n",
	}
	k0 := keyOf(t, base)
	if len(k0) != 64 {
		t.Fatalf("key %q: want 64 hex digits", k0)
	}
	if k := keyOf(t, base); k != k0 {
		t.Fatalf("same project, keys %s and %s: want equal", k0, k)
	}
	for name, change := range map[string]string{
		"requirements.txt":              base["requirements.txt"] + "pytest-xdist\n",
		"requirements/base.txt":         "attrs==23.1\n",
		"constraints.txt":               "attrs<29\n",
		"wheels/x-1.0-py3-none-any.whl": "wheel v2",
		"links/y-2.0.tar.gz":            "sdist v2",
		"pyproject.toml":                "[project]\nname='p'\ndependencies=['six']\n",
	} {
		files := clone(base)
		files[name] = change
		if k := keyOf(t, files); k == k0 {
			t.Errorf("changing %s kept the key: want a new one", name)
		}
	}
	for name, change := range map[string]string{
		"src/p/__init__.py": "code v2",         // "-e ." follows the code
		"tests/test_p.py":   "def test(): 1\n", // not an input of the install
	} {
		files := clone(base)
		files[name] = change
		if k := keyOf(t, files); k != k0 {
			t.Errorf("changing %s changed the key: want the same (not an input of the install)", name)
		}
	}
	entries := planFiles(t, base)
	if k, _ := depsKey(entries, findRequirements(entries), "sha256:other"); k == k0 {
		t.Error("another image kept the key: want a new one")
	}
}

func TestRequirementTokens(t *testing.T) {
	got := requirementTokens("# comment\nattrs>=1 # why\n-r other.txt\n--requirement=more.txt\n" +
		"./w/x.whl\\\n  --hash=sha256:abc\nfile:./pkg#egg=pkg\nhttps://example.com/x.whl\n/abs/x.whl\n/workspace/w/y.whl\n")
	want := []string{"attrs>=1", "other.txt", "more.txt", "./w/x.whl", "sha256:abc", "./pkg", "w/y.whl"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("tokens %q, want %q", got, want)
	}
}

func TestFindRequirementsOnlyAtTheRoot(t *testing.T) {
	if findRequirements(planFiles(t, map[string]string{"sub/requirements.txt": "x\n"})) != nil {
		t.Fatal("found a requirements.txt below the root: want only the root's")
	}
}

func clone(m map[string]string) map[string]string {
	c := make(map[string]string, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}
