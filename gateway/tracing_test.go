package gateway_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/ollama/ollama/api"
	"github.com/rs/zerolog"

	"github.com/vega-gateway/vega-gateway/fleet"
	"github.com/vega-gateway/vega-gateway/ollamatest"
	"github.com/vega-gateway/vega-gateway/otelx"
	"github.com/vega-gateway/vega-gateway/otelx/otlptest"
	"github.com/vega-gateway/vega-gateway/pool"
)

// newTestTracer exports to rcv's URL, ignoring the process's OTEL_*
// variables; it is shut down with the test.
func newTestTracer(t *testing.T, endpoint string) *otelx.Tracer {
	t.Helper()
	tr, err := otelx.New(otelx.Config{Endpoint: endpoint}, func(string) string { return "" })
	if err != nil || tr == nil {
		t.Fatalf("otelx.New: %v, %v", tr, err)
	}
	otelx.LogErrors(zerolog.Nop()) // a test's collector may be gone before the SDK's last export
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = tr.Shutdown(ctx)
	})
	return tr
}

// headerTransport adds headers to every request of a client library that
// has no option for them (the Ollama api client).
type headerTransport map[string]string

func (h headerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	for k, v := range h {
		r.Header.Set(k, v)
	}
	return http.DefaultTransport.RoundTrip(r)
}

// spansOf returns the received spans of a trace, by name.
func spansOf(spans []otlptest.Span, traceID string) map[string][]otlptest.Span {
	out := map[string][]otlptest.Span{}
	for _, s := range spans {
		if s.TraceID == traceID {
			out[s.Name] = append(out[s.Name], s)
		}
	}
	return out
}

const secretPrompt = "the-prompt-must-never-leave-the-gateway"

