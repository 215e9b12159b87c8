package metrics_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/valyala/fasthttp"

	"github.com/vega-gateway/vega-gateway/access"
	"github.com/vega-gateway/vega-gateway/fleet"
	"github.com/vega-gateway/vega-gateway/gateway"
	"github.com/vega-gateway/vega-gateway/metrics"
	"github.com/vega-gateway/vega-gateway/ollamatest"
	"github.com/vega-gateway/vega-gateway/pool"
)

// TestBurstAgrees sends mixed traffic through a real gateway in front of
// the fake Ollama and checks that the stats, the scrape, the pool and the
// fake agree.
func TestBurstAgrees(t *testing.T) {
	fake, p, m, base := startStack(t, 2*time.Millisecond, true)

	type call struct {
		path, body, fault string
		disconnect        bool
	}
	calls := []call{
		{path: "/api/chat", body: `{"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}`},
		{path: "/api/chat", body: `{"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}`},
		{path: "/api/generate", body: `{"model":"llama3.2","prompt":"hi","stream":false}`},
		{path: "/api/chat", body: `{"model":"qwen2.5:0.5b","messages":[{"role":"user","content":"hi"}],"stream":false}`},
		{path: "/v1/chat/completions", body: `{"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}`},
		{path: "/api/tags"},
		{path: "/api/chat", body: `{"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}`, fault: "fail_status=500"},
		{path: "/api/chat", body: `{"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}`, fault: "infinite", disconnect: true},
	}
	var completion sync.Map // path -> tokens the client saw, summed below
	var wg sync.WaitGroup
	for i, c := range calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			method := "POST"
			if c.body == "" {
				method = "GET"
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, method, base+c.path, strings.NewReader(c.body))
			if c.fault != "" {
				req.Header.Set(ollamatest.FaultHeader, c.fault)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Errorf("call %d: %v", i, err)
				return
			}
			defer resp.Body.Close()
			sc := bufio.NewScanner(resp.Body)
			sc.Buffer(nil, 1<<20)
			lines := 0
			for sc.Scan() {
				lines++
				if c.disconnect && lines == 3 {
					cancel() // the client goes away mid-stream
					return
				}
				var final struct {
					Done      bool  `json:"done"`
					EvalCount int64 `json:"eval_count"`
					Usage     *struct {
						CompletionTokens int64 `json:"completion_tokens"`
					} `json:"usage"`
				}
				if json.Unmarshal(sc.Bytes(), &final) == nil && final.Done {
					completion.Store(i, final.EvalCount)
				}
				if final.Usage != nil {
					completion.Store(i, final.Usage.CompletionTokens)
				}
			}
		}()
	}
	wg.Wait()

	want := uint64(len(calls))
	var st metrics.ResourceStats
	deadline := time.Now().Add(5 * time.Second)
	for {
		st = m.Stats()
		if st.RequestsTotal >= want || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond) // records arrive when streams close
	}
	if st.RequestsTotal != want {
		t.Fatalf("requests_total = %d, want %d", st.RequestsTotal, want)
	}
	if st.DurationMS.Count != want {
		t.Errorf("duration histogram count = %d, want %d", st.DurationMS.Count, want)
	}
	if got := uint64(fake.Stats().Requests); got != want {
		t.Errorf("fake saw %d requests, want %d", got, want)
	}
	if st.RequestsByClass["5xx"] != 1 {
		t.Errorf("5xx = %d, want 1 (%v)", st.RequestsByClass["5xx"], st.RequestsByClass)
	}
	snap := p.Snapshot()
	if st.ClientDisconnects != snap.ClientDisconnects || st.ClientDisconnects == 0 {
		t.Errorf("client_disconnects = %d, pool says %d, want equal and > 0", st.ClientDisconnects, snap.ClientDisconnects)
	}
	// Streamed and whole native replies and OpenAI usage all carry tokens.
	var native int64
	for _, i := range []int{0, 1, 2, 4} {
		v, ok := completion.Load(i)
		if !ok {
			t.Errorf("call %d: no final chunk seen", i)
			continue
		}
		native += v.(int64)
	}
	if got := st.Models["llama3.2"].CompletionTokens; got != uint64(native) {
		t.Errorf("llama3.2 completion tokens = %d, want the %d the clients saw", got, native)
	}
	if got := st.Models["llama3.2"].Requests; got != 6 {
		t.Errorf("llama3.2 requests = %d, want 6", got)
	}
	if st.Models["qwen2.5:0.5b"].Requests != 1 {
		t.Errorf("qwen2.5:0.5b requests = %d, want 1", st.Models["qwen2.5:0.5b"].Requests)
	}

	var ctx fasthttp.RequestCtx
	m.Handler()(&ctx)
	body := string(ctx.Response.Body())
	for _, line := range []string{
		fmt.Sprintf("vega_client_disconnects_total %d", snap.ClientDisconnects),
		fmt.Sprintf("vega_pool_requests_total{upstream=%q} %d", snap.Upstream, snap.RequestsMade),
		fmt.Sprintf(`vega_llm_tokens_total{kind="completion",model="qwen2.5:0.5b"} %d`, st.Models["qwen2.5:0.5b"].CompletionTokens),
	} {
		if !strings.Contains(body, line) {
			t.Errorf("scrape lacks %q", line)
		}
	}
}

// startStack starts a fake Ollama, a pool and a gateway on loopback ports;
// with observe the gateway reports to a fresh Metrics.
func startStack(t testing.TB, tokenDelay time.Duration, observe bool) (*ollamatest.Server, *pool.Pool, *metrics.Metrics, string) {
	t.Helper()
	fake, err := ollamatest.NewServer(ollamatest.Config{TokenDelay: tokenDelay})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fake.Close() })
	p, err := pool.New(pool.UpstreamConfig{URL: fake.URL()}, pool.Config{})
	if err != nil {
		t.Fatal(err)
	}
	gw, err := gateway.New(gateway.Config{}, gateway.ChatConfig{}, access.Config{}, fleet.Single(p), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	m, err := metrics.New(metrics.Config{}, "test", func() []pool.Snapshot { return []pool.Snapshot{p.Snapshot()} })
	if err != nil {
		t.Fatal(err)
	}
	if observe {
		gw.SetObserver(m.Observe)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = gw.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = gw.Shutdown(ctx)
		p.Close()
		<-done
	})
	return fake, p, m, "http://" + ln.Addr().String()
}

// BenchmarkGatewayMetrics compares a streamed /api/chat through the
// gateway with the metrics observer off and on, in one run.
func BenchmarkGatewayMetrics(b *testing.B) {
	body := []byte(`{"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}`)
	for _, observe := range []bool{false, true} {
		b.Run(fmt.Sprintf("metrics=%v", observe), func(b *testing.B) {
			_, _, _, base := startStack(b, 0, observe)
			c := &fasthttp.Client{MaxConnsPerHost: 64}
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
				defer fasthttp.ReleaseRequest(req)
				defer fasthttp.ReleaseResponse(resp)
				for pb.Next() {
					req.Reset()
					req.SetRequestURI(base + "/api/chat")
					req.Header.SetMethod("POST")
					req.SetBody(body)
					if err := c.Do(req, resp); err != nil || resp.StatusCode() != 200 {
						b.Errorf("chat: %v %d", err, resp.StatusCode())
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
		})
	}
}
