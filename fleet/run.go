package fleet

import (
	"context"
	"sync"
	"time"

	"github.com/vega-gateway/vega-gateway/pool"
)

// Run probes every backend's health (its pool's prober) and refreshes its
// catalogue every RefreshInterval, sooner when asked, and runs each
// discovery group's lookups, until ctx is done; then it returns, once
// every goroutine it started has. observe (may be nil) is told of each
// backend's health transitions, as pool.RunHealth tells them, discovered
// backends' included. A Single fleet fetches no catalogue (its backend is
// routed to whatever it holds) unless TrackDigests asked for it.
func (f *Fleet) Run(ctx context.Context, observe func(b *Backend, ch pool.HealthChange)) {
	var wg sync.WaitGroup
	for _, b := range f.static {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var obs func(pool.HealthChange)
			if observe != nil {
				obs = func(ch pool.HealthChange) { observe(b, ch) }
			}
			b.Pool.RunHealth(ctx, obs)
		}()
		if !f.single || f.digests {
			wg.Add(1)
			go func() {
				defer wg.Done()
				b.runCatalogue(ctx, nil)
			}()
		}
	}
	// Each group's goroutine adds the goroutines of the backends it finds
	// to wg while holding its own count, so Wait cannot return early.
	for _, g := range f.groups {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f.runGroup(ctx, g, &wg, observe)
		}()
	}
	wg.Wait()
}

// runCatalogue refreshes b's catalogue until ctx is done; after each
// fetch, refreshed (may be nil) is told whether the backend answered.
func (b *Backend) runCatalogue(ctx context.Context, refreshed func(ok bool)) {
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
		if refreshed != nil {
			refreshed(ok)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-b.cat.kick:
		}
	}
}
