package ollamatest

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
	"time"
)

// progressRequest is the body of pull, push and create.
type progressRequest struct {
	Model  string `json:"model"`
	Name   string `json:"name"`
	Stream *bool  `json:"stream"`
}

func (r progressRequest) name() string {
	if r.Model != "" {
		return r.Model
	}
	return r.Name
}

type progress struct {
	Status    string `json:"status"`
	Digest    string `json:"digest,omitempty"`
	Total     int64  `json:"total,omitempty"`
	Completed int64  `json:"completed,omitempty"`
}

// progressScript streams Ollama's progress lines: head statuses, one line
// per unit (Config.Tokens of them) and tail statuses; done runs when the
// tail is built, i.e. when the operation has succeeded.
func (x *exchange) progress(req progressRequest, head []string, unit func(i int) progress, tail []string, done func()) {
	lines := func(statuses []string) [][]byte {
		out := make([][]byte, len(statuses))
		for i, st := range statuses {
			out[i] = ndjson(progress{Status: st})
		}
		return out
	}
	n := x.s.cfg.Tokens
	if req.Stream != nil && !*req.Stream {
		if !x.pause(x.s.cfg.TokenDelay * time.Duration(n+len(head)+len(tail))) {
			return
		}
		done()
		x.json(http.StatusOK, progress{Status: "success"})
		return
	}
	x.stream(&script{
		contentType: "application/x-ndjson",
		head:        lines(head),
		units:       n,
		unit:        func(i int, _ string) [][]byte { return [][]byte{ndjson(unit(i))} },
		tail:        func(int) [][]byte { done(); return lines(tail) },
		fail:        func(msg string) []byte { return ndjson(map[string]string{"error": msg}) },
	})
}

// layer describes the one fake layer of a model being transferred.
func layer(name string, i, n int) progress {
	m := describeModel(normalizeModel(name))
	total := m.size
	return progress{
		Status:    "pulling " + m.digest[:12],
		Digest:    "sha256:" + m.digest,
		Total:     total,
		Completed: min(total, total*int64(i%n+1)/int64(n)),
	}
}

// pull answers POST /api/pull; the model becomes known.
func (x *exchange) pull() {
	var req progressRequest
	if !x.decode(&req) {
		return
	}
	name := req.name()
	if name == "" {
		x.fail(http.StatusBadRequest, "invalid model name")
		return
	}
	n := max(x.s.cfg.Tokens, 1)
	x.progress(req, []string{"pulling manifest"},
		func(i int) progress { return layer(name, i, n) },
		[]string{"verifying sha256 digest", "writing manifest", "success"},
		func() { x.s.addModel(name) })
}

// push answers POST /api/push.
func (x *exchange) push() {
	var req progressRequest
	if !x.decode(&req) {
		return
	}
	name := req.name()
	if name == "" {
		x.fail(http.StatusBadRequest, "model is required")
		return
	}
	n := max(x.s.cfg.Tokens, 1)
	x.progress(req, []string{"retrieving manifest"},
		func(i int) progress {
			p := layer(name, i, n)
			p.Status = "pushing " + strings.TrimPrefix(p.Digest, "sha256:")[:12]
			return p
		},
		[]string{"pushing manifest", "success"}, func() {})
}

// create answers POST /api/create; the model becomes known.
func (x *exchange) create() {
	var req struct {
		progressRequest
		// Files names the model's files by the digests of blobs uploaded
		// first (POST /api/blobs/:digest), as `ollama create` sends them.
		Files map[string]string `json:"files"`
	}
	if !x.decode(&req) {
		return
	}
	name := req.name()
	if name == "" {
		x.fail(http.StatusBadRequest, "model is required")
		return
	}
	for _, digest := range req.Files {
		x.s.mu.Lock()
		ok := digestRE.MatchString(digest) && x.s.blobs[blobKey(digest)]
		x.s.mu.Unlock()
		if !ok {
			// Ollama opens the blob's file while creating, and reports the
			// failure in the progress stream (a 500 when not streamed).
			msg := fmt.Sprintf("open /root/.ollama/models/blobs/%s: no such file or directory", strings.Replace(digest, ":", "-", 1))
			if req.Stream != nil && !*req.Stream {
				x.fail(http.StatusInternalServerError, msg)
				return
			}
			x.w.Header().Set("Content-Type", "application/x-ndjson")
			x.w.WriteHeader(http.StatusOK)
			_, _ = x.w.Write(ndjson(map[string]string{"error": msg}))
			return
		}
	}
	x.progress(req.progressRequest, []string{"gathering model components"},
		func(i int) progress {
			return progress{Status: "using existing layer " + layer(name, i, 1).Digest}
		},
		[]string{"writing manifest", "success"},
		func() { x.s.addModel(name) })
}

