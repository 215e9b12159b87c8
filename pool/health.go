package pool

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
)

// HealthSnapshot is the prober's view of the upstream.
type HealthSnapshot struct {
	// Probed is true once at least one probe has finished.
	Probed bool
	// Healthy is true once a probe succeeded, until UnhealthyAfter probes in
	// a row fail; then it needs HealthyAfter good probes to come back.
	Healthy bool
	// Down is true when requests fail fast: UnhealthyAfter probes in a row
	// failed. Never true before the first probe.
	Down                bool
	ConsecutiveFailures int
	LastCheck           time.Time
	LastLatency         time.Duration
	LastError           string
}

// HealthChange is passed to RunHealth's observer on each transition.
type HealthChange struct {
	Healthy bool
	Down    bool
	Err     error
}

type health struct {
	up UpstreamConfig
	mu sync.Mutex
	s  HealthSnapshot
	// goodRun counts consecutive successes while not healthy.
	goodRun int
	// down mirrors s.Down for the request path without the mutex.
	down atomic.Bool
	// probeHook, when set (tests only, before RunHealth), runs at the start
	// of every probe, so a test can make a probe panic.
	probeHook func()
}

func (h *health) init(up UpstreamConfig) { h.up = up }

func (h *health) failFast() bool { return h.down.Load() }

func (h *health) snapshot() HealthSnapshot {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.s
}

// record applies one probe result and reports whether the state changed.
func (h *health) record(err error, latency time.Duration, at time.Time) (HealthChange, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	before := h.s
	h.s.Probed = true
	h.s.LastCheck = at
	h.s.LastLatency = latency
	if err == nil {
		h.s.LastError = ""
		h.s.ConsecutiveFailures = 0
		h.goodRun++
		// The first success ever makes the upstream ready at once; after an
		// outage, HealthyAfter successes are needed (damps flapping).
		if !h.s.Healthy && (!before.Probed || !before.Down || h.goodRun >= h.up.HealthyAfter) {
			h.s.Healthy, h.s.Down = true, false
		}
	} else {
		h.s.LastError = err.Error()
		h.s.ConsecutiveFailures++
		h.goodRun = 0
		if h.s.ConsecutiveFailures >= h.up.UnhealthyAfter {
			h.s.Healthy, h.s.Down = false, true
		}
	}
	h.down.Store(h.s.Down)
	changed := before.Healthy != h.s.Healthy || before.Down != h.s.Down || !before.Probed
	return HealthChange{Healthy: h.s.Healthy, Down: h.s.Down, Err: err}, changed
}

// Ready reports whether the upstream has answered a health probe and is not
// marked down: what /readyz shows.
func (p *Pool) Ready() bool {
	s := p.health.snapshot()
	return s.Healthy
}

// RunHealth probes the upstream (GET /api/version) at once and then every
// health_interval, on its own client, so a pool full of long streams cannot
// fail it and its connections are not counted in the pool. At most one probe
// is in flight. observe (may be nil) is called on every state transition and
// after the first probe. It returns when ctx is done.
func (p *Pool) RunHealth(ctx context.Context, observe func(HealthChange)) {
	client := &fasthttp.HostClient{
		Addr:                      p.target.addr,
		IsTLS:                     p.target.isTLS,
		MaxConns:                  1,
		NoDefaultUserAgentHeader:  true,
		SecureErrorLogMessage:     true,
		MaxIdemponentCallAttempts: 1,
	}
	defer client.CloseIdleConnections()
	t := time.NewTicker(p.up.HealthInterval)
	defer t.Stop()
	for {
		start := time.Now()
		err := p.safeProbe(client)
		if ch, changed := p.health.record(err, time.Since(start), start); changed && observe != nil {
			observe(ch)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// safeProbe runs one probe; a panic in it counts as a failed probe rather
// than ending the prober (and so readiness) for the life of the process.
func (p *Pool) safeProbe(client *fasthttp.HostClient) (err error) {
	defer func() {
		if r := recover(); r != nil {
			p.stats.ProbePanics.Add(1)
			err = fmt.Errorf("health probe panicked: %v", r)
		}
	}()
	if p.health.probeHook != nil {
		p.health.probeHook()
	}
	return p.probe(client)
}

func (p *Pool) probe(client *fasthttp.HostClient) error {
	req := fasthttp.AcquireRequest()
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI("/api/version")
	req.URI().SetSchemeBytes(schemeOf(p.target.isTLS))
	req.URI().SetHost(p.target.host)
	req.Header.SetHost(p.target.host)
	req.Header.SetMethod(fasthttp.MethodGet)
	if err := client.DoTimeout(req, resp, p.up.HealthTimeout); err != nil {
		return fmt.Errorf("health probe: %w", err)
	}
	if resp.StatusCode() != fasthttp.StatusOK {
		return fmt.Errorf("health probe: status %d", resp.StatusCode())
	}
	return nil
}

// Down reports whether health probes have marked the upstream down
// (requests fail fast with ErrUnhealthy). A lock-free read, for routing.
func (p *Pool) Down() bool { return p.health.failFast() }
