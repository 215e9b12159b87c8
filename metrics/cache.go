package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/vega-gateway/vega-gateway/cache"
)

// RegisterCache exports the response cache's numbers (vega_cache_*),
// read from snap at scrape time, and adds them to /admin/resources/stats
// as its cache section. Call it before serving; without it the section is
// null.
func (m *Metrics) RegisterCache(snap func() cache.Snapshot) {
	m.cacheSnap = snap
	m.reg.MustRegister(&cacheCollector{snap: snap})
}

var (
	cacheRequestsDesc = prometheus.NewDesc("vega_cache_requests_total",
		"Response cache lookups by route, model and result (hit, miss, bypass); embedding routes count each input of a batch.",
		[]string{"route", "model", "result"}, nil)
	cacheBytesDesc = prometheus.NewDesc("vega_cache_bytes",
		"Bytes the in-process cache holds: values plus a fixed overhead per entry, never over vega_cache_max_bytes (0 with Redis).", nil, nil)
	cacheMaxBytesDesc = prometheus.NewDesc("vega_cache_max_bytes",
		"cache.max_bytes (0 with Redis).", nil, nil)
	cacheEntriesDesc = prometheus.NewDesc("vega_cache_entries",
		"Entries in the in-process cache (0 with Redis).", nil, nil)
	cacheEvictionsDesc = prometheus.NewDesc("vega_cache_evictions_total",
		"Entries the in-process cache dropped to stay within cache.max_bytes.", nil, nil)
	cacheTooLargeDesc = prometheus.NewDesc("vega_cache_too_large_total",
		"Answers served but not stored for being over cache.max_entry_bytes.", nil, nil)
	cacheStoreErrorsDesc = prometheus.NewDesc("vega_cache_store_errors_total",
		"Redis calls that failed; each request concerned was served uncached.", nil, nil)
)

// cacheCollector reads a cache snapshot at each scrape.
type cacheCollector struct{ snap func() cache.Snapshot }

func (c *cacheCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{cacheRequestsDesc, cacheBytesDesc, cacheMaxBytesDesc, cacheEntriesDesc,
		cacheEvictionsDesc, cacheTooLargeDesc, cacheStoreErrorsDesc} {
		ch <- d
	}
}

func (c *cacheCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.snap()
	for _, r := range s.Routes {
		for _, v := range []struct {
			result string
			n      int64
		}{{"hit", r.Hits}, {"miss", r.Misses}, {"bypass", r.Bypasses}} {
			ch <- prometheus.MustNewConstMetric(cacheRequestsDesc, prometheus.CounterValue, float64(v.n), r.Route, r.Model, v.result)
		}
	}
	ch <- prometheus.MustNewConstMetric(cacheBytesDesc, prometheus.GaugeValue, float64(s.Bytes))
	ch <- prometheus.MustNewConstMetric(cacheMaxBytesDesc, prometheus.GaugeValue, float64(s.MaxBytes))
	ch <- prometheus.MustNewConstMetric(cacheEntriesDesc, prometheus.GaugeValue, float64(s.Entries))
	ch <- prometheus.MustNewConstMetric(cacheEvictionsDesc, prometheus.CounterValue, float64(s.Evictions))
	ch <- prometheus.MustNewConstMetric(cacheTooLargeDesc, prometheus.CounterValue, float64(s.TooLarge))
	ch <- prometheus.MustNewConstMetric(cacheStoreErrorsDesc, prometheus.CounterValue, float64(s.StoreErrors))
}
