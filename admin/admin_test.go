package admin

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/valyala/fasthttp"

	"github.com/vega-gateway/vega-gateway/fleet"
	"github.com/vega-gateway/vega-gateway/pool"
)

const testKey = "s3cret"

func fakeSnapshot() pool.Snapshot {
	return pool.Snapshot{
		Upstream: "http://127.0.0.1:11434", MaxConnections: 8, ConnectionsOpen: 3, ConnectionsActive: 2, ConnectionsIdle: 1,
		RequestsInFlight: 2, RequestsWaiting: 1, ClientsCreated: 1, RequestsMade: 40, ConnectionsOpened: 5,
		ConnectionsClosed: 2, WaitTimeouts: 4, Errors: 6, ClientDisconnects: 7,
		Health: pool.HealthSnapshot{Probed: true, Healthy: true, LastCheck: time.Unix(1700000000, 0)},
		Config: pool.Config{MaxConnections: 8, MaxWait: time.Second},
	}
}

// startAdmin serves an admin server configured for listen on a loopback
// port (listen decides only the Host check) and returns its base URL.
func startAdmin(t *testing.T, listen string, src Sources) string {
	t.Helper()
	return startAdminWith(t, Config{Listen: listen}, src)
}

// startAdminWith is startAdmin with the whole config.
func startAdminWith(t *testing.T, cfg Config, src Sources) string {
	t.Helper()
	s, err := New(cfg, src, zerolog.Nop())
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = s.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = s.Shutdown(ctx)
		select {
		case <-done:
		case <-time.After(2 * time.Second):
			t.Error("admin server did not stop")
		}
	})
	return "http://" + ln.Addr().String()
}

func fakeSources(ready *atomic.Bool) Sources {
	return Sources{
		Pools: func() []pool.Snapshot { return []pool.Snapshot{fakeSnapshot()} },
		Ready: func() bool { return ready.Load() },
		Authorize: func(ctx *fasthttp.RequestCtx) bool {
			return string(ctx.Request.Header.Peek("X-API-Key")) == testKey
		},
		Stats: func() any { return map[string]any{"uptime_seconds": 1.5, "version": "test"} },
		Metrics: func(ctx *fasthttp.RequestCtx) {
			ctx.SetContentType("text/plain; version=0.0.4")
			ctx.SetBodyString("# TYPE vega_build_info gauge\nvega_build_info 1\n")
		},
	}
}

type response struct {
	status int
	header http.Header
	body   []byte
}

