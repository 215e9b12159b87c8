package fleet

import (
	"sync/atomic"
	"time"
)

// Result is how an attempt on a backend went, as far as routing cares.
type Result uint8

const (
	// Neutral says nothing of the backend: a client error (4xx), a client
	// that left, a request the gateway itself refused.
	Neutral Result = iota
	// Success: the backend answered (2xx, 3xx).
	Success
	// Failure: connect refused or timed out, reset, no first byte, or a
	// 5xx other than busy. Counts toward the circuit breaker.
	Failure
	// Busy: Ollama's 503 "server busy" — its queue is full; the request did
	// no work there.
	Busy
	// NotInstalled: Ollama's 404 "model not found".
	NotInstalled
)

// busyFor is how long a backend that answered "server busy" is a last
// resort: about one short generation, so its queue can drain.
const busyFor = time.Second

// End finishes the ticket's request: it is no longer outstanding, and its
// result updates the breaker and the catalogue. loadDuration is Ollama's
// load_duration from the final chunk (0 if none). Call End exactly once.
func (t Ticket) End(r Result, loadDuration time.Duration) {
	b := t.b
	if b == nil {
		return
	}
	t.c.Add(-1)
	b.outstanding.Add(-1)
	f := b.f
	now := time.Now()
	switch r {
	case Success:
		b.breaker.success()
		if t.model != "" {
			b.cat.noteLoaded(t.model)
		}
		if loadDuration > f.cfg.ColdLoadThreshold {
			b.coldLoads.Add(1)
			ewma(&f.loadEWMA, loadDuration)
			// The load may have evicted another model: look again now.
			b.cat.requestRefresh()
		} else if t.model != "" {
			ewma(&b.svcEWMA, now.Sub(t.start))
		}
	case Failure:
		b.failures.Add(1)
		b.breaker.failure(&f.cfg, now)
	case Busy:
		b.busy.Add(1)
		b.busyUntil.Store(now.Add(busyFor).UnixNano())
	case NotInstalled:
		if t.model != "" {
			b.cat.noteMissing(t.model)
		}
	}
}

// ewma folds d into an exponentially weighted mean (α = 1/8) kept as
// nanoseconds in v; racing updates may lose one sample, which a mean can
// afford.
func ewma(v *atomic.Int64, d time.Duration) {
	old := v.Load()
	if old == 0 {
		v.Store(int64(d))
		return
	}
	v.Store(old + (int64(d)-old)/8)
}

// loadEstimate is the mean observed cold load time (0 before any).
func (f *Fleet) loadEstimate() time.Duration { return time.Duration(f.loadEWMA.Load()) }

// serviceEstimate is the mean time a warm request holds b (0 before any).
func (b *Backend) serviceEstimate() time.Duration { return time.Duration(b.svcEWMA.Load()) }

// Usable reports whether b may take a request now: its pool is open and not
// marked down by health probes, and its breaker is closed.
func (b *Backend) Usable() bool {
	return !b.breaker.open.Load() && !b.Pool.Down() && !b.Pool.Closed()
}
