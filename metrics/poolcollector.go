package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/vega-gateway/vega-gateway/pool"
)

// poolCollector turns pool snapshots into metrics at scrape time, so
// /metrics and /admin/resources/pools read the same counters.
type poolCollector struct {
	pools func() []pool.Snapshot
	// departed (nil: none) adds the counts of backends that left.
	departed func() (clientDisconnects, errors int64)
}

var upstreamLabel = []string{"upstream"}

func poolDesc(name, help string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, upstreamLabel, nil)
}

var (
	descMaxConns     = poolDesc("vega_pool_max_connections", "Configured bound on upstream connections.")
	descMaxQueue     = poolDesc("vega_pool_max_queue", "Configured bound on requests waiting for a connection.")
	descOpen         = poolDesc("vega_pool_connections_open", "Open upstream connections, busy and idle.")
	descActive       = poolDesc("vega_pool_connections_active", "Open upstream connections carrying a request.")
	descIdle         = poolDesc("vega_pool_connections_idle", "Open keep-alive upstream connections waiting for reuse.")
	descInFlight     = poolDesc("vega_pool_requests_in_flight", "Requests holding an upstream slot.")
	descWaiting      = poolDesc("vega_pool_requests_waiting", "Requests waiting for an upstream slot.")
	descClosed       = poolDesc("vega_pool_closed", "1 once the pool was closed (draining).")
	descClients      = poolDesc("vega_pool_clients_created_total", "HTTP clients the pool created.")
	descRequestsMade = poolDesc("vega_pool_requests_total", "Requests sent upstream.")
	descOpened       = poolDesc("vega_pool_connections_opened_total", "Upstream connections opened.")
	descClosedConns  = poolDesc("vega_pool_connections_closed_total", "Upstream connections closed.")
	descWaitTimeouts = poolDesc("vega_pool_wait_timeouts_total", "Requests refused after waiting max_wait for a slot.")
	descQueueRejects = poolDesc("vega_pool_queue_rejections_total", "Requests refused because the wait queue was full.")
	descErrors       = poolDesc("vega_pool_errors_total", "Upstream request errors.")
	descRetries      = poolDesc("vega_pool_retries_total", "Upstream requests retried after a dial error.")
	descHealthy      = poolDesc("vega_upstream_healthy", "1 when the health prober finds the upstream healthy, else 0.")
	descDown         = poolDesc("vega_upstream_down", "1 when requests fail fast because the upstream is marked down.")
	descFailures     = poolDesc("vega_upstream_health_consecutive_failures", "Health probes failed in a row.")
	descProbeLatency = poolDesc("vega_upstream_health_latency_seconds", "Latency of the last health probe.")
	descDisconnects  = prometheus.NewDesc("vega_client_disconnects_total", "Clients that went away before their response was complete.", nil, nil)
)

func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		descMaxConns, descMaxQueue, descOpen, descActive, descIdle, descInFlight, descWaiting, descClosed,
		descClients, descRequestsMade, descOpened, descClosedConns, descWaitTimeouts, descQueueRejects,
		descErrors, descRetries, descHealthy, descDown, descFailures, descProbeLatency, descDisconnects,
	} {
		ch <- d
	}
}

func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	var disconnects int64
	for _, s := range c.pools() {
		u := s.Upstream
		gauge := func(d *prometheus.Desc, v float64) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, u)
		}
		counter := func(d *prometheus.Desc, v int64) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), u)
		}
		gauge(descMaxConns, float64(s.MaxConnections))
		gauge(descMaxQueue, float64(s.MaxQueue))
		gauge(descOpen, float64(s.ConnectionsOpen))
		gauge(descActive, float64(s.ConnectionsActive))
		gauge(descIdle, float64(s.ConnectionsIdle))
		gauge(descInFlight, float64(s.RequestsInFlight))
		gauge(descWaiting, float64(s.RequestsWaiting))
		gauge(descClosed, b2f(s.Closed))
		counter(descClients, s.ClientsCreated)
		counter(descRequestsMade, s.RequestsMade)
		counter(descOpened, s.ConnectionsOpened)
		counter(descClosedConns, s.ConnectionsClosed)
		counter(descWaitTimeouts, s.WaitTimeouts)
		counter(descQueueRejects, s.QueueRejections)
		counter(descErrors, s.Errors)
		counter(descRetries, s.Retries)
		gauge(descHealthy, b2f(s.Health.Healthy))
		gauge(descDown, b2f(s.Health.Down))
		gauge(descFailures, float64(s.Health.ConsecutiveFailures))
		gauge(descProbeLatency, s.Health.LastLatency.Seconds())
		disconnects += s.ClientDisconnects
	}
	if c.departed != nil {
		d, _ := c.departed()
		disconnects += d
	}
	ch <- prometheus.MustNewConstMetric(descDisconnects, prometheus.CounterValue, float64(disconnects))
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
