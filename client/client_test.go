package client_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"

	"ci/client"
)

func TestSubmitStreams(t *testing.T) {
	chunk1 := bytes.Repeat([]byte("a"), 1000)
	chunk2 := []byte("the end")
	gotFirst := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != "POST" || r.URL.Path != "/api/v1/jobs" {
			t.Errorf("%s %s, want POST /api/v1/jobs", r.Method, r.URL.Path)
		}
		if ct := r.Header.Get("Content-Type"); ct != "application/zip" {
			t.Errorf("Content-Type %q", ct)
		}
		if args := r.URL.Query()["args"]; !reflect.DeepEqual(args, []string{"-k", "test_x", "-x"}) {
			t.Errorf("args %q", args)
		}
		first := make([]byte, len(chunk1))
		if _, err := io.ReadFull(r.Body, first); err != nil {
			t.Errorf("read first chunk: %v", err)
		}
		close(gotFirst) // the client sent it before having the rest
		rest, err := io.ReadAll(r.Body)
		if err != nil || !bytes.Equal(append(first, rest...), append(chunk1, chunk2...)) {
			t.Errorf("body mismatch (err %v)", err)
		}
		w.WriteHeader(http.StatusCreated)
		io.WriteString(w, `{"id":"J1","status":"queued","args":["-k","test_x","-x"],"archive_size":1007,
			"created_at":"2025-01-02T03:04:05.123456789Z","last_seq":1,
			"events_url":"ws://h/api/v1/jobs/J1/events","web_url":"http://h/jobs/J1"}`)
	}))
	defer srv.Close()

	pr, pw := io.Pipe()
	go func() {
		pw.Write(chunk1)
		<-gotFirst
		pw.Write(chunk2)
		pw.Close()
	}()
	j, err := client.New(srv.URL).Submit(testContext(t), pr, []string{"-k", "test_x", "-x"})
	if err != nil {
		t.Fatalf("Submit: %v", err)
	}
	if j.ID != "J1" || j.Status != "queued" || j.WebURL != "http://h/jobs/J1" || j.EventsURL == "" ||
		j.ArchiveSize != 1007 || j.CreatedAt.Nanosecond() != 123456789 || j.LastSeq != 1 {
		t.Fatalf("job %+v", j)
	}
}

func TestAPIErrors(t *testing.T) {
	tests := []struct {
		name       string
		status     int
		body       string
		wantCode   string
		wantMsg    string
		wantNotFnd bool
	}{
		{"json", 413, `{"error":"archive too large (max 100 MiB)","code":"invalid"}`, "invalid", "archive too large (max 100 MiB)", false},
		{"queue full", 503, `{"error":"queue full","code":"unavailable"}`, "unavailable", "queue full", false},
		{"not found", 404, `{"error":"job not found","code":"not_found"}`, "not_found", "job not found", true},
		{"plain text", 502, "bad gateway\n", "internal", "bad gateway", false},
		{"empty 404", 404, "", "not_found", "not found", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				io.Copy(io.Discard, r.Body)
				w.WriteHeader(tt.status)
				io.WriteString(w, tt.body)
			}))
			defer srv.Close()
			c := client.New(srv.URL)
			_, errSubmit := c.Submit(testContext(t), strings.NewReader("PK"), nil)
			_, errJob := c.Job(testContext(t), "J1")
			_, errJobs := c.Jobs(testContext(t), 10, "")
			_, errLog := c.Log(testContext(t), "J1")
			for _, err := range []error{errSubmit, errJob, errJobs, errLog} {
				var e *client.Error
				if !errors.As(err, &e) {
					t.Fatalf("err = %v, want *client.Error", err)
				}
				if e.StatusCode != tt.status || e.Code != tt.wantCode || e.Message != tt.wantMsg {
					t.Fatalf("error %+v, want %d %s %q", e, tt.status, tt.wantCode, tt.wantMsg)
				}
				if client.IsNotFound(err) != tt.wantNotFnd {
					t.Fatalf("IsNotFound(%v) = %v", err, !tt.wantNotFnd)
				}
			}
		})
	}
}

func TestJobJobsLog(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ci/api/v1/jobs/{id}", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, `{"id":"`+r.PathValue("id")+`","status":"failed","args":[],"created_at":"2025-01-02T03:04:05Z",
			"started_at":"2025-01-02T03:04:06Z","finished_at":"2025-01-02T03:04:09Z","exit_code":1,"reason":"1 test failed","last_seq":9,"phase":"test"}`)
	})
	mux.HandleFunc("GET /ci/api/v1/jobs", func(w http.ResponseWriter, r *http.Request) {
		if got := r.URL.Query().Get("limit") + "," + r.URL.Query().Get("before"); got != "2,J9" {
			t.Errorf("limit,before = %s", got)
		}
		json.NewEncoder(w).Encode(client.JobList{Jobs: []client.Job{{ID: "J8"}, {ID: "J7"}}, Next: "J7"})
	})
	mux.HandleFunc("GET /ci/api/v1/jobs/{id}/log", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "..F\n1 failed\n")
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	c := client.New(srv.URL + "/ci") // a path prefix is kept
	ctx := testContext(t)

	j, err := c.Job(ctx, "J1")
	if err != nil {
		t.Fatalf("Job: %v", err)
	}
	if j.ID != "J1" || !j.Terminal() || j.ExitCode == nil || *j.ExitCode != 1 || j.FinishedAt.Sub(*j.StartedAt).Seconds() != 3 {
		t.Fatalf("job %+v", j)
	}
	if j.Phase != "test" {
		t.Fatalf("phase=%q, want test", j.Phase)
	}
	l, err := c.Jobs(ctx, 2, "J9")
	if err != nil {
		t.Fatalf("Jobs: %v", err)
	}
	if len(l.Jobs) != 2 || l.Jobs[0].ID != "J8" || l.Next != "J7" {
		t.Fatalf("list %+v", l)
	}
	rc, err := c.Log(ctx, "J1")
	if err != nil {
		t.Fatalf("Log: %v", err)
	}
	defer rc.Close()
	b, _ := io.ReadAll(rc)
	if string(b) != "..F\n1 failed\n" {
		t.Fatalf("log %q", b)
	}
}

func TestBadBaseURL(t *testing.T) {
	for _, u := range []string{"localhost:8000", "ftp://x", "://"} {
		if _, err := client.New(u).Job(testContext(t), "J1"); err == nil {
			t.Errorf("New(%q).Job: no error", u)
		}
	}
}
