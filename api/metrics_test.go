package api_test

import (
	"bytes"
	"io"
	"net/http"
	"sync"
	"testing"

	"ci/api"
)

// uploadCounter records upload measurements.
type uploadCounter struct {
	mu       sync.Mutex
	bytes    int64
	uploads  int
	rejected map[string]int
}

func (u *uploadCounter) UploadReceived(n int64) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.bytes += n
	u.uploads++
}

func (u *uploadCounter) UploadRejected(reason string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.rejected[reason]++
}

func (u *uploadCounter) get() (bytes int64, uploads int, rejected map[string]int) {
	u.mu.Lock()
	defer u.mu.Unlock()
	r := map[string]int{}
	for k, v := range u.rejected {
		r[k] = v
	}
	return u.bytes, u.uploads, r
}

// TestUploadMetrics checks that every byte of an upload body read is
// counted, accepted or not, and every refusal with its reason.
func TestUploadMetrics(t *testing.T) {
	u := &uploadCounter{rejected: map[string]int{}}
	e := newEnvWith(t, func(c *api.Config) { c.Uploads, c.MaxUpload = u, 64<<10 })
	zip := project(t, 1, 0)
	e.wait(t, e.submit(t, zip, "").ID)
	if n, k, r := u.get(); n != int64(len(zip)) || k != 1 || len(r) != 0 {
		t.Fatalf("after one upload: %d bytes in %d uploads, rejected %v; want %d in 1, none", n, k, r, len(zip))
	}

	post := func(ct, query string, body []byte) int {
		t.Helper()
		resp, err := http.Post(e.srv.URL+"/api/v1/jobs"+query, ct, bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, tc := range []struct {
		ct, query string
		body      []byte
		status    int
	}{
		{"text/plain", "", zip, http.StatusUnsupportedMediaType},
		{"application/zip", "?timeout=soon", zip, http.StatusBadRequest},
		{"application/zip", "", []byte("not a zip"), http.StatusBadRequest},
		{"application/zip", "", make([]byte, 65<<10), http.StatusRequestEntityTooLarge},
	} {
		if got := post(tc.ct, tc.query, tc.body); got != tc.status {
			t.Fatalf("POST %s%s: status %d, want %d", tc.ct, tc.query, got, tc.status)
		}
	}
	n, _, r := u.get()
	if want := map[string]int{api.RejectUnsupportedType: 1, api.RejectInvalid: 2, api.RejectTooLarge: 1}; !equalCounts(r, want) {
		t.Fatalf("rejected %v, want %v", r, want)
	}
	// Only the body that was not a zip was read; the others were refused
	// before their body (type, options, declared length).
	if want := int64(len(zip) + len("not a zip")); n != want {
		t.Fatalf("received %d bytes, want %d", n, want)
	}
}

func equalCounts(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// TestMetricsEndpoint checks that GET /metrics is served by the metrics
// handler, without the token unless the server is private.
func TestMetricsEndpoint(t *testing.T) {
	const token = "s3cret-token-for-tests"
	metrics := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ci_test 1\n")
	})
	for _, tc := range []struct {
		token   string
		private bool
		want    int // without the token
	}{
		{"", false, 200},
		{token, false, 200},
		{token, true, 401},
	} {
		e := newEnvWith(t, func(c *api.Config) { c.Metrics, c.Token, c.Private = metrics, tc.token, tc.private })
		get := func(method, auth string) (int, string) {
			t.Helper()
			req, _ := http.NewRequest(method, e.srv.URL+"/metrics", nil)
			if auth != "" {
				req.Header.Set("Authorization", "Bearer "+auth)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			return resp.StatusCode, string(b)
		}
		if got, body := get("GET", ""); got != tc.want || (got == 200 && body != "ci_test 1\n") {
			t.Fatalf("token=%v private=%v: GET /metrics without token: %d %q, want %d", tc.token != "", tc.private, got, body, tc.want)
		}
		if tc.token != "" {
			if got, body := get("GET", tc.token); got != 200 || body != "ci_test 1\n" {
				t.Fatalf("private=%v: GET /metrics with the token: %d %q, want 200 and the metrics", tc.private, got, body)
			}
		}
		if got, _ := get("POST", tc.token); got != http.StatusMethodNotAllowed {
			t.Fatalf("POST /metrics: %d, want 405", got)
		}
	}
}