// copyModel answers POST /api/copy.
func (x *exchange) copyModel() {
	var req struct {
		Source      string `json:"source"`
		Destination string `json:"destination"`
	}
	if !x.decode(&req) {
		return
	}
	switch {
	case req.Source == "":
		x.fail(http.StatusBadRequest, fmt.Sprintf("source %q is invalid", req.Source))
	case req.Destination == "":
		x.fail(http.StatusBadRequest, fmt.Sprintf("destination %q is invalid", req.Destination))
	default:
		if _, ok := x.s.model(req.Source); !ok {
			x.fail(http.StatusNotFound, fmt.Sprintf("model %q not found", req.Source))
			return
		}
		x.s.addModel(req.Destination)
		x.w.WriteHeader(http.StatusOK)
	}
}

// deleteModel answers DELETE /api/delete.
func (x *exchange) deleteModel() {
	var req struct {
		Model string `json:"model"`
		Name  string `json:"name"`
	}
	if !x.decode(&req) {
		return
	}
	name := req.Model
	if name == "" {
		name = req.Name
	}
	if name == "" {
		x.fail(http.StatusBadRequest, fmt.Sprintf("name %q is invalid", name))
		return
	}
	if !x.s.removeModel(name) {
		x.fail(http.StatusNotFound, fmt.Sprintf("model '%s' not found", name))
		return
	}
	x.w.WriteHeader(http.StatusOK)
}

// digestRE is the digest format Ollama's blob store accepts.
var digestRE = regexp.MustCompile(`^sha256[:-][0-9a-fA-F]{64}$`)

func blobKey(digest string) string { return "sha256:" + strings.ToLower(digest[7:]) }

// ForgetBlobs drops every uploaded blob, as if deleted from the store, so
// that the same blob can be uploaded again (benchmarks do).
func (s *Server) ForgetBlobs() {
	s.mu.Lock()
	clear(s.blobs)
	s.mu.Unlock()
}

// headBlob answers HEAD /api/blobs/:digest: 200 if uploaded, else 404.
func (x *exchange) headBlob() {
	if !digestRE.MatchString(x.param) {
		x.fail(http.StatusBadRequest, "invalid digest format")
		return
	}
	x.s.mu.Lock()
	ok := x.s.blobs[blobKey(x.param)]
	x.s.mu.Unlock()
	if !ok {
		x.fail(http.StatusNotFound, fmt.Sprintf("blob %q not found", x.param))
		return
	}
	x.w.WriteHeader(http.StatusOK)
}

// createBlob answers POST /api/blobs/:digest. The body is hashed as it
// streams in and never held; a digest mismatch is a 400, as in Ollama.
func (x *exchange) createBlob() {
	if !digestRE.MatchString(x.param) {
		x.fail(http.StatusBadRequest, "invalid digest format")
		return
	}
	key := blobKey(x.param)
	x.s.mu.Lock()
	exists := x.s.blobs[key]
	x.s.mu.Unlock()
	if exists {
		x.w.WriteHeader(http.StatusOK)
		return
	}
	h := sha256.New()
	n, err := io.Copy(h, x.r.Body)
	x.s.setBody(x.rec, nil, n)
	if err != nil {
		x.clientGone()
		x.fail(http.StatusInternalServerError, err.Error())
		return
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != key {
		x.fail(http.StatusBadRequest, fmt.Sprintf("digest mismatch, expected %q, got %q", x.param, got))
		return
	}
	x.s.mu.Lock()
	x.s.blobs[key] = true
	x.s.mu.Unlock()
	x.w.WriteHeader(http.StatusCreated)
}
