package fleet

import (
	"slices"
	"time"

	"github.com/vega-gateway/vega-gateway/pool"
)

// BackendSnapshot is one backend's routing state, for the admin listener
// and metrics.
type BackendSnapshot struct {
	Name   string
	Weight int
	Pool   pool.Snapshot
	// Outstanding are requests sent there and not finished.
	Outstanding int64
	// OutstandingByModel are those by model (models with none left out).
	OutstandingByModel map[string]int64
	// Installed and Loaded are the catalogue; CatalogueKnown is false until
	// the first fetch succeeded.
	Installed      []string
	Loaded         []string
	CatalogueKnown bool
	CatalogueAt    time.Time
	CatalogueError string
	Breaker        BreakerState
	// Picks counts choices of this backend by reason.
	Picks map[string]int64
	// ColdLoads: answers whose load_duration said the model was just
	// loaded; Busy: Ollama's busy 503s; Failures: attempts that failed.
	ColdLoads int64
	Busy      int64
	Failures  int64
	// CatalogueRefreshes and CatalogueErrors count catalogue fetches.
	CatalogueRefreshes int64
	CatalogueErrors    int64
}

// Snapshot is the fleet's routing state.
type Snapshot struct {
	Policy   string
	Backends []BackendSnapshot
	// NoBackend counts requests that found no usable backend; ModelMissing
	// those answered 404 because no backend has the model.
	NoBackend    int64
	ModelMissing int64
	// Discovery are the upstreams found in DNS (none without discovery).
	Discovery []GroupSnapshot
}

// Snapshot reads every backend's state. It takes each catalogue view and
// breaker briefly; cheap enough for an admin poll or a scrape.
func (f *Fleet) Snapshot() Snapshot {
	s := Snapshot{Policy: f.cfg.Policy, NoBackend: f.noBackend.Load(), ModelMissing: f.modelMissing.Load()}
	for _, b := range f.cur.Load().list {
		s.Backends = append(s.Backends, b.Snapshot())
	}
	s.Discovery = f.groupSnapshots()
	return s
}

// Snapshot reads b's state.
func (b *Backend) Snapshot() BackendSnapshot {
	m := b.cat.cur.Load()
	bs := BackendSnapshot{
		Name: b.Name, Weight: b.Weight, Pool: b.Pool.Snapshot(), Outstanding: b.outstanding.Load(),
		OutstandingByModel: map[string]int64{}, Installed: sortedKeys(m.installed), Loaded: sortedKeys(m.loaded),
		CatalogueKnown: m.known, CatalogueAt: m.at, CatalogueError: m.err, Breaker: b.breaker.state(),
		Picks: map[string]int64{}, ColdLoads: b.coldLoads.Load(), Busy: b.busy.Load(), Failures: b.failures.Load(),
		CatalogueRefreshes: b.cat.refreshes.Load(), CatalogueErrors: b.cat.refreshErrors.Load(),
	}
	b.modelsMu.RLock()
	for name, c := range b.perModel {
		if n := c.Load(); n > 0 {
			if name == "" {
				name = "other"
			}
			bs.OutstandingByModel[name] += n
		}
	}
	b.modelsMu.RUnlock()
	for r := range numReasons {
		bs.Picks[r.String()] = b.picks[r].Load()
	}
	return bs
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func sortStrings(lists ...[]string) {
	for _, l := range lists {
		slices.Sort(l)
	}
}

// GroupSnapshot is one discovery group's state.
type GroupSnapshot struct {
	Name string
	// Backends take requests; Joining are probed before they do;
	// Draining are gone from DNS with requests still open. Names, sorted.
	Backends, Joining, Draining []string
	// Lookups and LookupFailures count lookups since start.
	Lookups, LookupFailures int64
	// LastLookup is when the last lookup ended; LastError its error ("" if
	// it succeeded).
	LastLookup time.Time
	LastError  string
}

func (f *Fleet) groupSnapshots() []GroupSnapshot {
	if len(f.groups) == 0 {
		return nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]GroupSnapshot, 0, len(f.groups))
	for _, g := range f.groups {
		s := GroupSnapshot{Name: g.Name, Backends: []string{}, Joining: []string{}, Draining: []string{},
			Lookups: g.lookups.Load(), LookupFailures: g.failures.Load()}
		if ns := g.lastLookup.Load(); ns != 0 {
			s.LastLookup = time.Unix(0, ns)
		}
		if e := g.lastErr.Load(); e != nil {
			s.LastError = *e
		}
		for _, b := range g.members {
			if b.state == stateMember {
				s.Backends = append(s.Backends, b.Name)
			} else {
				s.Joining = append(s.Joining, b.Name)
			}
		}
		for b := range g.draining {
			s.Draining = append(s.Draining, b.Name)
		}
		sortStrings(s.Backends, s.Joining, s.Draining)
		out = append(out, s)
	}
	return out
}
