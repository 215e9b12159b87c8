package metrics

import (
	"fmt"
	"strings"
	"testing"

	"github.com/vega-gateway/vega-gateway/fleet"
	"github.com/vega-gateway/vega-gateway/pool"
)

// testFleet is two backends on ports nothing listens on; nothing runs, so
// their catalogues are unknown and both are usable.
func testFleet(t *testing.T) *fleet.Fleet {
	t.Helper()
	var members []fleet.Member
	for i, name := range []string{"gpu-a", "gpu-b"} {
		p, err := pool.New(pool.UpstreamConfig{URL: fmt.Sprintf("http://127.0.0.1:%d", 1+i)}, pool.Config{MaxConnections: 2 + i})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p.Close)
		members = append(members, fleet.Member{Name: name, Pool: p})
	}
	f, err := fleet.New(fleet.Config{}, members)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func TestFleetSeries(t *testing.T) {
	f := testFleet(t)
	snaps := func() []pool.Snapshot {
		var out []pool.Snapshot
		for _, b := range f.Backends() {
			out = append(out, b.Pool.Snapshot())
		}
		return out
	}
	m, err := New(Config{}, "test", snaps)
	if err != nil {
		t.Fatal(err)
	}
	m.RegisterFleet(f.Snapshot)

	b, reason, err := f.Pick(fleet.Request{Model: "llama3.2", NeedModel: true})
	if err != nil {
		t.Fatal(err)
	}
	ticket := b.Start("llama3.2")
	defer ticket.End(fleet.Neutral, 0)
	other := "gpu-a"
	if b.Name == other {
		other = "gpu-b"
	}
	body := scrape(t, m)
	for _, want := range []string{
		fmt.Sprintf(`vega_backend_outstanding_requests{backend=%q} 1`, b.Name),
		fmt.Sprintf(`vega_backend_outstanding_requests{backend=%q} 0`, other),
		fmt.Sprintf(`vega_backend_picks_total{backend=%q,reason=%q} 1`, b.Name, reason),
		fmt.Sprintf(`vega_backend_picks_total{backend=%q,reason="pinned"} 0`, other),
		`vega_backend_breaker_open{backend="gpu-a"} 0`, `vega_backend_breaker_opens_total{backend="gpu-b"} 0`,
		`vega_backend_cold_loads_total{backend="gpu-a"} 0`, `vega_backend_busy_total{backend="gpu-a"} 0`,
		`vega_backend_failures_total{backend="gpu-b"} 0`, `vega_backend_models_loaded{backend="gpu-a"}`,
		`vega_backend_models_installed{backend="gpu-b"} 0`, `vega_backend_catalogue_refresh_errors_total{backend="gpu-a"} 0`,
		"vega_routing_no_backend_total 0", "vega_routing_model_missing_total 0",
		// The pool series keep one upstream label per backend's pool.
		`vega_pool_max_connections{upstream="http://127.0.0.1:1"} 2`, `vega_pool_max_connections{upstream="http://127.0.0.1:2"} 3`,
		`vega_upstream_healthy{upstream="http://127.0.0.1:2"} 0`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("scrape lacks %q", want)
		}
	}
	// Bounded: each backend has one picks series per reason, whatever the traffic.
	if got, want := strings.Count(body, "vega_backend_picks_total{"), 2*len(fleet.Reasons()); got != want {
		t.Errorf("%d picks series, want %d (backends × reasons)", got, want)
	}
}

// TestFleetSeriesFailures: an attempt that fails counts on its backend, and
// a pick with every backend tried counts as no_backend.
func TestFleetSeriesFailures(t *testing.T) {
	f := testFleet(t)
	m := newTest(t, Config{})
	m.RegisterFleet(f.Snapshot)
	b := f.Lookup("gpu-b")
	b.Start("").End(fleet.Failure, 0)
	b.Start("").End(fleet.Busy, 0)
	if _, _, err := f.Pick(fleet.Request{Tried: f.Lookup("gpu-a").Bit() | b.Bit()}); err == nil {
		t.Fatal("Pick with every backend tried succeeded")
	}
	body := scrape(t, m)
	for _, want := range []string{
		`vega_backend_failures_total{backend="gpu-b"} 1`, `vega_backend_busy_total{backend="gpu-b"} 1`,
		`vega_backend_failures_total{backend="gpu-a"} 0`, "vega_routing_no_backend_total 1",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("scrape lacks %q", want)
		}
	}
}
