// Package metrics keeps the gateway's Prometheus registry: HTTP and LLM
// telemetry fed from gateway records, and pool numbers read from pool
// snapshots at scrape time. It also answers the admin resource statistics.
package metrics

import (
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/vega-gateway/vega-gateway/cache"
	"github.com/vega-gateway/vega-gateway/gateway"
	"github.com/vega-gateway/vega-gateway/limits"
	"github.com/vega-gateway/vega-gateway/pool"
)

// DefaultMaxModels bounds the model label when no allowlist is configured.
const DefaultMaxModels = 50

// DefaultColdLoadThreshold is the load_duration above which a request
// counts as a cold model load. Ollama reports a few milliseconds of
// load_duration even when the model is resident.
const DefaultColdLoadThreshold = 250 * time.Millisecond

// OtherModel is the model label for models beyond the bound.
const OtherModel = "other"

// Config is the metrics configuration (config keys metrics.*).
type Config struct {
	// Models is the model label allowlist: these names keep their own label,
	// every other model is counted as "other". Empty: the first MaxModels
	// distinct models seen keep their label.
	Models []string `mapstructure:"models"`
	// MaxModels bounds the model label when Models is empty. Default
	// DefaultMaxModels; zero selects the default.
	MaxModels int `mapstructure:"max_models"`
	// ColdLoadThreshold is the load_duration from which a request counts in
	// vega_llm_cold_loads_total. Default DefaultColdLoadThreshold; zero
	// selects the default.
	ColdLoadThreshold time.Duration `mapstructure:"cold_load_threshold"`
}

// Bucket bounds, in seconds (tokens per second for tokensPerSecondBuckets).
// LLM requests run from milliseconds (a cached /api/tags) to minutes (a long
// generation), so the duration buckets reach five minutes.
var (
	durationBuckets        = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300}
	ttfbBuckets            = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}
	tokensPerSecondBuckets = []float64{1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 1000}
	loadBuckets            = []float64{.01, .05, .1, .25, .5, 1, 2, 5, 10, 20, 30, 60, 120}
)

// Metrics is the gateway's metrics registry. Observe is safe for
// concurrent use; label children are resolved once per label set and
// cached, so a steady-state observation is a read-locked map hit plus
// atomic adds.
type Metrics struct {
	cfg       Config
	version   string
	started   time.Time
	pools     func() []pool.Snapshot
	streams   func() int
	cacheSnap func() cache.Snapshot // nil: no response cache
	limits    *limits.Limiter       // nil until RegisterLimits
	// departed is what backends that left the fleet counted (SetDeparted).
	departed  func() (clientDisconnects, errors int64)
	poolColl  *poolCollector
	reg       *prometheus.Registry
	requests  *prometheus.CounterVec
	duration  *prometheus.HistogramVec
	ttfb      *prometheus.HistogramVec
	llmReqs   *prometheus.CounterVec
	tokens    *prometheus.CounterVec
	tps       *prometheus.HistogramVec
	ttft      *prometheus.HistogramVec
	load      *prometheus.HistogramVec
	coldLoads *prometheus.CounterVec
	done      *prometheus.CounterVec

	// mu guards the caches below; they only grow, and stay bounded by the
	// route, method and status sets and by the model bound.
	mu      sync.RWMutex
	byReq   map[reqKey]prometheus.Counter
	byRoute map[string]*routeSeries
	models  modelSet
	byModel map[string]*modelSeries // by model label
}

type reqKey struct {
	route, method string
	status        int
}

type routeSeries struct {
	duration, ttfb prometheus.Histogram
}

