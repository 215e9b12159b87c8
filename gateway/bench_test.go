package gateway_test

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/valyala/fasthttp"

	"github.com/vega-gateway/vega-gateway/access"
	"github.com/vega-gateway/vega-gateway/fleet"
	"github.com/vega-gateway/vega-gateway/gateway"
	"github.com/vega-gateway/vega-gateway/ollamatest"
	"github.com/vega-gateway/vega-gateway/otelx"
	"github.com/vega-gateway/vega-gateway/pool"
)

// The benchmarks below drive real sockets on loopback: a fasthttp client →
// the gateway → the fake Ollama. Each Proxy* benchmark has a Direct*
// twin (client → fake) in the same file so the gateway's share can be read
// as a ratio or a difference, allocations included:
//
//	go test -run '^$' -bench . -benchtime 100x ./gateway
//
// The fake is a net/http server in the same process, so its cost (and its
// allocations) are in every number; only differences against Direct* are
// the gateway's.

var (
	benchChatBody   = []byte(`{"model":"llama3.2","messages":[{"role":"user","content":"hi"}],"stream":false}`)
	benchStreamBody = []byte(`{"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}`)
	benchDoneTrue   = []byte(`"done":true`)
)

// benchStreamTokens is the length of the streamed reply in the stream
// benchmarks: long enough that per-request costs fade behind per-frame ones.
const benchStreamTokens = 200

// benchTarget is a server a benchmark sends requests to.
type benchTarget struct {
	fake *ollamatest.Server
	addr string // host:port to send to: the gateway, or the fake itself
}

// startBenchFake starts a fake Ollama for a benchmark and stops it at the end.
func startBenchFake(b *testing.B, cfg ollamatest.Config) *ollamatest.Server {
	b.Helper()
	cfg.RecordLimit = 1 // keep no history: it would grow with b.N
	fake, err := ollamatest.NewServer(cfg)
	if err != nil {
		b.Fatalf("fake ollama: %v", err)
	}
	b.Cleanup(func() { fake.Close() })
	return fake
}

// startBenchGateway puts a gateway, logging to io.Discard at level, in front
// of fake, with the pool sized for the benchmark's concurrency.
func startBenchGateway(b *testing.B, fake *ollamatest.Server, level zerolog.Level) benchTarget {
	b.Helper()
	return startBenchGatewayTraced(b, fake, level, nil)
}

// startBenchGatewayTraced is startBenchGateway exporting spans through tr.
func startBenchGatewayTraced(b *testing.B, fake *ollamatest.Server, level zerolog.Level, tr *otelx.Tracer) benchTarget {
	b.Helper()
	p, err := pool.New(pool.UpstreamConfig{URL: fake.URL()}, pool.Config{MaxConnections: 256})
	if err != nil {
		b.Fatalf("pool.New: %v", err)
	}
	log := zerolog.New(io.Discard).Level(level).With().Timestamp().Logger()
	gw, err := gateway.New(gateway.Config{}, gateway.ChatConfig{}, access.Config{}, fleet.Single(p), log)
	if err != nil {
		b.Fatalf("gateway.New: %v", err)
	}
	gw.SetTracer(tr)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = gw.Serve(ln) }()
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = gw.Shutdown(ctx)
		p.Close()
		<-done
	})
	return benchTarget{fake: fake, addr: ln.Addr().String()}
}

// benchClient is a keep-alive fasthttp client for one target.
func benchClient(addr string, stream bool) *fasthttp.HostClient {
	return &fasthttp.HostClient{
		Addr:               addr,
		MaxConns:           64,
		ReadTimeout:        10 * time.Second,
		WriteTimeout:       10 * time.Second,
		StreamResponseBody: stream,
	}
}

// chatOnce sends one non-streaming /api/chat and checks the reply.
func chatOnce(b *testing.B, c *fasthttp.HostClient, req *fasthttp.Request, resp *fasthttp.Response) {
	if err := c.Do(req, resp); err != nil {
		b.Fatalf("do: %v", err)
	}
	if resp.StatusCode() != fasthttp.StatusOK || !bytes.Contains(resp.Body(), benchDoneTrue) {
		b.Fatalf("status %d, body %q", resp.StatusCode(), resp.Body())
	}
}

func newChatRequest(addr string, body []byte) *fasthttp.Request {
	req := fasthttp.AcquireRequest()
	req.Header.SetMethod(fasthttp.MethodPost)
	req.SetRequestURI("http://" + addr + "/api/chat")
	req.Header.SetContentType("application/json")
	req.SetBodyRaw(body)
	return req
}

