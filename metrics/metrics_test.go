package metrics

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/valyala/fasthttp"

	"github.com/vega-gateway/vega-gateway/gateway"
	"github.com/vega-gateway/vega-gateway/pool"
)

func fakePools() []pool.Snapshot {
	return []pool.Snapshot{{
		Upstream: "http://127.0.0.1:11434", MaxConnections: 4, ConnectionsOpen: 3, ConnectionsActive: 2,
		ConnectionsIdle: 1, RequestsInFlight: 2, RequestsWaiting: 1, WaitTimeouts: 5, Errors: 7,
		ClientDisconnects: 3, Health: pool.HealthSnapshot{Probed: true, Healthy: true, LastCheck: time.Unix(1, 0)},
	}}
}

// counterValue reads a counter (prometheus/testutil would pull in another
// module for this).
func counterValue(c prometheus.Counter) float64 {
	var d dto.Metric
	return read(c, &d).GetCounter().GetValue()
}

func seriesCount(c prometheus.Collector) int {
	ch := make(chan prometheus.Metric)
	go func() { c.Collect(ch); close(ch) }()
	n := 0
	for range ch {
		n++
	}
	return n
}

func newTest(t testing.TB, cfg Config) *Metrics {
	t.Helper()
	m, err := New(cfg, "1.2.3", fakePools)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return m
}

func scrape(t testing.TB, m *Metrics) string {
	t.Helper()
	var ctx fasthttp.RequestCtx
	ctx.Request.SetRequestURI("/metrics")
	m.Handler()(&ctx)
	if got := ctx.Response.StatusCode(); got != 200 {
		t.Fatalf("scrape status = %d, want 200: %s", got, ctx.Response.Body())
	}
	return string(ctx.Response.Body())
}

func TestNewValidates(t *testing.T) {
	tests := []struct {
		name  string
		cfg   Config
		pools func() []pool.Snapshot
		want  string
	}{
		{"no pools", Config{}, nil, "pools source"},
		{"negative max", Config{MaxModels: -1}, fakePools, "metrics.max_models"},
		{"negative threshold", Config{ColdLoadThreshold: -time.Second}, fakePools, "metrics.cold_load_threshold"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.cfg, "v", tt.pools)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("New error = %v, want it to mention %q", err, tt.want)
			}
		})
	}
}

func TestHistogramCountsEqualRequests(t *testing.T) {
	m := newTest(t, Config{})
	routes := []string{"/api/chat", "/api/generate", "/v1/chat/completions", "/api/tags"}
	statuses := []int{200, 200, 499, 502, 404}
	const n = 200
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 4 {
				m.Observe(&gateway.Record{
					Route: routes[i%len(routes)], Method: "POST", Status: statuses[i%len(statuses)],
					Duration: time.Duration(i+1) * time.Millisecond, TTFB: time.Millisecond, TTFT: 2 * time.Millisecond,
					Streamed: i%2 == 0, Model: "llama3", PromptTokens: 10, CompletionTokens: 20, DoneReason: "stop",
				})
			}
		}()
	}
	wg.Wait()

	if got := counterValue(m.llmReqs.WithLabelValues("llama3")); got != n {
		t.Errorf("vega_llm_requests_total = %v, want %d", got, n)
	}
	if got := counterValue(m.tokens.WithLabelValues("llama3", "completion")); got != 20*n {
		t.Errorf("completion tokens = %v, want %d", got, 20*n)
	}
	if got := counterValue(m.done.WithLabelValues("llama3", "stop")); got != n {
		t.Errorf("done stop = %v, want %d", got, n)
	}
	st := m.Stats()
	checks := []struct {
		name      string
		got, want uint64
	}{
		{"requests_total", st.RequestsTotal, n},
		{"duration count", st.DurationMS.Count, n},
		{"ttfb count", st.TTFBMS.Count, n},
		{"2xx", st.RequestsByClass["2xx"], 2 * n / 5},
		{"4xx", st.RequestsByClass["4xx"], 2 * n / 5},
		{"5xx", st.RequestsByClass["5xx"], n / 5},
		{"prompt tokens", st.PromptTokens, 10 * n},
		{"model requests", st.Models["llama3"].Requests, n},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %d, want %d", c.name, c.got, c.want)
		}
	}
	if st.DurationMS.P50 <= 0 || st.DurationMS.P50 > st.DurationMS.P90 || st.DurationMS.P90 > st.DurationMS.P99 {
		t.Errorf("duration percentiles not ordered: %+v", st.DurationMS)
	}
	if st.ClientDisconnects != 3 || st.UpstreamErrors != 7 || st.RequestsInFlight != 2 {
		t.Errorf("pool figures = disconnects %d errors %d in flight %d, want 3 7 2", st.ClientDisconnects, st.UpstreamErrors, st.RequestsInFlight)
	}
	if len(st.Upstreams) != 1 || !st.Upstreams[0].Healthy || st.Upstreams[0].LastCheck == nil {
		t.Errorf("upstreams = %+v, want one healthy with a last check", st.Upstreams)
	}
	if st.Models["llama3"].AvgTokensPerSecond <= 0 {
		t.Errorf("avg tokens/s = %v, want > 0", st.Models["llama3"].AvgTokensPerSecond)
	}

	body := scrape(t, m)
	for _, want := range []string{
		fmt.Sprintf("vega_http_request_duration_seconds_count{route=\"/api/chat\"} %d", n/4),
		fmt.Sprintf("vega_http_ttfb_seconds_count{route=\"/api/tags\"} %d", n/4),
	} {
		if !strings.Contains(body, want) {
			t.Errorf("scrape lacks %q", want)
		}
	}
}

