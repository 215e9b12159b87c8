package metrics

import (
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"
)

// Handler serves the registry in the Prometheus text format (or OpenMetrics
// or gzip when the scraper asks), for the admin listener's /metrics.
// promhttp is a net/http handler; the adaptor buffers its answer, which is
// fine for a scrape of a few hundred series.
func (m *Metrics) Handler() fasthttp.RequestHandler {
	h := promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		ErrorHandling:       promhttp.ContinueOnError,
		MaxRequestsInFlight: 2,
	})
	return fasthttpadaptor.NewFastHTTPHandler(h)
}
