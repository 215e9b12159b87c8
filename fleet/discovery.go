package fleet

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vega-gateway/vega-gateway/pool"
)

// DefaultDiscoveryRefresh is how often a group looks its name up when
// Group.Refresh is zero: Kubernetes' DNS answers for a headless Service
// follow its endpoints within seconds, and a new pod needs longer than
// that to load a model.
const DefaultDiscoveryRefresh = 10 * time.Second

// MinDiscoveryRefresh is the shortest Group.Refresh: a lookup per 100 ms is
// already more than a DNS server should get from every replica, and a
// duration written without a unit (refresh: 10) would be 10 ns.
const MinDiscoveryRefresh = 100 * time.Millisecond

// drainGrace is the least time a removed backend stays open, however idle:
// a request that chose it just before the removal (from the previous view)
// still finds its pool open.
const drainGrace = time.Second

// drainPoll is how often a draining backend's open requests are counted.
const drainPoll = 100 * time.Millisecond

// Group is an upstream whose backends are found at run time (an upstreams
// entry with discover: dns): Lookup runs every Refresh, and each Endpoint
// it returns is a backend. A new one takes requests after its first good
// health probe and catalogue fetch; one that is no longer returned takes
// no new request at once, and its pool closes once its open requests are
// done. A failed Lookup keeps the backends as they are.
type Group struct {
	// Name identifies the group in events, metrics and the admin page.
	// Required.
	Name string
	// Weight is every backend's weight. Default 1.
	Weight int
	// Refresh is the pause between lookups, at least MinDiscoveryRefresh.
	// Default DefaultDiscoveryRefresh.
	Refresh time.Duration
	// Lookup returns the backends as found now, or an error. Required.
	Lookup func(ctx context.Context) ([]Endpoint, error)
	// NewPool builds a new backend's pool for its base URL. It must start
	// nothing. Required.
	NewPool func(url string) (*pool.Pool, error)
	// Observe (may be nil) is told of every membership change and every
	// failed lookup, on the group's goroutine; it must not block.
	Observe func(Event)
}

// Endpoint is one backend a lookup found.
type Endpoint struct {
	// Name is the backend's name (unique in the fleet).
	Name string
	// URL is its base URL.
	URL string
}

// EventKind says what happened to a group.
type EventKind uint8

const (
	// EventFound: a new backend is probed before it joins.
	EventFound EventKind = iota
	// EventJoined: it answered its probes and takes requests.
	EventJoined
	// EventLeft: it is gone from the lookup; it takes no new request and
	// drains.
	EventLeft
	// EventReturned: a draining backend is found again and takes requests
	// again.
	EventReturned
	// EventClosed: a draining backend finished its requests (or a joining
	// one vanished); its pool is closed.
	EventClosed
	// EventLookupFailed: the lookup failed; the backends stay as they were.
	EventLookupFailed
	// EventRejected: a backend found could not be added (Err says why:
	// MaxBackends reached, its name or URL already used, a bad URL).
	EventRejected
)

var eventNames = [...]string{"found", "joined", "left", "returned", "closed", "lookup_failed", "rejected"}

// String is the kind as logged.
func (k EventKind) String() string {
	if int(k) < len(eventNames) {
		return eventNames[k]
	}
	return "unknown"
}

// Event is one change in a group, for the log.
type Event struct {
	Group string
	Kind  EventKind
	// Backend and URL name the backend (empty for a failed lookup).
	Backend, URL string
	// Backends is the number taking requests in the group after the event.
	Backends int
	// Lookup numbers the group's lookups (1 is the first): the one that
	// found, removed or failed, or the last one before a join or a close.
	Lookup int64
	Err    error
}

// ErrTooManyBackends: a discovered backend would exceed MaxBackends; it is
// left out until others go. Run more gateway replicas, each with fewer
// backends, or split the name.
var ErrTooManyBackends = fmt.Errorf("fleet: more than %d backends", MaxBackends)

// group is a Group with its live state.
type group struct {
	Group
	// lookups and failures count lookups and the failed ones.
	lookups, failures atomic.Int64
	lastErr           atomic.Pointer[string]
	lastLookup        atomic.Int64 // unix ns of the last lookup, failed or not
	// members are the backends found and not removed (joining or in the
	// view), by name; draining are the removed ones whose pools are still
	// open. Both under the fleet's mu.
	members  map[string]*Backend
	draining map[*Backend]bool
}