// benchNonStream runs b.N sequential non-streaming chats against addr.
func benchNonStream(b *testing.B, addr string) {
	c := benchClient(addr, false)
	defer c.CloseIdleConnections()
	req := newChatRequest(addr, benchChatBody)
	defer fasthttp.ReleaseRequest(req)
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseResponse(resp)
	chatOnce(b, c, req, resp) // warm the keep-alive connections
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		chatOnce(b, c, req, resp)
	}
}

// BenchmarkDirectNonStream is the baseline: client → fake, no gateway.
func BenchmarkDirectNonStream(b *testing.B) {
	fake := startBenchFake(b, ollamatest.Config{})
	benchNonStream(b, fake.Addr())
}

// BenchmarkProxyNonStream is one small non-streaming /api/chat through the
// gateway, its access log on at the default level (to io.Discard).
func BenchmarkProxyNonStream(b *testing.B) {
	fake := startBenchFake(b, ollamatest.Config{})
	benchNonStream(b, startBenchGateway(b, fake, zerolog.InfoLevel).addr)
}

// BenchmarkProxyNonStreamTraced is BenchmarkProxyNonStream with every
// request's spans exported to a collector that takes connections and never
// answers (spans pile up in the queue and are dropped): the difference is
// what making the spans costs a request.
func BenchmarkProxyNonStreamTraced(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close() // connections accepted by the kernel's backlog are never read
	tr, err := otelx.New(otelx.Config{Endpoint: "http://" + ln.Addr().String()}, func(string) string { return "" })
	if err != nil {
		b.Fatal(err)
	}
	defer func() {
		b.StopTimer() // the queue is full of spans no one takes: drop them
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
		defer cancel()
		_ = tr.Shutdown(ctx)
	}()
	otelx.LogErrors(zerolog.Nop()) // the failed exports are expected
	fake := startBenchFake(b, ollamatest.Config{})
	benchNonStream(b, startBenchGatewayTraced(b, fake, zerolog.InfoLevel, tr).addr)
}

// BenchmarkAccessLog is the cost of one access-log line: the same proxied
// request with the log at info (to io.Discard) and disabled; the difference
// of the two is the line.
func BenchmarkAccessLog(b *testing.B) {
	for _, tc := range []struct {
		name  string
		level zerolog.Level
	}{
		{"info", zerolog.InfoLevel},
		{"disabled", zerolog.Disabled},
	} {
		b.Run(tc.name, func(b *testing.B) {
			fake := startBenchFake(b, ollamatest.Config{})
			benchNonStream(b, startBenchGateway(b, fake, tc.level).addr)
		})
	}
}

// streamOnce reads one whole NDJSON chat stream and returns its frame count.
func streamOnce(b *testing.B, c *fasthttp.HostClient, req *fasthttp.Request, resp *fasthttp.Response, br *bufio.Reader) int {
	if err := c.Do(req, resp); err != nil {
		b.Fatalf("do: %v", err)
	}
	if resp.StatusCode() != fasthttp.StatusOK {
		b.Fatalf("status %d", resp.StatusCode())
	}
	br.Reset(resp.BodyStream())
	frames, done := 0, false
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 {
			frames++
			done = bytes.Contains(line, benchDoneTrue)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			b.Fatalf("read frame %d: %v", frames, err)
		}
	}
	_ = resp.CloseBodyStream()
	if !done {
		b.Fatalf("stream of %d frames did not end with done:true", frames)
	}
	return frames
}

// benchStream runs b.N sequential streams of benchStreamTokens tokens with
// no pacing and reports the cost per frame.
func benchStream(b *testing.B, addr string) {
	c := benchClient(addr, true)
	defer c.CloseIdleConnections()
	req := newChatRequest(addr, benchStreamBody)
	defer fasthttp.ReleaseRequest(req)
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseResponse(resp)
	br := bufio.NewReaderSize(nil, 64<<10)
	streamOnce(b, c, req, resp, br)
	frames := 0
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		frames += streamOnce(b, c, req, resp, br)
	}
	b.StopTimer()
	if frames > 0 {
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(frames), "ns/frame")
		b.ReportMetric(float64(frames)/float64(b.N), "frames/op")
	}
}

// BenchmarkDirectStream is the baseline stream: client → fake.
func BenchmarkDirectStream(b *testing.B) {
	fake := startBenchFake(b, ollamatest.Config{Tokens: benchStreamTokens})
	benchStream(b, fake.Addr())
}

// BenchmarkProxyStream is a stream of benchStreamTokens frames through the
// gateway, frame by frame; ns/frame is the metric to compare.
func BenchmarkProxyStream(b *testing.B) {
	fake := startBenchFake(b, ollamatest.Config{Tokens: benchStreamTokens})
	benchStream(b, startBenchGateway(b, fake, zerolog.InfoLevel).addr)
}
