package fleet

import (
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
)

// catalogue is one backend's models: what is installed (GET /api/tags) and
// what is loaded (GET /api/ps), refreshed in the background and corrected
// by what responses show. Readers load an immutable view; writers copy it
// under mu, so the request path takes no lock.
type catalogue struct {
	cur atomic.Pointer[models]
	mu  sync.Mutex
	// kick asks the refresher for an early refresh (buffered 1).
	kick chan struct{}
	// refreshes and refreshErrors count catalogue fetches.
	refreshes, refreshErrors atomic.Int64
	// loading holds when each model was marked as loading (noteLoading),
	// under mu, so a refresh that began before the mark keeps it.
	loading map[string]time.Time
	// maxLoaded is the most models /api/ps has listed at once: what the
	// backend can hold (OLLAMA_MAX_LOADED_MODELS and memory), as far as
	// seen; 0 before any.
	maxLoaded atomic.Int64
}

// models is an immutable catalogue view.
type models struct {
	// known: installed has been fetched at least once; until then any
	// model may be there.
	known     bool
	installed map[string]bool
	// digests are the installed models' digests as /api/tags lists them
	// (a model known only from a response has none).
	digests map[string]string
	loaded  map[string]bool
	// pending are loaded models whose load is still under way (sent here
	// cold, not yet answered nor listed by /api/ps).
	pending map[string]bool
	at      time.Time
	err     string
}

func (c *catalogue) init() {
	c.cur.Store(&models{installed: map[string]bool{}, loaded: map[string]bool{}, pending: map[string]bool{}})
	c.kick = make(chan struct{}, 1)
	c.loading = map[string]time.Time{}
}

// mayHave: the model is installed, or the catalogue is not known yet.
func (c *catalogue) mayHave(model string) bool {
	m := c.cur.Load()
	return !m.known || m.installed[model]
}

func (c *catalogue) loaded(model string) bool { return c.cur.Load().loaded[model] }

// pending: model is being loaded here now.
func (c *catalogue) pending(model string) bool { return c.cur.Load().pending[model] }

func (c *catalogue) loadedCount() int { return len(c.cur.Load().loaded) }

// update applies fn to a copy of the current view.
func (c *catalogue) update(fn func(m *models)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	old := c.cur.Load()
	m := &models{known: old.known, installed: make(map[string]bool, len(old.installed)), digests: old.digests,
		loaded: make(map[string]bool, len(old.loaded)+1), pending: make(map[string]bool, len(old.pending)+1), at: old.at, err: old.err}
	for k := range old.installed {
		m.installed[k] = true
	}
	for k := range old.pending {
		m.pending[k] = true
	}
	for k := range old.loaded {
		m.loaded[k] = true
	}
	fn(m)
	c.cur.Store(m)
}

// noteLoaded records that model is (or is being) loaded: a request for it
// was answered or sent there. A loaded model is installed.
func (c *catalogue) noteLoaded(model string) {
	if model == "" || c.loaded(model) && !c.pending(model) {
		return
	}
	c.update(func(m *models) {
		delete(m.pending, model)
		m.loaded[model] = true
		if m.known {
			m.installed[model] = true
		}
	})
}

// noteMissing records Ollama's 404 "model not found" for model.
func (c *catalogue) noteMissing(model string) {
	c.update(func(m *models) {
		delete(m.loaded, model)
		if m.known {
			delete(m.installed, model)
		}
	})
}

// requestRefresh asks for an early refresh without waiting for it.
func (c *catalogue) requestRefresh() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// listResponse is the part of /api/tags and /api/ps the catalogue reads.
type listResponse struct {
	Models []struct {
		Name   string `json:"name"`
		Model  string `json:"model"`
		Digest string `json:"digest"`
	} `json:"models"`
}

// fetcher reads a backend's /api/tags and /api/ps on a client of its own,
// so a pool full of long streams cannot starve it and its connection is not
// counted in the pool.
type fetcher struct {
	client  *fasthttp.HostClient
	host    string
	isTLS   bool
	timeout time.Duration
}

func newFetcher(rawURL string, timeout time.Duration) (*fetcher, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("catalogue: %w", err)
	}
	port := u.Port()
	isTLS := u.Scheme == "https"
	if port == "" {
		port = "80"
		if isTLS {
			port = "443"
		}
	}
	return &fetcher{
		client: &fasthttp.HostClient{
			Addr: net.JoinHostPort(u.Hostname(), port), IsTLS: isTLS, MaxConns: 2,
			NoDefaultUserAgentHeader: true, SecureErrorLogMessage: true, MaxIdemponentCallAttempts: 1,
			MaxResponseBodySize: 16 << 20,
		},
		host: u.Host, isTLS: isTLS, timeout: timeout,
	}, nil
}