func TestModelLabelBound(t *testing.T) {
	tests := []struct {
		name   string
		cfg    Config
		models []string
		want   map[string]float64 // label -> requests
	}{
		{"first seen", Config{MaxModels: 2}, []string{"a", "b", "c", "a", "d", "b"}, map[string]float64{"a": 2, "b": 2, "other": 2}},
		{"allowlist", Config{Models: []string{"c", "z"}}, []string{"a", "b", "c", "c", "z"}, map[string]float64{"c": 2, "z": 1, "other": 2}},
		{"under bound", Config{}, []string{"a", "b"}, map[string]float64{"a": 1, "b": 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newTest(t, tt.cfg)
			for _, model := range tt.models {
				m.Observe(&gateway.Record{Route: "/api/chat", Method: "POST", Status: 200, Model: model, Duration: time.Millisecond})
			}
			if got := seriesCount(m.llmReqs); got != len(tt.want) {
				t.Errorf("model label sets = %d, want %d", got, len(tt.want))
			}
			for label, want := range tt.want {
				if got := counterValue(m.llmReqs.WithLabelValues(label)); got != want {
					t.Errorf("requests{model=%q} = %v, want %v", label, got, want)
				}
			}
		})
	}
}

func TestDoneReasonFolded(t *testing.T) {
	m := newTest(t, Config{})
	for _, r := range []string{"stop", "length", "weird", ""} {
		m.Observe(&gateway.Record{Route: "/api/chat", Method: "POST", Status: 200, Model: "m", DoneReason: r})
	}
	for reason, want := range map[string]float64{"stop": 1, "length": 1, "other": 1, "load": 0} {
		if got := counterValue(m.done.WithLabelValues("m", reason)); got != want {
			t.Errorf("done{%s} = %v, want %v", reason, got, want)
		}
	}
}

func TestScrapeNames(t *testing.T) {
	m := newTest(t, Config{})
	m.Observe(&gateway.Record{Route: "/api/chat", Method: "POST", Status: 200, Model: "m", Streamed: true,
		Duration: time.Second, TTFB: 10 * time.Millisecond, TTFT: 50 * time.Millisecond, PromptTokens: 3, CompletionTokens: 9, DoneReason: "length",
		LoadDuration: time.Second, EvalDuration: 900 * time.Millisecond})
	body := scrape(t, m)
	for _, name := range []string{
		`vega_http_requests_total{method="POST",route="/api/chat",status="200"} 1`,
		"vega_http_request_duration_seconds_bucket", "vega_http_ttfb_seconds_bucket",
		`vega_pool_max_connections{upstream="http://127.0.0.1:11434"} 4`, "vega_pool_connections_open", "vega_pool_connections_active",
		"vega_pool_connections_idle", "vega_pool_requests_in_flight", "vega_pool_requests_waiting",
		`vega_pool_wait_timeouts_total{upstream="http://127.0.0.1:11434"} 5`,
		`vega_llm_tokens_total{kind="prompt",model="m"} 3`, `vega_llm_tokens_total{kind="completion",model="m"} 9`,
		"vega_llm_tokens_per_second_bucket", "vega_llm_time_to_first_token_seconds_bucket", "vega_llm_load_duration_seconds_bucket",
		`vega_llm_cold_loads_total{model="m"} 1`, `vega_llm_done_total{done_reason="length",model="m"} 1`,
		"vega_client_disconnects_total 3", `vega_upstream_healthy{upstream="http://127.0.0.1:11434"} 1`,
		`vega_build_info{go_version="go`, "go_goroutines", "process_resident_memory_bytes",
	} {
		if !strings.Contains(body, name) {
			t.Errorf("scrape lacks %q", name)
		}
	}
}

func TestQuantile(t *testing.T) {
	b := bucketSum{upper: []float64{1, 2, 4}, cum: []uint64{0, 10, 10}, count: 10}
	tests := []struct{ q, want float64 }{{.5, 1.5}, {.9, 1.9}, {1, 2}}
	for _, tt := range tests {
		if got := b.quantile(tt.q); got < tt.want-1e-9 || got > tt.want+1e-9 {
			t.Errorf("quantile(%v) = %v, want %v", tt.q, got, tt.want)
		}
	}
	over := bucketSum{upper: []float64{1, 2}, cum: []uint64{0, 0}, count: 4} // all in +Inf
	if got := over.quantile(.5); got != 2 {
		t.Errorf("quantile above last bound = %v, want 2", got)
	}
}

func TestConcurrentObserveScrapeStats(t *testing.T) {
	m := newTest(t, Config{MaxModels: 3})
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 300 {
				m.Observe(&gateway.Record{Route: "/api/generate", Method: "POST", Status: 200 + w, Model: fmt.Sprint("m", i%7), Duration: time.Millisecond})
			}
		}()
	}
	for range 5 {
		_ = scrape(t, m)
		_ = m.Stats()
	}
	wg.Wait()
	if got := m.Stats().RequestsTotal; got != 1200 {
		t.Fatalf("requests_total = %d, want 1200", got)
	}
}

func BenchmarkObserve(b *testing.B) {
	m := newTest(b, Config{})
	r := &gateway.Record{Route: "/api/chat", Method: "POST", Status: 200, Model: "llama3", Streamed: true,
		Duration: 800 * time.Millisecond, TTFB: 5 * time.Millisecond, TTFT: 30 * time.Millisecond,
		PromptTokens: 20, CompletionTokens: 200, DoneReason: "stop"}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.Observe(r)
		}
	})
}

func BenchmarkStats(b *testing.B) {
	m := newTest(b, Config{})
	for i := range 50 {
		m.Observe(&gateway.Record{Route: "/api/chat", Method: "POST", Status: 200, Model: fmt.Sprint("m", i), Duration: time.Second})
	}
	b.ReportAllocs()
	for b.Loop() {
		_ = m.Stats()
	}
}
