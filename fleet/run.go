package fleet

import (
	"context"
	"sync"
	"time"

	"github.com/vega-gateway/vega-gateway/pool"
)

// Run probes every backend's health (its pool's prober) and refreshes its
// catalogue every RefreshInterval, sooner when asked, until ctx is done;
// then it returns, once every goroutine it started has. observe (may be
// nil) is told of each backend's health transitions, as pool.RunHealth
// tells them. With one backend no catalogue is fetched (a single backend
// is routed to whatever it holds) unless TrackDigests asked for it.
func (f *Fleet) Run(ctx context.Context, observe func(b *Backend, ch pool.HealthChange)) {
	var wg sync.WaitGroup
	for _, b := range f.backends {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var obs func(pool.HealthChange)
			if observe != nil {
				obs = func(ch pool.HealthChange) { observe(b, ch) }
			}
			b.Pool.RunHealth(ctx, obs)
		}()
		if len(f.backends) > 1 || f.digests {
			wg.Add(1)
			go func() {
				defer wg.Done()
				b.runCatalogue(ctx)
			}()
		}
	}
	wg.Wait()
}

// runCatalogue refreshes b's catalogue until ctx is done.
func (b *Backend) runCatalogue(ctx context.Context) {
	cfg := &b.f.cfg
	timeout := min(max(cfg.RefreshInterval, time.Second), b.Pool.HealthTimeout())
	ft, err := newFetcher(b.Pool.URL(), timeout)
	if err != nil {
		return // the pool has validated the URL already
	}
	defer ft.client.CloseIdleConnections()
	t := time.NewTicker(cfg.RefreshInterval)
	defer t.Stop()
	for {
		ok := b.refresh(ft)
		b.breaker.probed(cfg, ok, time.Now())
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-b.cat.kick:
		}
	}
}