// addGroups validates and adds the groups; names must not clash with the
// configured backends'.
func (f *Fleet) addGroups(groups []Group, byName map[string]*Backend) error {
	seen := map[string]bool{}
	for i, g := range groups {
		switch {
		case g.Name == "":
			return fmt.Errorf("upstreams (discovery %d).name: must be set", i)
		case seen[g.Name]:
			return fmt.Errorf("upstreams (discovery %s).name: used twice", g.Name)
		case byName[g.Name] != nil:
			return fmt.Errorf("upstreams (discovery %s).name: also a backend's name", g.Name)
		case g.Lookup == nil || g.NewPool == nil:
			return fmt.Errorf("upstreams (discovery %s): no lookup or pool builder", g.Name)
		case g.Weight < 0:
			return fmt.Errorf("upstreams (discovery %s).weight: must be positive, got %d", g.Name, g.Weight)
		case g.Refresh < 0 || g.Refresh > 0 && g.Refresh < MinDiscoveryRefresh:
			return fmt.Errorf("upstreams (discovery %s).refresh: must be at least %s, got %s", g.Name, MinDiscoveryRefresh, g.Refresh)
		}
		seen[g.Name] = true
		if g.Weight == 0 {
			g.Weight = 1
		}
		if g.Refresh == 0 {
			g.Refresh = DefaultDiscoveryRefresh
		}
		f.groups = append(f.groups, &group{Group: g, members: map[string]*Backend{}, draining: map[*Backend]bool{}})
	}
	return nil
}