func TestTraceOfAStreamedChat(t *testing.T) {
	rcv := otlptest.NewReceiver()
	defer rcv.Close()
	tr := newTestTracer(t, rcv.URL())
	// One upstream connection, held by another stream when the traced
	// request arrives: it queues, and its trace shows the wait.
	e := startEnv(t, envOptions{tracer: tr, pool: pool.Config{MaxConnections: 1}, fake: ollamatest.Config{TokenDelay: 5 * time.Millisecond}})
	blocker, blockerBody := e.openStream(t, "/api/chat", chatBody("llama3.2", "hold the connection", true))
	defer blocker.Body.Close()

	const clientTrace, clientSpan = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	base, _ := url.Parse(e.url)
	client := api.NewClient(base, &http.Client{Transport: headerTransport{
		"traceparent": "00-" + clientTrace + "-" + clientSpan + "-01", "X-Correlation-ID": "traced-chat-1",
	}})
	stream := true
	var final api.ChatResponse
	frames := 0
	chatDone := make(chan error, 1)
	go func() {
		chatDone <- client.Chat(context.Background(), &api.ChatRequest{
			Model: "llama3.2", Stream: &stream,
			Messages: []api.Message{{Role: "user", Content: secretPrompt}},
			Options:  map[string]any{"temperature": 0.25, "seed": 42, "num_predict": 64},
		}, func(r api.ChatResponse) error {
			frames++
			if r.Done {
				final = r
			}
			return nil
		})
	}()
	waitFor(t, 5*time.Second, "the traced request queued", func() bool { return e.pool.Snapshot().RequestsWaiting == 1 })
	if _, err := io.Copy(io.Discard, blockerBody); err != nil {
		t.Fatal(err)
	}
	var err error
	select {
	case err = <-chatDone:
	case <-time.After(10 * time.Second):
		t.Fatal("the traced chat did not finish")
	}
	if err != nil || !final.Done || frames < 2 {
		t.Fatalf("chat: err %v, %d frames, final %+v", err, frames, final)
	}
	if err := tr.ForceFlush(context.Background()); err != nil {
		t.Fatal(err)
	}
	spans, ok := rcv.WaitFor(5*time.Second, func(s []otlptest.Span) bool { return len(spansOf(s, clientTrace)) == 3 })
	byName := spansOf(spans, clientTrace)
	if !ok {
		t.Fatalf("spans of the trace: %v, want the server, attempt and pool wait spans", byName)
	}
	backend := e.fake.URL()[len("http://"):] // a lone backend is named by its host:port
	server, attempt, wait := byName["POST /api/chat"], byName["upstream "+backend], byName["pool wait"]
	if len(server) != 1 || len(attempt) != 1 || len(wait) != 1 {
		t.Fatalf("spans by name: %v", byName)
	}
	s, a, w := server[0], attempt[0], wait[0]
	for _, sp := range []otlptest.Span{s, a, w} { // go test -v prints the trace as received
		b, _ := json.MarshalIndent(sp, "", "  ")
		t.Logf("%s", b)
	}

	// Links: the client's span → server → attempt → pool wait.
	for _, c := range []struct {
		name, got, want string
	}{
		{"server parent", s.ParentSpanID, clientSpan},
		{"attempt parent", a.ParentSpanID, s.SpanID},
		{"pool wait parent", w.ParentSpanID, a.SpanID},
		{"server kind", s.Kind, "SERVER"},
		{"attempt kind", a.Kind, "CLIENT"},
		{"service", s.Service, otelx.DefaultServiceName},
	} {
		if c.got != c.want {
			t.Errorf("%s: got %q, want %q", c.name, c.got, c.want)
		}
	}
	// The access line names the same trace.
	line := e.logs.accessLines(t, "traced-chat-1")
	if len(line) != 1 || line[0]["trace_id"] != clientTrace {
		t.Errorf("access line %v: want trace_id %s", line, clientTrace)
	}
	// Upstream, the parent is the attempt span.
	reqs := e.fake.Requests()
	if got, want := reqs[len(reqs)-1].Header.Get("traceparent"), "00-"+clientTrace+"-"+a.SpanID+"-01"; got != want {
		t.Errorf("upstream traceparent %q, want %q", got, want)
	}

	want := map[string]any{
		"gen_ai.operation.name":          "chat",
		"gen_ai.provider.name":           "ollama",
		"gen_ai.request.model":           "llama3.2",
		"gen_ai.response.model":          final.Model,
		"gen_ai.usage.input_tokens":      int64(final.PromptEvalCount),
		"gen_ai.usage.output_tokens":     int64(final.EvalCount),
		"gen_ai.response.finish_reasons": []any{final.DoneReason},
		"gen_ai.request.temperature":     0.25,
		"gen_ai.request.seed":            int64(42),
		"gen_ai.request.max_tokens":      int64(64),
		"http.request.method":            "POST",
		"http.route":                     "/api/chat",
		"http.response.status_code":      int64(200),
		"vega.correlation_id":            "traced-chat-1",
		"vega.backend":                   backend,
		"vega.outcome":                   "ok",
		"vega.attempts":                  int64(1),
	}
	for k, v := range want {
		if got := fmt.Sprint(s.Attrs[k]); got != fmt.Sprint(v) {
			t.Errorf("server span %s = %v, want %v", k, s.Attrs[k], v)
		}
	}
	if ttfc, _ := s.Attrs["gen_ai.response.time_to_first_chunk"].(float64); ttfc <= 0 || ttfc > s.End.Sub(s.Start).Seconds() {
		t.Errorf("time_to_first_chunk %v: want within the span's %s", s.Attrs["gen_ai.response.time_to_first_chunk"], s.End.Sub(s.Start))
	}
	if qw, _ := s.Attrs["vega.queue_wait_ms"].(float64); qw <= 0 || w.Attrs["vega.queue_wait_ms"] != qw {
		t.Errorf("queue wait %v on the server span, %v on the pool wait span: want the same, above 0", s.Attrs["vega.queue_wait_ms"], w.Attrs["vega.queue_wait_ms"])
	}
	if got, want := w.End.Sub(w.Start).Seconds()*1000, s.Attrs["vega.queue_wait_ms"].(float64); got < want-0.01 || got > want+0.01 {
		t.Errorf("pool wait span lasts %.3f ms, want vega.queue_wait_ms %.3f", got, want)
	}
	if s.StatusCode == "ERROR" || a.StatusCode == "ERROR" {
		t.Errorf("statuses %s / %s, want no error", s.StatusCode, a.StatusCode)
	}
	if !(s.Start.Before(a.Start) || s.Start.Equal(a.Start)) || a.End.After(s.End) || w.End.After(a.End) {
		t.Errorf("timings do not nest: server %v–%v, attempt %v–%v, wait %v–%v", s.Start, s.End, a.Start, a.End, w.Start, w.End)
	}
	// Never the prompt, nor any part of the completion.
	for _, b := range rcv.Bodies() {
		if strings.Contains(string(b), secretPrompt) || (final.Message.Content != "" && strings.Contains(string(b), final.Message.Content)) {
			t.Fatal("an export carries the prompt or the completion")
		}
	}
}

