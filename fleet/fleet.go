package fleet

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vega-gateway/vega-gateway/pool"
)

// MaxBackends bounds a fleet, discovered and draining backends included:
// a request's tried backends are a bit set of one word, so that choosing
// costs no memory. A discovered backend past the bound is not added (and
// the lookup says so); 64 Ollama servers behind one gateway replica is past
// what one replica's connection bounds serve well.
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
	cfg Config
	// cur is the backends that take requests: an immutable view, replaced
	// whole when discovery changes membership, so the request path reads it
	// with one atomic load and no lock.
	cur atomic.Pointer[view]
	// single: one configured backend and no discovery; it takes every
	// request, as the pool alone would. only is that backend (nil
	// otherwise), read by Pick without loading the view.
	single bool
	only   *Backend
	// static are the configured backends, in configuration order.
	static []*Backend
	groups []*group
	// mu guards membership changes (the discovered backends' states, the
	// groups' maps, used, closed) and serialises publishing cur. It is
	// never taken on the request path.
	mu sync.Mutex
	// used marks the slots (Bit) held by backends, draining ones included.
	used uint64
	// closed: Close was called; discovery adds nothing more.
	closed bool
	// closedDisconnects and closedErrors are the pool counters of
	// backends whose pools closed, so fleet-wide totals never go down when
	// a backend leaves (Departed).
	closedDisconnects, closedErrors atomic.Int64
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
	// slot is the backend's bit in a request's Tried set, held from its
	// creation until its pool is closed.
	slot int
	f    *Fleet
	// grp is the discovery group that found it (nil: configured); state,
	// stop and removedAt are its life cycle there, under f.mu.
	grp       *group
	state     memberState
	stop      context.CancelFunc
	removedAt time.Time
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

// New validates cfg, the members and the discovery groups and builds the
// fleet. It starts nothing: Run refreshes catalogues, probes health and
// runs discovery. A fleet of groups alone starts with no backend.
func New(cfg Config, members []Member, groups ...Group) (*Fleet, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if len(members) == 0 && len(groups) == 0 {
		return nil, errors.New("upstreams: no backend configured")
	}
	if len(members) > MaxBackends {
		return nil, fmt.Errorf("upstreams: at most %d backends, got %d", MaxBackends, len(members))
	}
	f := &Fleet{cfg: cfg, single: len(members) == 1 && len(groups) == 0}
	byName := map[string]*Backend{}
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
		if byName[name] != nil {
			return nil, fmt.Errorf("upstreams[%d].name: %q is used twice", i, name)
		}
		u := strings.TrimSuffix(strings.ToLower(m.Pool.URL()), "/")
		if urls[u] {
			return nil, fmt.Errorf("upstreams[%d].url: %s is used twice", i, m.Pool.URL())
		}
		urls[u] = true
		b := f.newBackend(name, m.Weight, m.Pool, i)
		b.state = stateMember
		f.static = append(f.static, b)
		byName[name] = b
	}
	if f.single {
		f.only = f.static[0]
	}
	if err := f.addGroups(groups, byName); err != nil {
		return nil, err
	}
	f.publish()
	return f, nil
}

func (f *Fleet) newBackend(name string, weight int, p *pool.Pool, slot int) *Backend {
	b := &Backend{Name: name, Weight: weight, Pool: p, slot: slot, f: f, hash: nameHash(name), perModel: map[string]*atomic.Int64{}}
	b.cat.init()
	f.used |= 1 << uint(slot)
	return b
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

// Len is the number of backends taking requests now.
func (f *Fleet) Len() int { return len(f.cur.Load().list) }

// Single reports a fleet of one configured backend and no discovery: that
// backend takes every request, with no catalogue and no failover, as its
// pool alone would.
func (f *Fleet) Single() bool { return f.single }

// Backends lists the backends taking requests now: the configured ones in
// configuration order, then the discovered ones by group and name. The
// slice is shared and must not be modified.
func (f *Fleet) Backends() []*Backend { return f.cur.Load().list }

// First is the first backend taking requests (nil if none): the one a
// single-backend gateway has, and the one whose pool the seed fields of
// /admin/resources/pools show.
func (f *Fleet) First() *Backend {
	if l := f.cur.Load().list; len(l) > 0 {
		return l[0]
	}
	return nil
}

// Lookup finds a backend taking requests by name (X-Vega-Backend); nil if
// none.
func (f *Fleet) Lookup(name string) *Backend { return f.cur.Load().byName[name] }

// Bit is the backend's bit in a Request's Tried set.
func (b *Backend) Bit() uint64 { return 1 << uint(b.slot) }

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
	for _, b := range f.cur.Load().list {
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