// runGroup looks g's name up every Refresh and applies the result until
// ctx is done. Backends it adds run their goroutines under wg and ctx.
func (f *Fleet) runGroup(ctx context.Context, g *group, wg *sync.WaitGroup, observe func(*Backend, pool.HealthChange)) {
	t := time.NewTicker(g.Refresh)
	defer t.Stop()
	for {
		eps, err := g.Lookup(ctx)
		if ctx.Err() != nil {
			return
		}
		g.lookups.Add(1)
		g.lastLookup.Store(time.Now().UnixNano())
		if err != nil {
			// One event per failed lookup: at most one log line per
			// refresh, however long the resolver stays away.
			g.failures.Add(1)
			msg := err.Error()
			g.lastErr.Store(&msg)
			g.event(Event{Kind: EventLookupFailed, Err: err, Backends: f.groupSize(g)})
		} else {
			g.lastErr.Store(nil)
			f.apply(ctx, g, eps, wg, observe)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (g *group) event(e Event) {
	if g.Observe != nil {
		e.Group = g.Name
		if e.Lookup == 0 {
			e.Lookup = g.lookups.Load()
		}
		g.Observe(e)
	}
}

// groupSize counts g's backends taking requests.
func (f *Fleet) groupSize(g *group) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return g.size()
}

func (g *group) size() int {
	n := 0
	for _, b := range g.members {
		if b.state == stateMember {
			n++
		}
	}
	return n
}

// apply makes g's backends the endpoints found: the vanished leave the
// view at once and drain, the new are probed before they join. Events are
// sent once f.mu is released.
func (f *Fleet) apply(ctx context.Context, g *group, eps []Endpoint, wg *sync.WaitGroup, observe func(*Backend, pool.HealthChange)) {
	var events []Event
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return
	}
	want := make(map[string]string, len(eps))
	for _, e := range eps {
		want[e.Name] = e.URL
	}
	changed := false
	now := time.Now()
	for name, b := range g.members {
		if u, ok := want[name]; ok && u == b.Pool.URL() {
			continue
		}
		delete(g.members, name)
		if b.state == stateJoining {
			// It never took a request: close it now.
			f.closeLocked(b)
			events = append(events, Event{Kind: EventClosed, Backend: b.Name, URL: b.Pool.URL()})
			continue
		}
		changed = true
		b.state, b.removedAt = stateDraining, now
		g.draining[b] = true
		events = append(events, Event{Kind: EventLeft, Backend: b.Name, URL: b.Pool.URL()})
		wg.Add(1)
		go func() {
			defer wg.Done()
			f.drain(ctx, g, b)
		}()
	}
	for _, e := range eps {
		if g.members[e.Name] != nil {
			continue
		}
		if b := g.drainingAt(e); b != nil {
			// Back before its pool closed: it is the same server.
			delete(g.draining, b)
			b.state = stateMember
			g.members[e.Name] = b
			changed = true
			events = append(events, Event{Kind: EventReturned, Backend: b.Name, URL: e.URL})
			continue
		}
		b, err := f.addLocked(g, e)
		if err != nil {
			events = append(events, Event{Kind: EventRejected, Backend: e.Name, URL: e.URL, Err: err})
			continue
		}
		events = append(events, Event{Kind: EventFound, Backend: b.Name, URL: e.URL})
		f.startLocked(ctx, b, wg, observe)
	}
	if changed {
		f.publish()
	}
	n := g.size()
	f.mu.Unlock()
	for _, e := range events {
		e.Backends = n
		g.event(e)
	}
}

// drainingAt is g's draining backend named e.Name at e.URL, if any.
func (g *group) drainingAt(e Endpoint) *Backend {
	for b := range g.draining {
		if b.Name == e.Name && b.Pool.URL() == e.URL {
			return b
		}
	}
	return nil
}

// addLocked builds the backend for a new endpoint, joining. Callers hold
// f.mu.
func (f *Fleet) addLocked(g *group, e Endpoint) (*Backend, error) {
	if err := f.clashLocked(e); err != nil {
		return nil, err
	}
	slot := f.allocSlot()
	if slot < 0 {
		return nil, ErrTooManyBackends
	}
	p, err := g.NewPool(e.URL)
	if err != nil {
		f.used &^= 1 << uint(slot)
		return nil, err
	}
	b := f.newBackend(e.Name, g.Weight, p, slot)
	b.grp, b.state = g, stateJoining
	g.members[e.Name] = b
	return b, nil
}

// clashLocked: another backend, in any group or configured, has e's name
// or URL (a URL is a pool's metrics label, a name a backend's).
func (f *Fleet) clashLocked(e Endpoint) error {
	check := func(b *Backend) error {
		switch {
		case b.Name == e.Name:
			return fmt.Errorf("name %q is already a backend's", e.Name)
		case b.Pool.URL() == e.URL:
			return fmt.Errorf("url %s is already backend %q's", e.URL, b.Name)
		}
		return nil
	}
	for _, b := range f.static {
		if err := check(b); err != nil {
			return err
		}
	}
	for _, g := range f.groups {
		for _, b := range g.members {
			if err := check(b); err != nil {
				return err
			}
		}
		for b := range g.draining {
			if b.Pool.URL() == e.URL {
				return check(b)
			}
		}
	}
	return nil
}

// startLocked runs b's health prober and catalogue refresher under a
// context of its own (cancelled when its pool closes); each tells maybeJoin
// how it went. Callers hold f.mu.
func (f *Fleet) startLocked(ctx context.Context, b *Backend, wg *sync.WaitGroup, observe func(*Backend, pool.HealthChange)) {
	bctx, cancel := context.WithCancel(ctx)
	b.stop = cancel
	wg.Add(2)
	go func() {
		defer wg.Done()
		b.Pool.RunHealth(bctx, func(ch pool.HealthChange) {
			if observe != nil {
				observe(b, ch)
			}
			f.maybeJoin(b)
		})
	}()
	go func() {
		defer wg.Done()
		b.runCatalogue(bctx, func(bool) { f.maybeJoin(b) })
	}()
}

// maybeJoin puts a joining backend in the view once its health probe and
// its catalogue fetch have both answered.
func (f *Fleet) maybeJoin(b *Backend) {
	if !b.Pool.Ready() || !b.cat.cur.Load().known {
		return
	}
	f.mu.Lock()
	if b.state != stateJoining || f.closed {
		f.mu.Unlock()
		return
	}
	b.state = stateMember
	f.publish()
	n := b.grp.size()
	f.mu.Unlock()
	b.grp.event(Event{Kind: EventJoined, Backend: b.Name, URL: b.Pool.URL(), Backends: n})
}

// drain waits until the removed backend b has no request open or queued
// (and drainGrace has passed), then closes its pool and frees its slot.
// It returns then, when b is found again, or when ctx is done.
func (f *Fleet) drain(ctx context.Context, g *group, b *Backend) {
	t := time.NewTicker(drainPoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		st := b.Pool.Stats()
		idle := st.InFlight.Load() == 0 && st.Waiting.Load() == 0 && b.outstanding.Load() == 0
		f.mu.Lock()
		if b.state != stateDraining {
			f.mu.Unlock()
			return
		}
		if !idle || time.Since(b.removedAt) < drainGrace {
			f.mu.Unlock()
			continue
		}
		delete(g.draining, b)
		f.closeLocked(b)
		f.mu.Unlock()
		g.event(Event{Kind: EventClosed, Backend: b.Name, URL: b.Pool.URL(), Backends: f.groupSize(g)})
		return
	}
}

// closeLocked stops b's prober and refresher, closes its pool and frees
// its slot. Callers hold f.mu.
func (f *Fleet) closeLocked(b *Backend) {
	if b.state == stateDraining {
		// It served: its counts stay in the fleet's totals (Departed).
		st := b.Pool.Stats()
		f.closedDisconnects.Add(st.ClientDisconnects.Load())
		f.closedErrors.Add(st.Errors.Load())
	}
	b.state = stateClosed
	if b.stop != nil {
		b.stop()
	}
	b.Pool.Close()
	f.freeSlot(b)
}

// Departed is what the backends no longer taking requests counted —
// draining ones and those whose pools closed — of client disconnects and
// upstream errors. Fleet-wide totals add it to the current backends', so
// a counter never goes down when discovery removes a backend.
func (f *Fleet) Departed() (clientDisconnects, errors int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	clientDisconnects, errors = f.closedDisconnects.Load(), f.closedErrors.Load()
	for _, g := range f.groups {
		for b := range g.draining {
			st := b.Pool.Stats()
			clientDisconnects += st.ClientDisconnects.Load()
			errors += st.Errors.Load()
		}
	}
	return clientDisconnects, errors
}
