package metrics

import (
	"bytes"
	"math"
	"os"
	"runtime"
	rtmetrics "runtime/metrics"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/vega-gateway/vega-gateway/cache"
)

// ResourceStats is the JSON view of /admin/resources/stats. Every figure
// is read from a counter or fixed-bucket histogram; nothing scans history.
type ResourceStats struct {
	UptimeSeconds   float64           `json:"uptime_seconds"`
	Version         string            `json:"version"`
	GoVersion       string            `json:"go_version"`
	Goroutines      int               `json:"goroutines"`
	HeapAllocBytes  uint64            `json:"heap_alloc_bytes"`
	RSSBytes        *uint64           `json:"rss_bytes"` // null where /proc/self/statm is missing
	RequestsTotal   uint64            `json:"requests_total"`
	RequestsByClass map[string]uint64 `json:"requests_by_status_class"`
	// RequestsInFlight is the pools' in-flight upstream requests.
	RequestsInFlight int64 `json:"requests_in_flight"`
	// StreamsActive is the streams in flight (null without a streams source).
	StreamsActive     *int64                `json:"streams_active"`
	DurationMS        Percentiles           `json:"duration_ms"`
	TTFBMS            Percentiles           `json:"ttfb_ms"`
	PromptTokens      uint64                `json:"prompt_tokens"`
	CompletionTokens  uint64                `json:"completion_tokens"`
	Models            map[string]ModelStats `json:"models"`
	ClientDisconnects int64                 `json:"client_disconnects"`
	UpstreamErrors    int64                 `json:"upstream_errors"`
	Upstreams         []UpstreamHealth      `json:"upstreams"`
	// Cache is the response cache's numbers: hits, misses, bypasses and
	// hit rate, overall and by route and model, bytes held and evictions
	// (null when cache.enabled is false).
	Cache *cache.Snapshot `json:"cache"`
	// Limits are the keys' use of their limits (null without a limiter).
	Limits *LimitsStats `json:"limits"`
}

// Percentiles are estimates from histogram buckets, by linear
// interpolation inside the bucket (as PromQL's histogram_quantile does).
// Zero when nothing was observed.
type Percentiles struct {
	P50   float64 `json:"p50"`
	P90   float64 `json:"p90"`
	P99   float64 `json:"p99"`
	Count uint64  `json:"count"`
}

// ModelStats are one model label's figures.
type ModelStats struct {
	Requests              uint64  `json:"requests"`
	PromptTokens          uint64  `json:"prompt_tokens"`
	CompletionTokens      uint64  `json:"completion_tokens"`
	AvgTokensPerSecond    float64 `json:"avg_tokens_per_second"`
	TimeToFirstTokenP50MS float64 `json:"ttft_p50_ms"`
}

// UpstreamHealth is one upstream's health as the prober last saw it.
type UpstreamHealth struct {
	Upstream            string  `json:"upstream"`
	Healthy             bool    `json:"healthy"`
	Down                bool    `json:"down"`
	LastCheck           *string `json:"last_check"`
	LastLatencyMS       float64 `json:"last_latency_ms"`
	ConsecutiveFailures int     `json:"consecutive_failures"`
}

