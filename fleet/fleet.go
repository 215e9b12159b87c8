package fleet

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vega-gateway/vega-gateway/pool"
)

// MaxBackends bounds a fleet: a request's tried backends are a bit set.
const MaxBackends = 64

// Member is one backend as configured.
type Member struct {
	// Name identifies the backend in X-Vega-Backend, logs, metrics and the
	// admin page. Default: the pool's host:port.
	Name string
	// Weight is the backend's share of requests relative to the others
	// (a GPU twice as fast: 2). Default 1.
	Weight int
	// Pool is the backend's own bounded pool.
	Pool *pool.Pool
}

// Fleet is the set of backends and the policy that chooses among them. Its
// methods are safe for concurrent use; none holds a lock across I/O.
type Fleet struct {
	cfg      Config
	backends []*Backend
	byName   map[string]*Backend
	// rr is the round_robin policy's cursor.
	rr atomic.Uint64
	// noBackend counts picks that found no usable backend.
	noBackend atomic.Int64
	// modelMissing counts requests answered 404 without a round trip.
	modelMissing atomic.Int64
	// loadMean is the mean cold load time seen across the fleet.
	loadMean mean
	// digests: catalogues are fetched even for one backend (TrackDigests).
	digests bool
	// coldMu serialises the choice of a backend for a cold load with its
	// mark in the catalogue (never held across I/O).
	coldMu sync.Mutex
}

// Backend is one member with its live routing state: outstanding requests,
// catalogue, breaker and pick counters.
type Backend struct {
	// Name and Weight are as configured; Pool is the backend's pool.
	Name   string
	Weight int
	Pool   *pool.Pool
	index  int
	f      *Fleet
	// hash is nameHash(Name), for rendezvous hashing.
	hash uint64

	// outstanding counts requests sent here and not finished, all models.
	outstanding atomic.Int64
	// perModel counts outstanding requests by normalised model name;
	// modelsMu guards the map (entries are never removed; bounded by
	// maxTrackedModels).
	modelsMu sync.RWMutex
	perModel map[string]*atomic.Int64

	cat     catalogue
	breaker breaker
	// busyUntil (unix ns): Ollama answered "server busy" here; until then
	// the backend is a last resort.
	busyUntil atomic.Int64
	picks     [numReasons]atomic.Int64
	coldLoads atomic.Int64
	busy      atomic.Int64
	failures  atomic.Int64
	// svcMean is the mean time a warm request holds the backend.
	svcMean mean
}

// maxTrackedModels bounds the per-model counters of one backend; requests
// for further names (a client inventing model names) share one counter.
const maxTrackedModels = 256

// New validates cfg and the members and builds the fleet. It starts
// nothing: Run refreshes catalogues and probes health.
func New(cfg Config, members []Member) (*Fleet, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if len(members) == 0 {
		return nil, errors.New("upstreams: no backend configured")
	}
	if len(members) > MaxBackends {
		return nil, fmt.Errorf("upstreams: at most %d backends, got %d", MaxBackends, len(members))
	}
	f := &Fleet{cfg: cfg, byName: map[string]*Backend{}}
	urls := map[string]bool{}
	for i, m := range members {
		if m.Pool == nil {
			return nil, fmt.Errorf("upstreams[%d]: no pool", i)
		}
		name := m.Name
		if name == "" {
			name = defaultName(m.Pool.URL())
		}
		if m.Weight < 0 {
			return nil, fmt.Errorf("upstreams[%d] (%s).weight: must be positive, got %d", i, name, m.Weight)
		}
		if m.Weight == 0 {
			m.Weight = 1
		}
		if m.Name != "" && !validName(name) {
			return nil, fmt.Errorf("upstreams[%d].name: %q must be 1-64 letters, digits or .-_:", i, name)
		}
		if f.byName[name] != nil {
			return nil, fmt.Errorf("upstreams[%d].name: %q is used twice", i, name)
		}
		u := strings.TrimSuffix(strings.ToLower(m.Pool.URL()), "/")
		if urls[u] {
			return nil, fmt.Errorf("upstreams[%d].url: %s is used twice", i, m.Pool.URL())
		}
		urls[u] = true
		b := &Backend{Name: name, Weight: m.Weight, Pool: m.Pool, index: i, f: f, hash: nameHash(name), perModel: map[string]*atomic.Int64{}}
		b.cat.init()
		f.backends = append(f.backends, b)
		f.byName[name] = b
	}
	return f, nil
}

