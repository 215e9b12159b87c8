package admin

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/valyala/fasthttp"

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
	s, err := New(Config{Listen: listen}, src, zerolog.Nop())
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