// Stats reads the current figures. Its cost is bounded by the number of
// label sets (routes × methods × statuses, plus the model bound), not by
// traffic.
func (m *Metrics) Stats() ResourceStats {
	st := ResourceStats{
		UptimeSeconds:   time.Since(m.started).Seconds(),
		Version:         m.version,
		GoVersion:       runtime.Version(),
		Goroutines:      runtime.NumGoroutine(),
		HeapAllocBytes:  heapAlloc(),
		RSSBytes:        rss(),
		RequestsByClass: map[string]uint64{"1xx": 0, "2xx": 0, "3xx": 0, "4xx": 0, "5xx": 0},
		Models:          map[string]ModelStats{},
	}
	var d dto.Metric
	var dur, ttfb bucketSum
	m.mu.RLock()
	for k, c := range m.byReq {
		n := uint64(read(c, &d).GetCounter().GetValue())
		st.RequestsTotal += n
		if cls := k.status / 100; cls >= 1 && cls <= 5 {
			st.RequestsByClass[strconv.Itoa(cls)+"xx"] += n
		}
	}
	for _, rs := range m.byRoute {
		dur.add(read(rs.duration, &d).GetHistogram())
		ttfb.add(read(rs.ttfb, &d).GetHistogram())
	}
	for label, ms := range m.byModel {
		v := ModelStats{
			Requests:         uint64(read(ms.requests, &d).GetCounter().GetValue()),
			PromptTokens:     uint64(read(ms.prompt, &d).GetCounter().GetValue()),
			CompletionTokens: uint64(read(ms.completion, &d).GetCounter().GetValue()),
		}
		if h := read(ms.tps, &d).GetHistogram(); h.GetSampleCount() > 0 {
			v.AvgTokensPerSecond = h.GetSampleSum() / float64(h.GetSampleCount())
		}
		var t bucketSum
		t.add(read(ms.ttft, &d).GetHistogram())
		v.TimeToFirstTokenP50MS = t.quantile(.5) * 1000
		st.PromptTokens += v.PromptTokens
		st.CompletionTokens += v.CompletionTokens
		st.Models[label] = v
	}
	m.mu.RUnlock()
	if m.streams != nil {
		n := int64(m.streams())
		st.StreamsActive = &n
	}
	if m.cacheSnap != nil {
		cs := m.cacheSnap()
		st.Cache = &cs
	}
	if m.limits != nil {
		st.Limits = limitsStats(m.limits)
	}
	st.DurationMS = dur.percentiles()
	st.TTFBMS = ttfb.percentiles()
	if m.departed != nil {
		st.ClientDisconnects, st.UpstreamErrors = m.departed()
	}
	for _, s := range m.pools() {
		st.RequestsInFlight += s.RequestsInFlight
		st.ClientDisconnects += s.ClientDisconnects
		st.UpstreamErrors += s.Errors
		h := UpstreamHealth{
			Upstream: s.Upstream, Healthy: s.Health.Healthy, Down: s.Health.Down,
			LastLatencyMS:       float64(s.Health.LastLatency.Microseconds()) / 1000,
			ConsecutiveFailures: s.Health.ConsecutiveFailures,
		}
		if !s.Health.LastCheck.IsZero() {
			t := s.Health.LastCheck.UTC().Format(time.RFC3339Nano)
			h.LastCheck = &t
		}
		st.Upstreams = append(st.Upstreams, h)
	}
	return st
}

func read(m prometheus.Metric, d *dto.Metric) *dto.Metric {
	d.Reset()
	_ = m.Write(d) // counters and histograms never fail to write
	return d
}

// bucketSum merges histograms that share bucket bounds.
type bucketSum struct {
	upper []float64
	cum   []uint64 // cumulative counts, as Prometheus keeps them
	count uint64
}

func (b *bucketSum) add(h *dto.Histogram) {
	if h == nil {
		return
	}
	bs := h.GetBucket()
	if b.upper == nil {
		b.upper = make([]float64, len(bs))
		b.cum = make([]uint64, len(bs))
		for i, x := range bs {
			b.upper[i] = x.GetUpperBound()
		}
	}
	for i, x := range bs {
		if i < len(b.cum) {
			b.cum[i] += x.GetCumulativeCount()
		}
	}
	b.count += h.GetSampleCount()
}

// quantile estimates the q-quantile in the histogram's unit. Observations
// above the last bound are reported as the last bound.
func (b *bucketSum) quantile(q float64) float64 {
	if b.count == 0 || len(b.upper) == 0 {
		return 0
	}
	rank := q * float64(b.count)
	lower, prev := 0.0, uint64(0)
	for i, upper := range b.upper {
		if float64(b.cum[i]) >= rank {
			inBucket := b.cum[i] - prev
			if inBucket == 0 {
				return upper
			}
			return lower + (upper-lower)*(rank-float64(prev))/float64(inBucket)
		}
		lower, prev = upper, b.cum[i]
	}
	return b.upper[len(b.upper)-1]
}

func (b *bucketSum) percentiles() Percentiles {
	ms := func(s float64) float64 { return math.Round(s*1e6) / 1e3 }
	return Percentiles{P50: ms(b.quantile(.5)), P90: ms(b.quantile(.9)), P99: ms(b.quantile(.99)), Count: b.count}
}

// heapAlloc is MemStats.HeapAlloc without stopping the world.
func heapAlloc() uint64 {
	s := []rtmetrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	rtmetrics.Read(s)
	if s[0].Value.Kind() != rtmetrics.KindUint64 {
		return 0
	}
	return s[0].Value.Uint64()
}

// rss reads the resident set size from /proc/self/statm (Linux); nil
// elsewhere.
func rss() *uint64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return nil
	}
	f := bytes.Fields(b)
	if len(f) < 2 {
		return nil
	}
	pages, err := strconv.ParseUint(string(f[1]), 10, 64)
	if err != nil {
		return nil
	}
	v := pages * uint64(os.Getpagesize())
	return &v
}