func TestTraceGatewayBeginsTheTraceWithTheLoggedID(t *testing.T) {
	rcv := otlptest.NewReceiver()
	defer rcv.Close()
	tr := newTestTracer(t, rcv.URL())
	e := startEnv(t, envOptions{tracer: tr})
	st, _, body := e.do("POST", "/api/generate", `{"model":"llama3.2","prompt":"`+secretPrompt+`","stream":false,"options":{"temperature":0}}`,
		map[string]string{"X-Correlation-ID": "no-parent"})
	if st != 200 {
		t.Fatalf("generate: %d %s", st, body)
	}
	e.wantOutcome(t, "no-parent", "ok")
	traceID, _ := e.logs.accessLines(t, "no-parent")[0]["trace_id"].(string)
	_ = tr.ForceFlush(context.Background())
	spans, ok := rcv.WaitFor(5*time.Second, func(s []otlptest.Span) bool { return len(spansOf(s, traceID)["POST /api/generate"]) == 1 })
	if !ok {
		t.Fatalf("no server span in trace %s: %v", traceID, spans)
	}
	s := spansOf(spans, traceID)["POST /api/generate"][0]
	if s.ParentSpanID != "" || s.Attrs["gen_ai.operation.name"] != "text_completion" || s.Attrs["gen_ai.request.temperature"] != 0.0 {
		t.Errorf("server span %+v: want a root text_completion span with temperature 0", s)
	}
}

func TestTraceUnsampledClientIsNotExportedButPropagated(t *testing.T) {
	rcv := otlptest.NewReceiver()
	defer rcv.Close()
	tr := newTestTracer(t, rcv.URL())
	e := startEnv(t, envOptions{tracer: tr})
	const unsampled = "0af7651916cd43dd8448eb211c80319c"
	st, _, _ := e.do("POST", "/api/chat", chatBody("llama3.2", "hi", false),
		map[string]string{"traceparent": "00-" + unsampled + "-b7ad6b7169203331-00", "X-Correlation-ID": "unsampled"})
	// A sampled one after it: once its spans are in, the unsampled
	// request's would be too.
	st2, _, _ := e.do("POST", "/api/chat", chatBody("llama3.2", "hi", false),
		map[string]string{"traceparent": "00-" + strings.Repeat("1", 32) + "-b7ad6b7169203331-01", "X-Correlation-ID": "sampled"})
	if st != 200 || st2 != 200 {
		t.Fatalf("statuses %d, %d", st, st2)
	}
	_ = tr.ForceFlush(context.Background())
	spans, ok := rcv.WaitFor(5*time.Second, func(s []otlptest.Span) bool { return len(spansOf(s, strings.Repeat("1", 32))) == 2 })
	if !ok || len(spansOf(spans, unsampled)) != 0 {
		t.Fatalf("spans %v: want the sampled trace's two (server, attempt) and none of the unsampled", spans)
	}
	var tp string
	for _, r := range e.fake.Requests() {
		if r.Header.Get("X-Correlation-ID") == "unsampled" {
			tp = r.Header.Get("traceparent")
		}
	}
	if !strings.HasPrefix(tp, "00-"+unsampled+"-") || !strings.HasSuffix(tp, "-00") || strings.Contains(tp, "b7ad6b7169203331") {
		t.Errorf("upstream traceparent %q: want the client's trace, unsampled, under a span of the gateway's", tp)
	}
}

func TestTraceFailoverHasAnAttemptSpanPerBackend(t *testing.T) {
	rcv := otlptest.NewReceiver()
	defer rcv.Close()
	tr := newTestTracer(t, rcv.URL())
	e := startRoutingEnv(t, routingOptions{models: [][]string{{"llama3.2"}, {"llama3.2"}}, noRun: true, tracer: tr,
		routing: fleet.Config{Policy: fleet.PolicyRoundRobin, BreakerFailures: 100}})
	e.fakes[0].Close() // gpu-a refuses connections
	var line map[string]any
	for i := range 4 {
		id := fmt.Sprintf("trace-fo-%d", i)
		st, _, body := e.do("POST", "/api/chat", chatBody("llama3.2", "hi", i%2 == 0), map[string]string{"X-Correlation-ID": id})
		if st != 200 {
			t.Fatalf("request %d: %d %s", i, st, body)
		}
		if l := e.accessLine(t, id); l["attempts"] == float64(2) {
			line = l
			break
		}
	}
	if line == nil {
		t.Fatal("no request met gpu-a's refusal")
	}
	traceID := line["trace_id"].(string)
	_ = tr.ForceFlush(context.Background())
	spans, ok := rcv.WaitFor(5*time.Second, func(s []otlptest.Span) bool {
		m := spansOf(s, traceID)
		return len(m["upstream gpu-a"]) == 1 && len(m["upstream gpu-b"]) == 1 && len(m["POST /api/chat"]) == 1
	})
	m := spansOf(spans, traceID)
	if !ok {
		t.Fatalf("spans of %s: %v", traceID, m)
	}
	server, a, b := m["POST /api/chat"][0], m["upstream gpu-a"][0], m["upstream gpu-b"][0]
	if a.ParentSpanID != server.SpanID || b.ParentSpanID != server.SpanID {
		t.Errorf("attempt parents %s, %s: want the server span %s", a.ParentSpanID, b.ParentSpanID, server.SpanID)
	}
	if a.StatusCode != "ERROR" || a.Attrs["vega.outcome"] != "upstream_connect_failed" || a.Attrs["vega.attempt"] != int64(1) {
		t.Errorf("gpu-a attempt %+v: want an error, upstream_connect_failed, attempt 1", a)
	}
	if b.StatusCode == "ERROR" || b.Attrs["vega.outcome"] != "ok" || b.Attrs["vega.attempt"] != int64(2) || b.Attrs["http.response.status_code"] != int64(200) {
		t.Errorf("gpu-b attempt %+v: want ok, attempt 2, status 200", b)
	}
	if server.Attrs["vega.backend"] != "gpu-b" || server.Attrs["vega.route_reason"] != "failover" || server.Attrs["vega.attempts"] != int64(2) {
		t.Errorf("server span %v: want backend gpu-b, reason failover, 2 attempts", server.Attrs)
	}
}

