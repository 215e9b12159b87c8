package pool

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func newTestPool(t *testing.T, cfg Config) *Pool {
	t.Helper()
	p, err := New(UpstreamConfig{URL: "http://127.0.0.1:1"}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestAcquireBound: cap 2, many callers; at most 2 hold a slot at once and
// the queue drains.
func TestAcquireBound(t *testing.T) {
	p := newTestPool(t, Config{MaxConnections: 2, MaxWait: 5 * time.Second})
	var holding, peak atomic.Int64
	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			release, _, err := p.Acquire(nil)
			if err != nil {
				t.Error(err)
				return
			}
			n := holding.Add(1)
			for {
				old := peak.Load()
				if n <= old || peak.CompareAndSwap(old, n) {
					break
				}
			}
			time.Sleep(time.Millisecond)
			holding.Add(-1)
			release()
		}()
	}
	wg.Wait()
	if peak.Load() > 2 {
		t.Fatalf("peak %d slots held, bound 2", peak.Load())
	}
	if s := p.Snapshot(); s.RequestsWaiting != 0 || s.RequestsInFlight != 0 {
		t.Fatalf("not drained: %+v", s)
	}
}

func TestAcquireRefusals(t *testing.T) {
	t.Run("queue full", func(t *testing.T) {
		p := newTestPool(t, Config{MaxConnections: 1, MaxQueue: 1, MaxWait: time.Second})
		waiting := holdAndQueue(t, p)
		start := time.Now()
		if _, _, err := p.Acquire(nil); !errors.Is(err, ErrQueueFull) || time.Since(start) > 50*time.Millisecond {
			t.Fatalf("err %v after %s", err, time.Since(start))
		}
		if err := <-waiting; !errors.Is(err, ErrPoolExhausted) {
			t.Fatalf("waiter: %v", err)
		}
		if s := p.Snapshot(); s.QueueRejections != 1 || s.WaitTimeouts != 1 {
			t.Fatalf("%+v", s)
		}
	})
	t.Run("close wakes waiters", func(t *testing.T) {
		p := newTestPool(t, Config{MaxConnections: 1, MaxWait: 10 * time.Second})
		waiting := holdAndQueue(t, p)
		p.Close()
		if err := <-waiting; !errors.Is(err, ErrClosed) {
			t.Fatalf("waiter: %v", err)
		}
		if _, _, err := p.Acquire(nil); !errors.Is(err, ErrClosed) {
			t.Fatalf("after close: %v", err)
		}
	})
}

// holdAndQueue takes p's only slot (released at the end of the test) and
// queues one more request; its result arrives on the returned channel.
func holdAndQueue(t *testing.T, p *Pool) <-chan error {
	t.Helper()
	release, _, err := p.Acquire(nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(release)
	waiting := make(chan error, 1)
	go func() { _, _, err := p.Acquire(nil); waiting <- err }()
	for p.Snapshot().RequestsWaiting != 1 {
		time.Sleep(time.Millisecond)
	}
	return waiting
}

// TestNoLostWakeup: a slot released just as a waiter queues is never
// missed (fasthttp's own waiter list has that bug, valyala/fasthttp#2391).
func TestNoLostWakeup(t *testing.T) {
	p := newTestPool(t, Config{MaxConnections: 1, MaxWait: 2 * time.Second})
	for i := 0; i < 1000; i++ {
		release, _, err := p.Acquire(nil)
		if err != nil {
			t.Fatal(err)
		}
		got := make(chan error, 1)
		go func() {
			r, _, err := p.Acquire(nil)
			if err == nil {
				r()
			}
			got <- err
		}()
		release()
		if err := <-got; err != nil {
			t.Fatalf("iteration %d: %v", i, err)
		}
	}
}

func TestHealthTransitions(t *testing.T) {
	var h health
	h.init(UpstreamConfig{UnhealthyAfter: 3, HealthyAfter: 2})
	fail := errors.New("down")
	steps := []struct {
		err               error
		healthy, down, ch bool
	}{
		{fail, false, false, true}, // first probe: not ready, not yet fail-fast
		{fail, false, false, false},
		{fail, false, true, true}, // third failure: down
		{nil, false, true, false}, // one success is not enough after an outage
		{nil, true, false, true},
		{fail, true, false, false}, // one failure does not flap
		{nil, true, false, false},
	}
	for i, s := range steps {
		_, changed := h.record(s.err, time.Millisecond, time.Now())
		snap := h.snapshot()
		if snap.Healthy != s.healthy || snap.Down != s.down || changed != s.ch || h.failFast() != s.down {
			t.Fatalf("step %d: %+v changed=%v, want healthy=%v down=%v changed=%v", i, snap, changed, s.healthy, s.down, s.ch)
		}
	}
	var fresh health
	fresh.init(UpstreamConfig{UnhealthyAfter: 3, HealthyAfter: 2})
	if _, ch := fresh.record(nil, 0, time.Now()); !ch || !fresh.snapshot().Healthy {
		t.Fatal("the first good probe must make the upstream ready at once")
	}
}

func TestParseURL(t *testing.T) {
	for _, tc := range []struct {
		in, addr, host string
		tls, ok        bool
	}{
		{"http://127.0.0.1:11434", "127.0.0.1:11434", "127.0.0.1:11434", false, true},
		{"http://ollama", "ollama:80", "ollama", false, true},
		{"https://ollama.example/", "ollama.example:443", "ollama.example", true, true},
		{"ftp://x", "", "", false, false},
		{"http://u:p@x", "", "", false, false},
		{"http://x/prefix", "", "", false, false},
		{"http://", "", "", false, false},
	} {
		got, err := parseURL(tc.in)
		if (err == nil) != tc.ok || tc.ok && (got.addr != tc.addr || got.host != tc.host || got.isTLS != tc.tls) {
			t.Errorf("%s: %+v %v", tc.in, got, err)
		}
	}
}
