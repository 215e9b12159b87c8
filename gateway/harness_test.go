package gateway_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/vega-gateway/vega-gateway/access"
	"github.com/vega-gateway/vega-gateway/fleet"
	"github.com/vega-gateway/vega-gateway/gateway"
	"github.com/vega-gateway/vega-gateway/ollamatest"
	"github.com/vega-gateway/vega-gateway/otelx"
	"github.com/vega-gateway/vega-gateway/pool"
)

// syncBuffer collects log lines from the gateway under test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// lines returns every log line as a decoded JSON object.
func (s *syncBuffer) lines(t *testing.T) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(s.String()), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("log line is not JSON: %q", l)
		}
		out = append(out, m)
	}
	return out
}

// accessLines returns the access log lines ("request") for a correlation ID.
func (s *syncBuffer) accessLines(t *testing.T, id string) []map[string]any {
	var out []map[string]any
	for _, m := range s.lines(t) {
		if m["message"] == "request" && m["correlation_id"] == id {
			out = append(out, m)
		}
	}
	return out
}

// env is a gateway on a loopback port in front of a fake Ollama.
type env struct {
	t    testing.TB
	fake *ollamatest.Server
	pool *pool.Pool
	gw   *gateway.Gateway
	url  string
	logs *syncBuffer
}

type envOptions struct {
	fake     ollamatest.Config
	upstream pool.UpstreamConfig
	pool     pool.Config
	gateway  gateway.Config
	chat     gateway.ChatConfig
	auth     access.Config
	noFake   bool   // point the upstream at upstreamURL instead
	upURL    string // with noFake
	level    zerolog.Level
	tracer   *otelx.Tracer // nil: tracing off
}

func startEnv(t testing.TB, o envOptions) *env {
	t.Helper()
	e := &env{t: t, logs: &syncBuffer{}}
	if !o.noFake {
		fake, err := ollamatest.NewServer(o.fake)
		if err != nil {
			t.Fatalf("fake ollama: %v", err)
		}
		t.Cleanup(func() { fake.Close() })
		e.fake = fake
		o.upstream.URL = fake.URL()
	} else {
		o.upstream.URL = o.upURL
	}
	p, err := pool.New(o.upstream, o.pool)
	if err != nil {
		t.Fatalf("pool.New: %v", err)
	}
	e.pool = p
	log := zerolog.New(e.logs).Level(o.level)
	gw, err := gateway.New(o.gateway, o.chat, o.auth, fleet.Single(p), log)
	if err != nil {
		t.Fatalf("gateway.New: %v", err)
	}
	e.gw = gw
	gw.SetTracer(o.tracer)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = gw.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := contextWithTimeout(2 * time.Second)
		defer cancel()
		_ = gw.Shutdown(ctx)
		p.Close()
		<-done
	})
	e.url = "http://" + ln.Addr().String()
	return e
}

// do sends a request to the gateway and returns status, headers and body.
func (e *env) do(method, path string, body string, hdr map[string]string) (int, http.Header, []byte) {
	e.t.Helper()
	req, err := http.NewRequest(method, e.url+path, strings.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := testClient.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return resp.StatusCode, resp.Header, b
}

var testClient = &http.Client{Timeout: 20 * time.Second}

// waitFor polls cond every 10 ms for up to d.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func decodeJSON(t *testing.T, b []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("not JSON: %v: %q", err, b)
	}
	return m
}

// wantOutcome waits for the one access line of a correlation ID and checks
// its outcome (RELIABILITY.md §1's Log column).
func (e *env) wantOutcome(t *testing.T, id, outcome string) {
	t.Helper()
	var lines []map[string]any
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		if lines = e.logs.accessLines(t, id); len(lines) > 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if len(lines) != 1 || lines[0]["outcome"] != outcome {
		t.Fatalf("access lines for %s: %v, want one with outcome %q", id, lines, outcome)
	}
}

// openStream POSTs a streaming body to path and returns the response and
// its reader once the first line has arrived (the stream is running).
func (e *env) openStream(t *testing.T, path, body string) (*http.Response, *bufio.Reader) {
	t.Helper()
	resp, err := http.Post(e.url+path, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(resp.Body)
	if _, err := r.ReadString('\n'); err != nil {
		resp.Body.Close()
		t.Fatal(err)
	}
	return resp, r
}