// list returns the models a list names, with their digests.
func (ft *fetcher) list(path string) (map[string]bool, map[string]string, error) {
	req := fasthttp.AcquireRequest()
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI(path)
	if ft.isTLS {
		req.URI().SetScheme("https")
	}
	req.URI().SetHost(ft.host)
	req.Header.SetHost(ft.host)
	req.Header.SetMethod(fasthttp.MethodGet)
	if err := ft.client.DoTimeout(req, resp, ft.timeout); err != nil {
		return nil, nil, fmt.Errorf("GET %s: %w", path, err)
	}
	if resp.StatusCode() != fasthttp.StatusOK {
		return nil, nil, fmt.Errorf("GET %s: status %d", path, resp.StatusCode())
	}
	var lr listResponse
	if err := json.Unmarshal(resp.Body(), &lr); err != nil {
		return nil, nil, fmt.Errorf("GET %s: %w", path, err)
	}
	out := make(map[string]bool, len(lr.Models))
	digests := make(map[string]string, len(lr.Models))
	for _, m := range lr.Models {
		name := m.Model
		if name == "" {
			name = m.Name
		}
		if name != "" {
			out[NormalizeModel(name)] = true
			if m.Digest != "" {
				digests[NormalizeModel(name)] = m.Digest
			}
		}
	}
	return out, digests, nil
}

// refresh fetches both lists and replaces the view. A model with requests
// outstanding stays loaded: Ollama lists a model in /api/ps only once its
// load has finished. It reports whether the backend answered.
func (b *Backend) refresh(ft *fetcher) bool {
	began := time.Now()
	installed, digests, err := ft.list("/api/tags")
	var loaded map[string]bool
	if err == nil {
		loaded, _, err = ft.list("/api/ps")
	}
	b.cat.refreshes.Add(1)
	if err != nil {
		b.cat.refreshErrors.Add(1)
		b.cat.update(func(m *models) { m.err = err.Error() })
		return false
	}
	if n := int64(len(loaded)); n > b.cat.maxLoaded.Load() {
		b.cat.maxLoaded.Store(n)
	}
	pending := map[string]bool{}
	b.modelsMu.RLock()
	for name, c := range b.perModel {
		if name != "" && c.Load() > 0 && !loaded[name] {
			loaded[name], pending[name] = true, true
		}
	}
	b.modelsMu.RUnlock()
	b.cat.mu.Lock()
	// A model marked as loading while the lists were fetched was sent
	// here after Ollama answered them: keep the mark until the next fetch.
	for name, at := range b.cat.loading {
		if at.After(began) {
			pending[name] = pending[name] || !loaded[name]
			loaded[name] = true
		} else {
			delete(b.cat.loading, name)
		}
	}
	for name := range loaded {
		installed[name] = true
	}
	b.cat.cur.Store(&models{known: true, installed: installed, digests: digests, loaded: loaded, pending: pending, at: time.Now()})
	b.cat.mu.Unlock()
	return true
}

// RefreshCatalogue asks for b's catalogue to be fetched again soon (after
// model management there). It does not wait.
func (b *Backend) RefreshCatalogue() { b.cat.requestRefresh() }

// Installed lists the models installed on b as last seen (sorted), and
// whether the list is known yet.
func (b *Backend) Installed() ([]string, bool) {
	m := b.cat.cur.Load()
	return sortedKeys(m.installed), m.known
}

// Digest returns model's digest on b as /api/tags last listed it ("" if
// it is not listed there or the list is not known yet).
func (b *Backend) Digest(model string) string { return b.cat.cur.Load().digests[NormalizeModel(model)] }

// Loaded lists the models loaded on b as last seen or inferred (sorted).
func (b *Backend) Loaded() []string { return sortedKeys(b.cat.cur.Load().loaded) }

// hasRoom: b can load another model without evicting one, as far as its
// catalogue shows (fewer loaded than the most it has held at once).
func (b *Backend) hasRoom() bool {
	n := int64(b.cat.loadedCount())
	return n == 0 || n < b.cat.maxLoaded.Load()
}

// evictsNobody: loading a model on b delays no request — it has room, or
// every model loaded there is idle (Ollama evicts only an idle model, and
// a request for the evicted one would then wait for a load of its own).
func (b *Backend) evictsNobody() bool {
	if b.hasRoom() {
		return true
	}
	for name := range b.cat.cur.Load().loaded {
		if c := b.counter(name, false); c != nil && c.Load() > 0 {
			return false
		}
	}
	return true
}

// noteLoading records that model is being loaded on b for a request just
// sent there. When b has no room, Ollama will evict an idle model for it:
// one is dropped from the view at once, so the requests that follow are
// not sent to a model that is going away (the refresh after the load
// shows which one went).
func (b *Backend) noteLoading(model string) {
	if model == "" || b.cat.loaded(model) {
		return
	}
	full := !b.hasRoom()
	b.cat.update(func(m *models) {
		b.cat.loading[model] = time.Now()
		m.pending[model] = true
		if full {
			for name := range m.loaded {
				if c := b.counter(name, false); c == nil || c.Load() == 0 {
					delete(m.loaded, name)
					break
				}
			}
		}
		m.loaded[model] = true
		if m.known {
			m.installed[model] = true
		}
	})
}