// A collector that accepts connections and never answers: requests still
// succeed (how little they pay is measured by go run ./bench -otel).
func TestTraceSilentCollectorDoesNotFailRequests(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	held := make(chan net.Conn, 64)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			select {
			case held <- c:
			default:
				c.Close()
			}
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		close(held)
		for c := range held {
			c.Close()
		}
	})
	tr := newTestTracer(t, "http://"+ln.Addr().String())
	e := startEnv(t, envOptions{tracer: tr})
	for i := range 50 {
		id := fmt.Sprintf("silent-%d", i)
		st, _, body := e.do("POST", "/api/chat", chatBody("llama3.2", "hi", i%2 == 0), map[string]string{"X-Correlation-ID": id})
		if st != 200 || !strings.Contains(string(body), `"done":true`) {
			t.Fatalf("request %d: %d %s", i, st, body)
		}
		e.wantOutcome(t, id, "ok")
	}
}

func TestTraceGenAIAttributesByRoute(t *testing.T) {
	rcv := otlptest.NewReceiver()
	defer rcv.Close()
	tr := newTestTracer(t, rcv.URL())
	e := startEnv(t, envOptions{tracer: tr})
	for _, tt := range []struct {
		route, body string
		want        map[string]any
	}{
		{"/v1/chat/completions", `{"model":"llama3.2","messages":[{"role":"user","content":"hi"}],"max_tokens":32,"temperature":0.5,"seed":3}`,
			map[string]any{"gen_ai.operation.name": "chat", "gen_ai.request.max_tokens": int64(32), "gen_ai.request.temperature": 0.5,
				"gen_ai.request.seed": int64(3), "gen_ai.request.model": "llama3.2", "gen_ai.response.model": "llama3.2"}},
		{"/api/generate", `{"model":"llama3.2","prompt":"hi","stream":true,"options":{"num_predict":5}}`,
			map[string]any{"gen_ai.operation.name": "text_completion", "gen_ai.request.max_tokens": int64(5), "gen_ai.response.model": "llama3.2"}},
		{"/api/embed", `{"model":"llama3.2","input":"hi"}`,
			map[string]any{"gen_ai.operation.name": "embeddings", "gen_ai.request.model": "llama3.2"}},
		{"/api/tags", ``, map[string]any{"gen_ai.operation.name": nil, "http.route": "/api/tags"}},
	} {
		t.Run(tt.route, func(t *testing.T) {
			method := "POST"
			if tt.body == "" {
				method = "GET"
			}
			id := "route" + strings.ReplaceAll(tt.route, "/", "-")
			st, _, body := e.do(method, tt.route, tt.body, map[string]string{"X-Correlation-ID": id})
			if st != 200 {
				t.Fatalf("%s: %d %s", tt.route, st, body)
			}
			_ = tr.ForceFlush(context.Background())
			spans, ok := rcv.WaitFor(5*time.Second, func(s []otlptest.Span) bool {
				for _, sp := range s {
					if sp.Attrs["vega.correlation_id"] == id {
						return true
					}
				}
				return false
			})
			if !ok {
				t.Fatal("no server span")
			}
			for _, sp := range spans {
				if sp.Attrs["vega.correlation_id"] != id {
					continue
				}
				for k, v := range tt.want {
					if got := sp.Attrs[k]; fmt.Sprint(got) != fmt.Sprint(v) {
						t.Errorf("%s = %v, want %v", k, got, v)
					}
				}
			}
		})
	}
}
