package main

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/vega-gateway/vega-gateway/fleet"
	"github.com/vega-gateway/vega-gateway/gateway"
	"github.com/vega-gateway/vega-gateway/metrics"
	"github.com/vega-gateway/vega-gateway/pool"
)

// newObservability builds the shared metrics registry over the fleet and
// its pools. The registry reads them at scrape time only, so /metrics and
// /admin/resources/pools show the same counters.
func newObservability(cfg metrics.Config, f *fleet.Fleet, gw *gateway.Gateway, sink *logSink) (*metrics.Metrics, error) {
	m, err := metrics.New(cfg, version, func() []pool.Snapshot { return poolSnapshots(fleetPools(f)) })
	if err != nil {
		return nil, err
	}
	m.SetDeparted(f.Departed)
	m.RegisterFleet(f.Snapshot)
	m.SetStreamsSource(gw.Streams)
	m.RegisterLimits(gw.Limiter())
	gw.SetObserver(m.Observe)
	m.Registry().MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "vega_panics_total", Help: "Panics recovered in request handlers, stream writers and health probes (each is a bug; a request's stack is in the log).",
		}, func() float64 {
			n := gw.Panics()
			for _, p := range fleetPools(f) {
				n += p.Stats().ProbePanics.Load()
			}
			return float64(n)
		}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "vega_config_reload_failures_total", Help: "Key reloads (SIGHUP re-reads auth.keys_file) that failed; the previous keys stayed in force.",
		}, func() float64 { return float64(gw.KeyReloadFailures()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "vega_log_suppressed_total", Help: "Access-log lines of failed authentications not written because of sampling (auth.failure_log_lines_per_second).",
		}, func() float64 { return float64(gw.SuppressedLogLines()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "vega_log_dropped_total", Help: "Log lines dropped because the log queue was full (a slow or failing log disk).",
		}, func() float64 { return float64(sink.Dropped.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "vega_log_write_errors_total", Help: "Writes to the log file that failed (disk full, I/O error), each a batch of queued lines; those lines still went to stdout.",
		}, func() float64 { return float64(sink.WriteErrors.Load()) }),
	)
	return m, nil
}

// fleetPools lists the pools of the backends taking requests now, in the
// fleet's order: a discovered backend's series appear when it joins and go
// when it leaves.
func fleetPools(f *fleet.Fleet) []*pool.Pool {
	bs := f.Backends() // one view: Len and Backends may read different ones
	out := make([]*pool.Pool, len(bs))
	for i, b := range bs {
		out[i] = b.Pool
	}
	return out
}

func poolSnapshots(pools []*pool.Pool) []pool.Snapshot {
	out := make([]pool.Snapshot, len(pools))
	for i, p := range pools {
		out[i] = p.Snapshot()
	}
	return out
}
