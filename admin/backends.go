package admin

import (
	"maps"
	"time"

	"github.com/vega-gateway/vega-gateway/fleet"
)

// BackendView is one backend on /admin/resources/pools: its pool's fields
// and, when the server reads a fleet, its routing state beside them.
type BackendView struct {
	PoolView
	// *BackendRouting is inlined by encoding/json, and left out when nil
	// (a Pools source has no routing state).
	*BackendRouting
}

// BackendRouting is a backend's routing state: who it is, what it holds,
// how its breaker stands and why it was chosen.
type BackendRouting struct {
	Name        string          `json:"name"`
	URL         string          `json:"url"`
	Weight      int             `json:"weight"`
	Models      ModelsView      `json:"models"`
	Catalogue   CatalogueView   `json:"catalogue"`
	Breaker     BreakerView     `json:"breaker"`
	Outstanding OutstandingView `json:"outstanding"`
	// Picks counts choices of the backend by reason (route_reason).
	Picks map[string]int64 `json:"picks"`
	// ColdLoads: answers that said the model had just been loaded there.
	ColdLoads int64 `json:"cold_loads"`
	// Busy: Ollama's busy 503s from it.
	Busy int64 `json:"busy"`
	// Failures: attempts there that failed and count toward the breaker.
	Failures int64 `json:"failures"`
}

// ModelsView is a backend's catalogue: models installed (GET /api/tags)
// and loaded (GET /api/ps, corrected by answers), sorted.
type ModelsView struct {
	Installed []string `json:"installed"`
	Loaded    []string `json:"loaded"`
}

// CatalogueView says how fresh a backend's catalogue is. Until Known, any
// model may be there and requests are routed as if it were.
type CatalogueView struct {
	Known       bool     `json:"known"`
	RefreshedAt *string  `json:"refreshed_at"`
	AgeSeconds  *float64 `json:"age_seconds"`
	Error       string   `json:"error,omitempty"`
	Refreshes   int64    `json:"refreshes"`
	Errors      int64    `json:"errors"`
}

// BreakerView is a backend's circuit breaker.
type BreakerView struct {
	// State is "closed" (in rotation) or "open" (no requests until
	// OpenUntil, then a good probe closes it).
	State               string  `json:"state"`
	ConsecutiveFailures int     `json:"consecutive_failures"`
	OpenUntil           *string `json:"open_until"`
	Opens               int64   `json:"opens"`
}

// OutstandingView are requests sent to a backend and not finished.
type OutstandingView struct {
	Total   int64            `json:"total"`
	ByModel map[string]int64 `json:"by_model"`
}

// RoutingView is the fleet-wide part of /admin/resources/pools.
type RoutingView struct {
	Policy string `json:"policy"`
	// NoBackend: requests that found no usable backend (503 no_backend).
	NoBackend int64 `json:"no_backend"`
	// ModelMissing: requests answered 404 because no backend has the model.
	ModelMissing int64 `json:"model_missing"`
	// Discovery lists the upstreams found in DNS (left out without).
	Discovery []DiscoveryView `json:"discovery,omitempty"`
}

// DiscoveryView is one upstream found in DNS: its backends by state and
// its lookups.
type DiscoveryView struct {
	Name string `json:"name"`
	// Backends take requests; Joining are probed before they do; Draining
	// are gone from DNS and finish their open requests.
	Backends       []string `json:"backends"`
	Joining        []string `json:"joining"`
	Draining       []string `json:"draining"`
	Lookups        int64    `json:"lookups"`
	LookupFailures int64    `json:"lookup_failures"`
	LastLookup     *string  `json:"last_lookup"`
	LastError      string   `json:"last_error,omitempty"`
}

// NewBackendView converts a backend's snapshot to its JSON view; now dates
// the catalogue's age.
func NewBackendView(b fleet.BackendSnapshot, now time.Time) BackendView {
	r := &BackendRouting{
		Name: b.Name, URL: b.Pool.Upstream, Weight: b.Weight,
		Models: ModelsView{Installed: nonNil(b.Installed), Loaded: nonNil(b.Loaded)},
		Catalogue: CatalogueView{
			Known: b.CatalogueKnown, Error: b.CatalogueError,
			Refreshes: b.CatalogueRefreshes, Errors: b.CatalogueErrors,
		},
		Breaker: BreakerView{
			State: b.Breaker.State, ConsecutiveFailures: b.Breaker.ConsecutiveFailures, Opens: b.Breaker.Opens,
			OpenUntil: timestamp(b.Breaker.OpenUntil),
		},
		Outstanding: OutstandingView{Total: b.Outstanding, ByModel: maps.Clone(b.OutstandingByModel)},
		Picks:       maps.Clone(b.Picks),
		ColdLoads:   b.ColdLoads, Busy: b.Busy, Failures: b.Failures,
	}
	if r.Outstanding.ByModel == nil {
		r.Outstanding.ByModel = map[string]int64{}
	}
	if r.Picks == nil {
		r.Picks = map[string]int64{}
	}
	if !b.CatalogueAt.IsZero() {
		r.Catalogue.RefreshedAt = timestamp(b.CatalogueAt)
		age := max(now.Sub(b.CatalogueAt), 0).Seconds()
		r.Catalogue.AgeSeconds = &age
	}
	return BackendView{PoolView: NewPoolView(b.Pool), BackendRouting: r}
}

// fleetView is the response from a fleet snapshot.
func fleetView(s fleet.Snapshot, now time.Time) PoolsResponse {
	r := PoolsResponse{
		Pools:   make([]BackendView, 0, len(s.Backends)),
		Routing: &RoutingView{Policy: s.Policy, NoBackend: s.NoBackend, ModelMissing: s.ModelMissing},
	}
	for _, b := range s.Backends {
		r.Pools = append(r.Pools, NewBackendView(b, now))
	}
	for _, g := range s.Discovery {
		r.Routing.Discovery = append(r.Routing.Discovery, DiscoveryView{
			Name: g.Name, Backends: nonNil(g.Backends), Joining: nonNil(g.Joining), Draining: nonNil(g.Draining),
			Lookups: g.Lookups, LookupFailures: g.LookupFailures, LastLookup: timestamp(g.LastLookup), LastError: g.LastError,
		})
	}
	if len(r.Pools) > 0 {
		r.PoolView = r.Pools[0].PoolView
	}
	return r
}

func timestamp(t time.Time) *string {
	if t.IsZero() {
		return nil
	}
	s := t.UTC().Format(time.RFC3339Nano)
	return &s
}

// nonNil makes an empty list [] rather than null in JSON.
func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
