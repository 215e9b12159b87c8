package main

import (
	"github.com/vega-gateway/vega-gateway/metrics"
	"github.com/vega-gateway/vega-gateway/pool"
)

// newObservability builds the shared metrics registry over p. The registry
// reads the pool at scrape time only, so /metrics and
// /admin/resources/pools show the same counters.
func newObservability(cfg metrics.Config, p *pool.Pool) (*metrics.Metrics, error) {
	return metrics.New(cfg, version, func() []pool.Snapshot { return []pool.Snapshot{p.Snapshot()} })
}
