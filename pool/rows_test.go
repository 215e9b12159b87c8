package pool

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/vega-gateway/vega-gateway/ollamatest"
)

// TestHealthProbePanics is F-44 for the health goroutine: a probe that
// panics counts as a failed probe (three mark the upstream down), the
// prober keeps running, and good probes bring the upstream back; requests
// go through again afterwards.
func TestHealthProbePanics(t *testing.T) {
	fake, err := ollamatest.NewServer(ollamatest.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer fake.Close()
	p, err := New(UpstreamConfig{URL: fake.URL(), HealthInterval: 10 * time.Millisecond}, Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	var panicking atomic.Bool
	var probes atomic.Int64
	p.health.probeHook = func() {
		probes.Add(1)
		if panicking.Load() {
			panic("injected fault in the health probe")
		}
	}
	panicking.Store(true)
	var transitions atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.RunHealth(ctx, func(HealthChange) { transitions.Add(1) })
	}()
	defer func() { cancel(); <-done }()

	waitUntil(t, "marked down by panicking probes", func() bool { return p.Snapshot().Health.Down })
	h := p.Snapshot().Health
	if h.ConsecutiveFailures < DefaultUnhealthyAfter || !strings.Contains(h.LastError, "health probe panicked") || p.Ready() {
		t.Fatalf("health after panics: %+v", h)
	}
	if got := p.Stats().ProbePanics.Load(); got < DefaultUnhealthyAfter {
		t.Fatalf("ProbePanics = %d, want at least %d (vega_panics_total includes it)", got, DefaultUnhealthyAfter)
	}
	if _, _, err := p.Acquire(nil); err != ErrUnhealthy {
		t.Fatalf("Acquire while down: %v, want ErrUnhealthy", err)
	}
	// The prober survived: once probes stop panicking it recovers.
	panicking.Store(false)
	n := probes.Load()
	waitUntil(t, "healthy again", p.Ready)
	if probes.Load() < n+DefaultHealthyAfter {
		t.Fatalf("recovered after %d probes, want at least %d", probes.Load()-n, DefaultHealthyAfter)
	}
	if h := p.Snapshot().Health; h.Down || h.LastError != "" {
		t.Fatalf("health after recovery: %+v", h)
	}
	release, _, err := p.Acquire(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI("/api/tags")
	if _, err := p.Do(req, resp); err != nil || resp.StatusCode() != 200 {
		t.Fatalf("request after recovery: %v %d", err, resp.StatusCode())
	}
	_ = resp.CloseBodyStream()
	// first probe, down, up: transitions, not one line per probe
	if got := transitions.Load(); got != 3 {
		t.Fatalf("%d health transitions observed, want 3 (first probe, down, up)", got)
	}
}

// WaitUntil is waitUntil for the external tests (package pool_test).
var WaitUntil = waitUntil

// waitUntil polls cond every 5 ms for up to 3 s.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