// New builds the registry. pools is read at every scrape and stats call;
// it must be cheap and safe for concurrent use. New starts nothing.
func New(cfg Config, version string, pools func() []pool.Snapshot) (*Metrics, error) {
	if pools == nil {
		return nil, errors.New("metrics: pools source is required")
	}
	if cfg.MaxModels < 0 {
		return nil, fmt.Errorf("metrics.max_models: must not be negative, got %d", cfg.MaxModels)
	}
	if cfg.ColdLoadThreshold < 0 {
		return nil, fmt.Errorf("metrics.cold_load_threshold: must not be negative, got %s", cfg.ColdLoadThreshold)
	}
	if cfg.MaxModels == 0 {
		cfg.MaxModels = DefaultMaxModels
	}
	if cfg.ColdLoadThreshold == 0 {
		cfg.ColdLoadThreshold = DefaultColdLoadThreshold
	}
	m := &Metrics{
		cfg: cfg, version: version, started: time.Now(), pools: pools, reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vega_http_requests_total", Help: "Requests answered by the gateway, by route template, method and status.",
		}, []string{"route", "method", "status"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "vega_http_request_duration_seconds", Help: "Time from request arrival to the last byte sent (stream close for streams).", Buckets: durationBuckets,
		}, []string{"route"}),
		ttfb: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "vega_http_ttfb_seconds", Help: "Time from request arrival to the upstream's response headers; requests answered by the gateway alone are not observed.", Buckets: ttfbBuckets,
		}, []string{"route"}),
		llmReqs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vega_llm_requests_total", Help: "Requests that named a model, by model.",
		}, []string{"model"}),
		tokens: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vega_llm_tokens_total", Help: "Tokens reported by the upstream's final chunk or usage object, by model and kind (prompt, completion).",
		}, []string{"model", "kind"}),
		tps: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "vega_llm_tokens_per_second", Help: "Completion tokens per second of generation (after the first token when streamed).", Buckets: tokensPerSecondBuckets,
		}, []string{"model"}),
		ttft: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "vega_llm_time_to_first_token_seconds", Help: "Time from request arrival to the first stream frame sent to the client.", Buckets: ttfbBuckets,
		}, []string{"model"}),
		load: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "vega_llm_load_duration_seconds", Help: "Model load time reported by Ollama (load_duration).", Buckets: loadBuckets,
		}, []string{"model"}),
		coldLoads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vega_llm_cold_loads_total", Help: "Requests whose load_duration reached the cold-load threshold.",
		}, []string{"model"}),
		done: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vega_llm_done_total", Help: "Finished generations by model and done_reason (length means truncated).",
		}, []string{"model", "done_reason"}),
		byReq:   make(map[reqKey]prometheus.Counter),
		byRoute: make(map[string]*routeSeries),
		byModel: make(map[string]*modelSeries),
	}
	m.models.init(cfg.Models, cfg.MaxModels)
	m.poolColl = &poolCollector{pools: pools}
	buildInfo := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "vega_build_info", Help: "Always 1; the labels carry the build.",
		ConstLabels: prometheus.Labels{"version": version, "go_version": runtime.Version()},
	})
	buildInfo.Set(1)
	m.reg.MustRegister(
		m.requests, m.duration, m.ttfb, m.llmReqs, m.tokens, m.tps, m.ttft, m.load, m.coldLoads, m.done,
		buildInfo, m.poolColl,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m, nil
}

// SetDeparted gives the counts of backends that left the fleet (DNS
// discovery: draining or closed), which fleet-wide totals
// (vega_client_disconnects_total, the stats' client_disconnects and
// upstream_errors) add to the current pools', so they never go down. Call
// it before serving.
func (m *Metrics) SetDeparted(fn func() (clientDisconnects, errors int64)) {
	m.departed = fn
	m.poolColl.departed = fn
}

// Registry is the registry behind Handler, for callers that add their own
// collectors.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Observe records one finished request. It is the gateway's observer
// (gateway.SetObserver(m.Observe)); r is not retained.
func (m *Metrics) Observe(r *gateway.Record) {
	rs, c := m.httpSeries(r.Route, r.Method, r.Status)
	c.Inc()
	rs.duration.Observe(r.Duration.Seconds())
	if r.TTFB > 0 {
		rs.ttfb.Observe(r.TTFB.Seconds())
	}
	if r.Model == "" {
		return
	}
	ms := m.modelSeries(r.Model)
	ms.requests.Inc()
	if r.PromptTokens > 0 {
		ms.prompt.Add(float64(r.PromptTokens))
	}
	if r.CompletionTokens > 0 {
		ms.completion.Add(float64(r.CompletionTokens))
		// Ollama's eval_duration when reported; otherwise (OpenAI routes)
		// the time after the first token for streams, the whole request
		// for replies (which includes prompt evaluation, so it reads low).
		gen := r.EvalDuration
		if gen <= 0 {
			gen = r.Duration
			if r.Streamed && r.TTFT > 0 && r.Duration > r.TTFT {
				gen = r.Duration - r.TTFT
			}
		}
		if gen > 0 {
			ms.tps.Observe(float64(r.CompletionTokens) / gen.Seconds())
		}
	}
	if r.Streamed && r.TTFT > 0 {
		ms.ttft.Observe(r.TTFT.Seconds())
	}
	if r.DoneReason != "" {
		ms.doneReason(r.DoneReason).Inc()
	}
	if r.LoadDuration > 0 {
		ms.load.Observe(r.LoadDuration.Seconds())
		if r.LoadDuration >= m.cfg.ColdLoadThreshold {
			ms.coldLoads.Inc()
		}
	}
}

// SetStreamsSource tells Stats how to count the streams in flight (the
// gateway's Streams). Call it before serving.
func (m *Metrics) SetStreamsSource(fn func() int) { m.streams = fn }

// httpSeries returns the cached children for a request's labels, creating
// them on first use.
func (m *Metrics) httpSeries(route, method string, status int) (*routeSeries, prometheus.Counter) {
	k := reqKey{route, method, status}
	m.mu.RLock()
	c, ok := m.byReq[k]
	rs := m.byRoute[route]
	m.mu.RUnlock()
	if ok && rs != nil {
		return rs, c
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if rs = m.byRoute[route]; rs == nil {
		rs = &routeSeries{duration: m.duration.WithLabelValues(route).(prometheus.Histogram), ttfb: m.ttfb.WithLabelValues(route).(prometheus.Histogram)}
		m.byRoute[route] = rs
	}
	if c, ok = m.byReq[k]; !ok {
		c = m.requests.WithLabelValues(route, method, strconv.Itoa(status))
		m.byReq[k] = c
	}
	return rs, c
}
