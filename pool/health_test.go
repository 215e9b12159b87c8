package pool_test

import (
	"context"
	"testing"
	"time"

	"github.com/vega-gateway/vega-gateway/ollamatest"
	"github.com/vega-gateway/vega-gateway/pool"
)

func startFake(t *testing.T) *ollamatest.Server {
	t.Helper()
	fake, err := ollamatest.NewServer(ollamatest.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fake.Close() })
	return fake
}

func runHealth(t *testing.T, p *pool.Pool) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); p.RunHealth(ctx, nil) }()
	t.Cleanup(func() { cancel(); <-done })
}

// TestHealthProbeHangs (F-29): a probe that hangs fails at the probe
// timeout; probes never overlap, and the upstream is marked down.
func TestHealthProbeHangs(t *testing.T) {
	fake := startFake(t)
	if err := fake.SetDefaultFault("slow_version=2s"); err != nil {
		t.Fatal(err)
	}
	p, err := pool.New(pool.UpstreamConfig{URL: fake.URL(), HealthInterval: 20 * time.Millisecond, HealthTimeout: 100 * time.Millisecond}, pool.Config{})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	runHealth(t, p)
	pool.WaitUntil(t, "marked down", func() bool { return p.Snapshot().Health.Down })
	if s := p.Snapshot().Health; s.Healthy || s.ConsecutiveFailures < 3 {
		t.Fatalf("health %+v", s)
	}
	// Probes never overlap: each waits out the 100 ms timeout of the one
	// before, so at most one starts per 100 ms (every 20 ms if they
	// overlapped). Counted from the probes sent, not the fake's in-flight
	// peak: the fake may notice an abandoned probe only after the next one
	// has arrived.
	time.Sleep(300 * time.Millisecond)
	probes := 0
	for _, r := range fake.Requests() {
		if r.Path == "/api/version" {
			probes++
		}
	}
	if most := int(time.Since(start)/(100*time.Millisecond)) + 1; probes < 3 || probes > most {
		t.Fatalf("%d probes in %v; at most %d if they never overlap", probes, time.Since(start), most)
	}
}

// TestHealthIgnoresSaturatedPool (F-30): a pool full of requests does not
// fail the health check, which has its own client and connection.
func TestHealthIgnoresSaturatedPool(t *testing.T) {
	fake := startFake(t)
	p, err := pool.New(pool.UpstreamConfig{URL: fake.URL(), HealthInterval: 20 * time.Millisecond}, pool.Config{MaxConnections: 1, MaxWait: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	release, _, err := p.Acquire(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	if _, _, err := p.Acquire(nil); err == nil {
		t.Fatal("pool not saturated")
	}
	runHealth(t, p)
	pool.WaitUntil(t, "ready", p.Ready)
	time.Sleep(100 * time.Millisecond) // several more probes
	if s := p.Snapshot(); !s.Health.Healthy || s.RequestsMade != 0 {
		t.Fatalf("health probes counted in the pool or failing: %+v", s)
	}
}