// defaultName is a backend's name when none is configured: its host:port.
func defaultName(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil || u.Host == "" {
		return rawURL
	}
	return u.Host
}

func validName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune(".-_:[]", c)) {
			return false
		}
	}
	return true
}

// Config returns the routing configuration in force, defaults applied.
func (f *Fleet) Config() Config { return f.cfg }

// Len is the number of backends.
func (f *Fleet) Len() int { return len(f.backends) }

// Backends lists the backends in configuration order.
func (f *Fleet) Backends() []*Backend { return f.backends }

// First is the first configured backend: the one a single-backend gateway
// has, and the one whose pool the seed fields of /admin/resources/pools show.
func (f *Fleet) First() *Backend { return f.backends[0] }

// Lookup finds a backend by name (X-Vega-Backend); nil if none.
func (f *Fleet) Lookup(name string) *Backend { return f.byName[name] }

// Bit is the backend's bit in a Request's Tried set.
func (b *Backend) Bit() uint64 { return 1 << uint(b.index) }

// Outstanding is the number of requests sent to b and not yet finished.
func (b *Backend) Outstanding() int64 { return b.outstanding.Load() }

// counter returns the outstanding counter of a normalised model name,
// creating it when create is set (the shared overflow counter past
// maxTrackedModels); nil when absent and not created.
func (b *Backend) counter(model string, create bool) *atomic.Int64 {
	b.modelsMu.RLock()
	c := b.perModel[model]
	b.modelsMu.RUnlock()
	if c != nil || !create {
		return c
	}
	b.modelsMu.Lock()
	defer b.modelsMu.Unlock()
	if c = b.perModel[model]; c != nil {
		return c
	}
	if len(b.perModel) >= maxTrackedModels {
		model = ""
		if c = b.perModel[model]; c != nil {
			return c
		}
	}
	c = new(atomic.Int64)
	b.perModel[model] = c
	return c
}

// Start counts a request for model as outstanding on b until the returned
// Ticket's End. Call it once the request is about to be sent.
func (b *Backend) Start(model string) Ticket {
	n := NormalizeModel(model)
	c := b.counter(n, true)
	c.Add(1)
	b.outstanding.Add(1)
	return Ticket{b: b, c: c, model: n, start: time.Now()}
}

// Ticket is one outstanding request on a backend.
type Ticket struct {
	b     *Backend
	c     *atomic.Int64
	model string
	start time.Time
}

// Backend is the backend the ticket counts on (nil for the zero Ticket).
func (t Ticket) Backend() *Backend { return t.b }

// NormalizeModel makes "llama3.2" and "LLaMA3.2:latest" the same name, as
// Ollama does: lower case, ":latest" added to a name without a tag.
func NormalizeModel(m string) string {
	m = strings.ToLower(strings.TrimSpace(m))
	if m != "" && !strings.Contains(m[strings.LastIndex(m, "/")+1:], ":") {
		m += ":latest"
	}
	return m
}

// TrackDigests makes Run fetch the catalogue of a lone backend too, so
// Digest knows models' digests (the response cache keys on them). Call it
// before Run.
func (f *Fleet) TrackDigests() { f.digests = true }

// Digest returns the digest of model as every backend that lists it in
// /api/tags reports it, and false when none lists it with a digest or two
// disagree (a model pulled at different times): then nothing may be
// cached for it, since the answer depends on which backend runs it.
func (f *Fleet) Digest(model string) (string, bool) {
	model = NormalizeModel(model)
	digest := ""
	for _, b := range f.backends {
		m := b.cat.cur.Load()
		if !m.known || !m.installed[model] {
			continue
		}
		d := m.digests[model]
		if d == "" || (digest != "" && d != digest) {
			return "", false
		}
		digest = d
	}
	return digest, digest != ""
}

// Single is the fleet of one backend, at the default routing config: what a
// gateway with one upstream has, and what tests and tools build.
func Single(p *pool.Pool) *Fleet {
	f, err := New(Config{}, []Member{{Pool: p}})
	if err != nil {
		panic("fleet.Single: " + err.Error()) // only a nil pool can fail
	}
	return f
}
