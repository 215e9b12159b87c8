package pool_test

import (
	"testing"

	"github.com/vega-gateway/vega-gateway/pool"
)

// newBenchPool builds a pool that is never dialled: Acquire and release
// touch only the slot channel and the counters.
func newBenchPool(b *testing.B) *pool.Pool {
	b.Helper()
	p, err := pool.New(pool.UpstreamConfig{URL: "http://127.0.0.1:1"}, pool.Config{MaxConnections: 64})
	if err != nil {
		b.Fatalf("pool.New: %v", err)
	}
	b.Cleanup(p.Close)
	return p
}

// BenchmarkAcquireRelease is the uncontended fast path: a free slot.
func BenchmarkAcquireRelease(b *testing.B) {
	p := newBenchPool(b)
	b.ReportAllocs()
	for range b.N {
		release, _, err := p.Acquire(nil)
		if err != nil {
			b.Fatal(err)
		}
		release()
	}
}

// BenchmarkAcquireReleaseParallel is the same from GOMAXPROCS goroutines,
// all contending for the one slot channel (below the bound: none waits).
func BenchmarkAcquireReleaseParallel(b *testing.B) {
	p := newBenchPool(b)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			release, _, err := p.Acquire(nil)
			if err != nil {
				b.Error(err)
				return
			}
			release()
		}
	})
}
