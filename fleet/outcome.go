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
			f.loadMean.add(loadDuration)
			// The load may have evicted another model: look again now.
			b.cat.requestRefresh()
		}
		if t.model != "" {
			// The time it held b but for waiting for a load: its queue
			// and its generation, what the next request can expect.
			b.svcMean.add(max(now.Sub(t.start)-loadDuration, 0))
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

// mean is an exponentially weighted mean of durations: the plain mean of
// the first eight samples, then α = 1/8, so the first few measurements
// count fully instead of being damped toward zero. Racing updates may lose
// a sample, which a mean can afford.
type mean struct {
	ns atomic.Int64 // the mean, in nanoseconds
	n  atomic.Int64 // samples folded in
}

func (m *mean) add(d time.Duration) {
	n := min(m.n.Add(1), 8)
	old := m.ns.Load()
	m.ns.Store(old + (int64(d)-old)/n)
}

func (m *mean) value() time.Duration { return time.Duration(m.ns.Load()) }

// loadEstimate is the mean observed cold load time (0 before any).
func (f *Fleet) loadEstimate() time.Duration { return f.loadMean.value() }

// serviceEstimate is the mean time a warm request holds b; before b has
// finished one, the mean over the backends that have (a backend that has
// just loaded a model takes the overflow of one already measured), and 0
// before any has.
func (b *Backend) serviceEstimate() time.Duration {
	if b.svcMean.n.Load() > 0 {
		return b.svcMean.value()
	}
	var sum time.Duration
	n := 0
	for _, o := range b.f.cur.Load().list {
		if o.svcMean.n.Load() > 0 {
			sum += o.svcMean.value()
			n++
		}
	}
	if n == 0 {
		return 0
	}
	return sum / time.Duration(n)
}

// Usable reports whether b may take a request now: its pool is open and not
// marked down by health probes, and its breaker is closed.
func (b *Backend) Usable() bool {
	return !b.breaker.open.Load() && !b.Pool.Down() && !b.Pool.Closed()
}
