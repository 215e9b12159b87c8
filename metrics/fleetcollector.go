package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/vega-gateway/vega-gateway/fleet"
)

// fleetCollector turns fleet snapshots into per-backend metrics at scrape
// time, so /metrics and /admin/resources/pools read the same counters. The
// backend label takes the names of the backends taking requests now (at
// most fleet.MaxBackends): a discovered backend's series go when it leaves.
// The reason label takes fleet's fixed set, discovery the configured
// upstream names.
type fleetCollector struct {
	snapshot func() fleet.Snapshot
}

var backendLabel = []string{"backend"}

func backendDesc(name, help string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, backendLabel, nil)
}

var (
	descOutstanding     = backendDesc("vega_backend_outstanding_requests", "Requests sent to the backend and not yet finished.")
	descBreakerOpen     = backendDesc("vega_backend_breaker_open", "1 while the backend's circuit breaker is open (it gets no requests), else 0.")
	descBreakerOpens    = backendDesc("vega_backend_breaker_opens_total", "Times the backend's circuit breaker opened.")
	descPicks           = prometheus.NewDesc("vega_backend_picks_total", "Times the backend was chosen, by reason (route_reason in the access log).", []string{"backend", "reason"}, nil)
	descColdLoads       = backendDesc("vega_backend_cold_loads_total", "Answers whose load_duration said the model had just been loaded on the backend.")
	descBusy            = backendDesc("vega_backend_busy_total", "Ollama's busy 503s from the backend (its queue was full).")
	descBackendFailures = backendDesc("vega_backend_failures_total", "Attempts on the backend that failed (connect errors, resets, 5xx other than busy); they count toward its breaker.")
	descModelsLoaded    = backendDesc("vega_backend_models_loaded", "Models loaded on the backend, as last seen (GET /api/ps) or inferred from answers.")
	descModelsInst      = backendDesc("vega_backend_models_installed", "Models installed on the backend, as last seen (GET /api/tags).")
	descCatalogueErrs   = backendDesc("vega_backend_catalogue_refresh_errors_total", "Catalogue refreshes (GET /api/tags and /api/ps) of the backend that failed.")
	descNoBackend       = prometheus.NewDesc("vega_routing_no_backend_total", "Requests that found no usable backend (all down, circuit-broken, closed or already tried).", nil, nil)
	descModelMissing    = prometheus.NewDesc("vega_routing_model_missing_total", "Requests answered 404 without a round trip because no backend has the model installed.", nil, nil)
	descLookups         = discoveryDesc("vega_discovery_lookups_total", "DNS lookups of the discovered upstream, failed ones included.")
	descLookupFailures  = discoveryDesc("vega_discovery_lookup_failures_total", "DNS lookups of the discovered upstream that failed (error, timeout, SERVFAIL, no address); the backends stayed as they were.")
	descDiscovered      = prometheus.NewDesc("vega_discovery_backends", "Backends of the discovered upstream by state: serving (taking requests), joining (found, probed before they do), draining (gone from DNS, requests still open).", []string{"discovery", "state"}, nil)
)

func discoveryDesc(name, help string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, []string{"discovery"}, nil)
}

// RegisterFleet adds per-backend routing series (label backend) read from
// snapshot at every scrape; snapshot must be cheap and safe for concurrent
// use. Call it once, before serving.
func (m *Metrics) RegisterFleet(snapshot func() fleet.Snapshot) {
	m.reg.MustRegister(&fleetCollector{snapshot: snapshot})
}

func (c *fleetCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		descOutstanding, descBreakerOpen, descBreakerOpens, descPicks, descColdLoads, descBusy, descBackendFailures,
		descModelsLoaded, descModelsInst, descCatalogueErrs, descNoBackend, descModelMissing,
		descLookups, descLookupFailures, descDiscovered,
	} {
		ch <- d
	}
}

func (c *fleetCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.snapshot()
	for _, b := range s.Backends {
		gauge := func(d *prometheus.Desc, v float64) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, b.Name)
		}
		counter := func(d *prometheus.Desc, v int64) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), b.Name)
		}
		gauge(descOutstanding, float64(b.Outstanding))
		gauge(descBreakerOpen, b2f(b.Breaker.State == "open"))
		counter(descBreakerOpens, b.Breaker.Opens)
		// Every reason, zero included, so rate() sees a series from the start.
		for _, r := range fleet.Reasons() {
			ch <- prometheus.MustNewConstMetric(descPicks, prometheus.CounterValue, float64(b.Picks[r.String()]), b.Name, r.String())
		}
		counter(descColdLoads, b.ColdLoads)
		counter(descBusy, b.Busy)
		counter(descBackendFailures, b.Failures)
		gauge(descModelsLoaded, float64(len(b.Loaded)))
		gauge(descModelsInst, float64(len(b.Installed)))
		counter(descCatalogueErrs, b.CatalogueErrors)
	}
	ch <- prometheus.MustNewConstMetric(descNoBackend, prometheus.CounterValue, float64(s.NoBackend))
	ch <- prometheus.MustNewConstMetric(descModelMissing, prometheus.CounterValue, float64(s.ModelMissing))
	for _, g := range s.Discovery {
		ch <- prometheus.MustNewConstMetric(descLookups, prometheus.CounterValue, float64(g.Lookups), g.Name)
		ch <- prometheus.MustNewConstMetric(descLookupFailures, prometheus.CounterValue, float64(g.LookupFailures), g.Name)
		for state, names := range map[string][]string{"serving": g.Backends, "joining": g.Joining, "draining": g.Draining} {
			ch <- prometheus.MustNewConstMetric(descDiscovered, prometheus.GaugeValue, float64(len(names)), g.Name, state)
		}
	}
}
