// Package webui serves ci's web pages, embedded in the binary: the job list
// at / and the live log of one job at /jobs/{id}. The pages are plain HTML,
// CSS and JavaScript modules under static/, with no build step; they load
// nothing from outside the server and talk to the JSON and WebSocket API.
package webui

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"io/fs"
	"net/http"
	"path"
	"regexp"
	"strconv"
	"time"
)

//go:embed static
var static embed.FS

// contentTypes maps the extensions of the embedded files to their types.
var contentTypes = map[string]string{
	".html": "text/html; charset=utf-8",
	".css":  "text/css; charset=utf-8",
	".js":   "text/javascript; charset=utf-8",
	".svg":  "image/svg+xml",
}

// asset is one embedded file, ready to serve.
type asset struct {
	name  string
	body  []byte
	ctype string
	etag  string
}

// assets are the embedded files by name; loaded once.
var assets = mustLoad()

func mustLoad() map[string]*asset {
	m := map[string]*asset{}
	err := fs.WalkDir(static, "static", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		ctype, ok := contentTypes[path.Ext(p)]
		if !ok {
			return nil
		}
		b, err := static.ReadFile(p)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(b)
		name := path.Base(p)
		m[name] = &asset{name: name, body: b, ctype: ctype, etag: `"` + hex.EncodeToString(sum[:8]) + `"`}
		return nil
	})
	if err != nil {
		panic("webui: read embedded files: " + err.Error())
	}
	return m
}

// Handler returns the handler of the web pages: GET / (the job list),
// GET /jobs/{id} (one job's live log) and GET /static/{name} (their CSS,
// JavaScript and icon). Every other path answers 404 with an HTML page.
// Whether a job exists is for the page to find out from the API: /jobs/{id}
// is served for any id.
func Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		servePage(w, r, "index.html", http.StatusOK)
	})
	mux.HandleFunc("GET /jobs/{id}", func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("id") == "" {
			servePage(w, r, "404.html", http.StatusNotFound)
			return
		}
		servePage(w, r, "job.html", http.StatusOK)
	})
	mux.HandleFunc("GET /static/{name}", func(w http.ResponseWriter, r *http.Request) {
		a := assets[r.PathValue("name")]
		if a == nil || path.Ext(a.name) == ".html" {
			servePage(w, r, "404.html", http.StatusNotFound)
			return
		}
		serveAsset(w, r, a)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		servePage(w, r, "404.html", http.StatusNotFound)
	})
	return mux
}

// safeHost matches a Host header that may go into a CSP source.
var safeHost = regexp.MustCompile(`^[A-Za-z0-9.\-]+(:[0-9]+)?$|^\[[0-9A-Fa-f:.]+\](:[0-9]+)?$`)

// servePage serves an HTML page with its security headers.
func servePage(w http.ResponseWriter, r *http.Request, name string, code int) {
	a := assets[name]
	if a == nil {
		http.Error(w, "page missing", http.StatusInternalServerError)
		return
	}
	// connect-src 'self' covers same-origin WebSockets in current browsers;
	// the explicit ws(s)://host sources cover older ones.
	connect := "'self'"
	if safeHost.MatchString(r.Host) {
		connect += " ws://" + r.Host + " wss://" + r.Host
	}
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src "+connect+"; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
	if code != http.StatusOK {
		setCommon(h, a)
		h.Del("Etag")
		h.Set("Content-Length", strconv.Itoa(len(a.body)))
		w.WriteHeader(code)
		if r.Method != http.MethodHead {
			w.Write(a.body)
		}
		return
	}
	serveAsset(w, r, a)
}

// serveAsset serves an embedded file; clients revalidate with its ETag.
func serveAsset(w http.ResponseWriter, r *http.Request, a *asset) {
	setCommon(w.Header(), a)
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(a.body))
}

func setCommon(h http.Header, a *asset) {
	h.Set("Content-Type", a.ctype)
	h.Set("Cache-Control", "no-cache")
	h.Set("Etag", a.etag)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "same-origin")
}
