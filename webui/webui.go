// Package webui serves ci's web pages, embedded in the binary. This is a
// placeholder: a job list and a plain live log; the real UI is a later
// issue.
package webui

import (
	"embed"
	"net/http"
)

//go:embed static
var static embed.FS

// Handler returns the handler of the web pages: GET / (job list) and
// GET /jobs/{id} (live log of one job).
func Handler() http.Handler {
	mux := http.NewServeMux()
	page := func(name string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			b, err := static.ReadFile("static/" + name)
			if err != nil {
				http.Error(w, "page missing", http.StatusInternalServerError)
				return
			}
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			w.Header().Set("Content-Security-Policy", "default-src 'self'; connect-src 'self' ws: wss:; style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'")
			w.Write(b)
		}
	}
	mux.HandleFunc("GET /{$}", page("index.html"))
	mux.HandleFunc("GET /jobs/{id}", page("job.html"))
	mux.HandleFunc("/", http.NotFound)
	return mux
}