func get(t *testing.T, method, url, host string, hdr map[string]string) response {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if host != "" {
		req.Host = host
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response{resp.StatusCode, resp.Header, b}
}

func TestRoutes(t *testing.T) {
	var ready atomic.Bool
	ready.Store(true)
	base := startAdmin(t, "127.0.0.1:0", fakeSources(&ready))
	key := map[string]string{"X-API-Key": testKey}
	tests := []struct {
		name       string
		method     string
		path       string
		host       string
		hdr        map[string]string
		ready      bool
		wantStatus int
		wantBody   string // substring
	}{
		{"healthz needs no key", "GET", "/healthz", "", nil, true, 200, `"ok"`},
		{"readyz ready", "GET", "/readyz", "", nil, true, 200, `"ready"`},
		{"readyz not ready", "GET", "/readyz", "", nil, false, 503, `"not_ready"`},
		{"pools without key", "GET", "/admin/resources/pools", "", nil, true, 401, `"unauthorized"`},
		{"pools wrong key", "GET", "/admin/resources/pools", "", map[string]string{"X-API-Key": "nope"}, true, 401, `"unauthorized"`},
		{"pools with key", "GET", "/admin/resources/pools", "", key, true, 200, `"upstream"`},
		{"stats without key", "GET", "/admin/resources/stats", "", nil, true, 401, `"unauthorized"`},
		{"stats with key", "GET", "/admin/resources/stats", "", key, true, 200, `"uptime_seconds"`},
		{"metrics without key", "GET", "/metrics", "", nil, true, 401, `"unauthorized"`},
		{"metrics with key", "GET", "/metrics", "", key, true, 200, "vega_build_info 1"},
		{"post refused", "POST", "/admin/resources/pools", "", key, true, 405, `"method_not_allowed"`},
		{"unknown route", "GET", "/admin/nope", "", key, true, 404, `"not_found"`},
		{"foreign host", "GET", "/admin/resources/pools", "evil.example", key, true, 403, `"host_not_allowed"`},
		{"foreign host on probe", "GET", "/healthz", "rebind.example:8001", nil, true, 403, `"host_not_allowed"`},
		{"localhost host", "GET", "/admin/resources/pools", "localhost:8001", key, true, 200, `"upstream"`},
		{"ipv6 loopback host", "GET", "/healthz", "[::1]:8001", nil, true, 200, `"ok"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ready.Store(tt.ready)
			r := get(t, tt.method, base+tt.path, tt.host, tt.hdr)
			if r.status != tt.wantStatus {
				t.Fatalf("status = %d, want %d; body %s", r.status, tt.wantStatus, r.body)
			}
			if !strings.Contains(string(r.body), tt.wantBody) {
				t.Errorf("body = %s, want it to contain %s", r.body, tt.wantBody)
			}
			if got := r.header.Get("X-Correlation-ID"); got == "" {
				t.Errorf("X-Correlation-ID missing")
			}
			if tt.wantStatus == 401 && r.header.Get("WWW-Authenticate") == "" {
				t.Errorf("401 without WWW-Authenticate")
			}
		})
	}
}

func TestNonLoopbackListenAllowsAnyHost(t *testing.T) {
	var ready atomic.Bool
	ready.Store(true)
	base := startAdmin(t, "0.0.0.0:8001", fakeSources(&ready))
	r := get(t, "GET", base+"/admin/resources/pools", "gateway.internal:8001", map[string]string{"X-API-Key": testKey})
	if r.status != 200 {
		t.Fatalf("status = %d, want 200; body %s", r.status, r.body)
	}
}

func TestOptionalSourcesMissing(t *testing.T) {
	var ready atomic.Bool
	ready.Store(true)
	src := fakeSources(&ready)
	src.Stats, src.Metrics, src.Authorize = nil, nil, nil
	base := startAdmin(t, "127.0.0.1:0", src)
	for _, path := range []string{"/admin/resources/stats", "/metrics"} {
		if r := get(t, "GET", base+path, "", nil); r.status != 404 {
			t.Errorf("%s status = %d, want 404", path, r.status)
		}
	}
	if r := get(t, "GET", base+"/admin/resources/pools", "", nil); r.status != 200 {
		t.Errorf("open admin pools status = %d, want 200", r.status)
	}
}

func TestPoolsJSONFields(t *testing.T) {
	var ready atomic.Bool
	ready.Store(true)
	base := startAdmin(t, "127.0.0.1:0", fakeSources(&ready))
	r := get(t, "GET", base+"/admin/resources/pools", "", map[string]string{"X-API-Key": testKey})
	if r.status != 200 {
		t.Fatalf("status = %d, want 200", r.status)
	}
	var doc map[string]any
	if err := json.Unmarshal(r.body, &doc); err != nil {
		t.Fatalf("decode: %v; body %s", err, r.body)
	}
	want := map[string]any{
		"upstream": "http://127.0.0.1:11434", "max_connections": 8.0, "connections_in_pool": 3.0,
		"connections_active": 2.0, "connections_idle": 1.0, "requests_in_flight": 2.0,
		"requests_waiting": 1.0, "http_client_closed": false,
	}
	for k, v := range want {
		if got, ok := doc[k]; !ok || got != v {
			t.Errorf("%s = %v (present %v), want %v", k, got, ok, v)
		}
	}
	if _, ok := doc["pool_config"].(map[string]any); !ok {
		t.Errorf("pool_config = %v, want an object", doc["pool_config"])
	}
	usage, ok := doc["usage_stats"].(map[string]any)
	if !ok {
		t.Fatalf("usage_stats = %v, want an object", doc["usage_stats"])
	}
	wantUsage := map[string]float64{
		"clients_created": 1, "requests_made": 40, "connections_opened": 5, "connections_closed": 2,
		"wait_timeouts": 4, "errors": 6, "client_disconnects": 7,
	}
	for k, v := range wantUsage {
		if got, ok := usage[k]; !ok || got != v {
			t.Errorf("usage_stats.%s = %v (present %v), want %v", k, got, ok, v)
		}
	}
	pools, ok := doc["pools"].([]any)
	if !ok || len(pools) != 1 {
		t.Errorf("pools = %v, want one entry", doc["pools"])
	}
}

func TestPage(t *testing.T) {
	var ready atomic.Bool
	ready.Store(true)
	src := fakeSources(&ready)
	src.Authorize = nil // the page route sits behind Authorize in serve today
	base := startAdmin(t, "127.0.0.1:0", src)
	tests := []struct {
		path, wantType, wantBody string
	}{
		{"/admin/", "text/html", "<canvas id=\"c-pool\""},
		{"/admin", "text/html", "/admin/app.js"},
		{"/admin/app.js", "text/javascript", "/admin/resources/stats"},
		{"/admin/", "text/html", "<table id=\"fleet\""},
		{"/admin/app.js", "text/javascript", "renderFleet"},
		{"/admin/app.css", "text/css", ".tiles"},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			r := get(t, "GET", base+tt.path, "", nil)
			if r.status != 200 {
				t.Fatalf("status = %d, want 200", r.status)
			}
			if got := r.header.Get("Content-Type"); !strings.HasPrefix(got, tt.wantType) {
				t.Errorf("Content-Type = %q, want %s", got, tt.wantType)
			}
			if got := r.header.Get("Content-Security-Policy"); !strings.Contains(got, "script-src 'self'") {
				t.Errorf("Content-Security-Policy = %q, want script-src 'self'", got)
			}
			if !strings.Contains(string(r.body), tt.wantBody) {
				t.Errorf("body lacks %q", tt.wantBody)
			}
			for _, cdn := range []string{"https://", "http://"} {
				if strings.Contains(string(r.body), cdn) {
					t.Errorf("body references an external origin (%s)", cdn)
				}
			}
		})
	}
}

// fakeFleet is two backends: the first healthy and warm, the second with its
// breaker open and its catalogue failing.
func fakeFleet(now time.Time) fleet.Snapshot {
	second := fakeSnapshot()
	second.Upstream, second.MaxConnections, second.RequestsMade = "http://10.0.0.2:11434", 4, 9
	second.Health = pool.HealthSnapshot{Probed: true, Down: true, ConsecutiveFailures: 3}
	return fleet.Snapshot{
		Policy: fleet.PolicyModelAware, NoBackend: 2, ModelMissing: 5,
		Backends: []fleet.BackendSnapshot{
			{
				Name: "gpu-a", Weight: 2, Pool: fakeSnapshot(), Outstanding: 3,
				OutstandingByModel: map[string]int64{"llama3.2:latest": 3},
				Installed:          []string{"llama3.2:latest", "qwen2.5:0.5b"}, Loaded: []string{"llama3.2:latest"},
				CatalogueKnown: true, CatalogueAt: now.Add(-1500 * time.Millisecond), CatalogueRefreshes: 7,
				Breaker:   fleet.BreakerState{State: "closed"},
				Picks:     map[string]int64{"loaded": 4, "affinity": 6, "failover": 0},
				ColdLoads: 1, Busy: 2, Failures: 0,
			},
			{
				Name: "gpu-b", Weight: 1, Pool: second, CatalogueError: "GET /api/tags: dial tcp: connection refused",
				CatalogueErrors: 3, CatalogueRefreshes: 3,
				Breaker:  fleet.BreakerState{State: "open", ConsecutiveFailures: 5, OpenUntil: now.Add(time.Second), Opens: 1},
				Failures: 5,
			},
		},
	}
}

// TestPoolsFleetJSON: with a Fleet source the seed fields are the first
// backend's pool, every backend is listed with its routing state beside its
// pool numbers, and the fleet-wide counters are under routing.
func TestPoolsFleetJSON(t *testing.T) {
	var ready atomic.Bool
	ready.Store(true)
	src := fakeSources(&ready)
	now := time.Now()
	src.Pools = nil
	src.Fleet = func() fleet.Snapshot { return fakeFleet(now) }
	base := startAdmin(t, "127.0.0.1:0", src)
	r := get(t, "GET", base+"/admin/resources/pools", "", map[string]string{"X-API-Key": testKey})
	if r.status != 200 {
		t.Fatalf("status = %d, want 200; body %s", r.status, r.body)
	}
	type backend struct {
		PoolView
		Name        string          `json:"name"`
		URL         string          `json:"url"`
		Weight      int             `json:"weight"`
		Models      ModelsView      `json:"models"`
		Catalogue   CatalogueView   `json:"catalogue"`
		Breaker     BreakerView     `json:"breaker"`
		Outstanding OutstandingView `json:"outstanding"`
		Picks       map[string]int  `json:"picks"`
		ColdLoads   int             `json:"cold_loads"`
		Busy        int             `json:"busy"`
		Failures    int             `json:"failures"`
	}
	var doc struct {
		PoolView
		Pools   []backend    `json:"pools"`
		Routing *RoutingView `json:"routing"`
	}
	if err := json.Unmarshal(r.body, &doc); err != nil {
		t.Fatalf("decode: %v; body %s", err, r.body)
	}
	if doc.Upstream != "http://127.0.0.1:11434" || doc.MaxConnections != 8 || doc.UsageStats.RequestsMade != 40 {
		t.Errorf("seed fields = %+v, want the first backend's pool", doc.PoolView)
	}
	if len(doc.Pools) != 2 {
		t.Fatalf("pools = %d entries, want 2; body %s", len(doc.Pools), r.body)
	}
	a, b := doc.Pools[0], doc.Pools[1]
	for _, c := range []struct {
		name      string
		got, want any
	}{
		{"a.name", a.Name, "gpu-a"}, {"a.url", a.URL, "http://127.0.0.1:11434"}, {"a.weight", a.Weight, 2},
		{"a.upstream", a.Upstream, "http://127.0.0.1:11434"}, {"a.requests_made", a.UsageStats.RequestsMade, int64(40)},
		{"a.models.installed", strings.Join(a.Models.Installed, ","), "llama3.2:latest,qwen2.5:0.5b"},
		{"a.models.loaded", strings.Join(a.Models.Loaded, ","), "llama3.2:latest"},
		{"a.catalogue.known", a.Catalogue.Known, true}, {"a.catalogue.refreshes", a.Catalogue.Refreshes, int64(7)},
		{"a.catalogue.age_seconds", a.Catalogue.AgeSeconds != nil && *a.Catalogue.AgeSeconds >= 1.5, true},
		{"a.breaker.state", a.Breaker.State, "closed"}, {"a.breaker.open_until", a.Breaker.OpenUntil == nil, true},
		{"a.outstanding.total", a.Outstanding.Total, int64(3)}, {"a.outstanding.by_model", a.Outstanding.ByModel["llama3.2:latest"], int64(3)},
		{"a.picks.affinity", a.Picks["affinity"], 6}, {"a.picks.loaded", a.Picks["loaded"], 4},
		{"a.cold_loads", a.ColdLoads, 1}, {"a.busy", a.Busy, 2}, {"a.failures", a.Failures, 0},
		{"b.name", b.Name, "gpu-b"}, {"b.max_connections", b.MaxConnections, 4}, {"b.health.down", b.Health.Down, true},
		{"b.models.installed", len(b.Models.Installed), 0}, {"b.catalogue.known", b.Catalogue.Known, false},
		{"b.catalogue.refreshed_at", b.Catalogue.RefreshedAt == nil && b.Catalogue.AgeSeconds == nil, true},
		{"b.catalogue.error", strings.HasPrefix(b.Catalogue.Error, "GET /api/tags"), true}, {"b.catalogue.errors", b.Catalogue.Errors, int64(3)},
		{"b.breaker.state", b.Breaker.State, "open"}, {"b.breaker.consecutive_failures", b.Breaker.ConsecutiveFailures, 5},
		{"b.breaker.open_until", b.Breaker.OpenUntil != nil, true}, {"b.breaker.opens", b.Breaker.Opens, int64(1)},
		{"b.failures", b.Failures, 5},
		{"routing", doc.Routing != nil && reflect.DeepEqual(*doc.Routing, RoutingView{Policy: "model_aware", NoBackend: 2, ModelMissing: 5}), true},
	} {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
	// Empty lists and maps are [] and {}, never null: the page iterates them.
	var raw struct {
		Pools []map[string]json.RawMessage `json:"pools"`
	}
	_ = json.Unmarshal(r.body, &raw)
	if got := string(raw.Pools[1]["models"]); !strings.Contains(got, `"installed": []`) {
		t.Errorf("b.models = %s, want empty lists", got)
	}
	if got := string(raw.Pools[1]["picks"]); got != "{}" {
		t.Errorf("b.picks = %s, want {}", got)
	}
}

// TestPoolsWithoutFleet: a Pools source gives pool fields only, no routing.
func TestPoolsWithoutFleet(t *testing.T) {
	var ready atomic.Bool
	ready.Store(true)
	base := startAdmin(t, "127.0.0.1:0", fakeSources(&ready))
	r := get(t, "GET", base+"/admin/resources/pools", "", map[string]string{"X-API-Key": testKey})
	var doc struct {
		Routing *RoutingView     `json:"routing"`
		Pools   []map[string]any `json:"pools"`
	}
	if err := json.Unmarshal(r.body, &doc); err != nil || len(doc.Pools) != 1 {
		t.Fatalf("decode: %v; body %s", err, r.body)
	}
	if doc.Routing != nil {
		t.Errorf("routing = %+v without a fleet, want absent", doc.Routing)
	}
	for _, k := range []string{"name", "breaker", "catalogue"} {
		if _, ok := doc.Pools[0][k]; ok {
			t.Errorf("pools[0] has %q without a fleet", k)
		}
	}
	if doc.Pools[0]["upstream"] != "http://127.0.0.1:11434" {
		t.Errorf("pools[0].upstream = %v", doc.Pools[0]["upstream"])
	}
}

func TestNewNeedsSources(t *testing.T) {
	ready := func() bool { return true }
	for _, tc := range []struct {
		name string
		src  Sources
		ok   bool
	}{
		{"pools", Sources{Pools: func() []pool.Snapshot { return nil }, Ready: ready}, true},
		{"fleet", Sources{Fleet: func() fleet.Snapshot { return fleet.Snapshot{} }, Ready: ready}, true},
		{"neither", Sources{Ready: ready}, false},
		{"no ready", Sources{Fleet: func() fleet.Snapshot { return fleet.Snapshot{} }}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(Config{}, tc.src, zerolog.Nop())
			if (err == nil) != tc.ok {
				t.Fatalf("New: err = %v, want ok %v", err, tc.ok)
			}
		})
	}
}

// TestPoolsDiscoveryJSON: upstreams found in DNS are listed under
// routing.discovery with their backends by state and their lookups.
func TestPoolsDiscoveryJSON(t *testing.T) {
	var ready atomic.Bool
	ready.Store(true)
	src := fakeSources(&ready)
	now := time.Now()
	src.Pools = nil
	src.Fleet = func() fleet.Snapshot {
		s := fakeFleet(now)
		s.Discovery = []fleet.GroupSnapshot{{
			Name: "ollama", Backends: []string{"10.0.0.1:11434"}, Joining: []string{"10.0.0.3:11434"},
			Lookups: 12, LookupFailures: 2, LastLookup: now, LastError: "A/AAAA ollama: SERVFAIL",
		}}
		return s
	}
	base := startAdmin(t, "127.0.0.1:0", src)
	r := get(t, "GET", base+"/admin/resources/pools", "", map[string]string{"X-API-Key": testKey})
	var doc struct {
		Routing struct {
			Discovery []map[string]any `json:"discovery"`
		} `json:"routing"`
	}
	if err := json.Unmarshal(r.body, &doc); err != nil || len(doc.Routing.Discovery) != 1 {
		t.Fatalf("decode: %v; body %s", err, r.body)
	}
	d := doc.Routing.Discovery[0]
	want := map[string]any{
		"name": "ollama", "backends": []any{"10.0.0.1:11434"}, "joining": []any{"10.0.0.3:11434"}, "draining": []any{},
		"lookups": 12.0, "lookup_failures": 2.0, "last_lookup": now.UTC().Format(time.RFC3339Nano), "last_error": "A/AAAA ollama: SERVFAIL",
	}
	if !reflect.DeepEqual(d, want) {
		t.Errorf("discovery = %v, want %v", d, want)
	}
}
