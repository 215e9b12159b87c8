package gateway_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/ollama/ollama/api"
	"github.com/rs/zerolog"

	"github.com/vega-gateway/vega-gateway/access"
	"github.com/vega-gateway/vega-gateway/cache"
	"github.com/vega-gateway/vega-gateway/fleet"
	"github.com/vega-gateway/vega-gateway/gateway"
	"github.com/vega-gateway/vega-gateway/limits"
	"github.com/vega-gateway/vega-gateway/ollamatest"
	"github.com/vega-gateway/vega-gateway/otelx"
	"github.com/vega-gateway/vega-gateway/pool"
)

// routingEnv is a gateway on a loopback port in front of several fake
// Ollamas, named gpu-a, gpu-b, ...
type routingEnv struct {
	*env
	fakes []*ollamatest.Server
	fleet *fleet.Fleet
}

type routingOptions struct {
	models   [][]string // per fake: its installed models
	fake     ollamatest.Config
	routing  fleet.Config
	upstream pool.UpstreamConfig
	auth     access.Config
	// noRun: no health probes or catalogue refresh (the catalogue stays
	// unknown, the backends healthy, whatever happens to them).
	noRun  bool
	tracer *otelx.Tracer // nil: tracing off
	// cache, when set, turns the response cache on.
	cache *cache.Config
	// limits, when set, replaces the gateway's in-process default limiter.
	limits *limits.Config
}

func startRoutingEnv(t *testing.T, o routingOptions) *routingEnv {
	t.Helper()
	e := &routingEnv{env: &env{t: t, logs: &syncBuffer{}}}
	var members []fleet.Member
	for i, models := range o.models {
		cfg := o.fake
		cfg.Models = append([]string{}, models...) // non-nil: exactly these
		fake, err := ollamatest.NewServer(cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { fake.Close() })
		up := o.upstream
		up.URL = fake.URL()
		if up.HealthInterval == 0 {
			up.HealthInterval = 50 * time.Millisecond
		}
		p, err := pool.New(up, pool.Config{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p.Close)
		e.fakes = append(e.fakes, fake)
		members = append(members, fleet.Member{Name: fmt.Sprintf("gpu-%c", 'a'+i), Pool: p})
	}
	if o.routing.RefreshInterval == 0 {
		o.routing.RefreshInterval = 50 * time.Millisecond
	}
	f, err := fleet.New(o.routing, members)
	if err != nil {
		t.Fatal(err)
	}
	e.fleet, e.fake, e.pool = f, e.fakes[0], f.First().Pool
	gw, err := gateway.New(gateway.Config{}, gateway.ChatConfig{}, o.auth, f, zerolog.New(e.logs).Level(zerolog.InfoLevel))
	if err != nil {
		t.Fatal(err)
	}
	e.gw = gw
	gw.SetTracer(o.tracer)
	if o.cache != nil {
		c, err := cache.New(*o.cache)
		if err != nil {
			t.Fatal(err)
		}
		gw.SetCache(c)
	}
	if o.limits != nil {
		lim, err := limits.New(*o.limits, zerolog.Nop())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { lim.Close() })
		gw.SetLimiter(lim)
	}
	ctx, stop := context.WithCancel(context.Background())
	running := make(chan struct{})
	if o.noRun {
		close(running)
	} else {
		go func() { defer close(running); f.Run(ctx, nil) }()
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() { defer close(served); _ = gw.Serve(ln) }()
	t.Cleanup(func() {
		sctx, cancel := contextWithTimeout(2 * time.Second)
		defer cancel()
		_ = gw.Shutdown(sctx)
		stop()
		<-running
		<-served
	})
	e.url = "http://" + ln.Addr().String()
	if !o.noRun {
		waitFor(t, 5*time.Second, "every catalogue known", func() bool {
			for _, b := range f.Snapshot().Backends {
				if !b.CatalogueKnown {
					return false
				}
			}
			return true
		})
	}
	return e
}

// chatBody is a one-turn /api/chat body.
func chatBody(model, text string, stream bool) string {
	return fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":%q}],"stream":%v}`, model, text, stream)
}

// inferences counts the inference requests a fake received.
func inferences(f *ollamatest.Server) int {
	n := 0
	for _, r := range f.Requests() {
		if r.Path == "/api/chat" || r.Path == "/api/generate" || r.Path == "/v1/chat/completions" {
			n++
		}
	}
	return n
}

// accessLine waits for the one access line of id.
func (e *routingEnv) accessLine(t *testing.T, id string) map[string]any {
	t.Helper()
	var lines []map[string]any
	waitFor(t, 2*time.Second, "access line of "+id, func() bool {
		lines = e.logs.accessLines(t, id)
		return len(lines) > 0
	})
	if len(lines) != 1 {
		t.Fatalf("%d access lines for %s, want 1", len(lines), id)
	}
	return lines[0]
}

func TestFleetRoutesToTheBackendThatHasTheModel(t *testing.T) {
	e := startRoutingEnv(t, routingOptions{models: [][]string{{"llama3.2"}, {"qwen2.5:0.5b"}, {"nomic-embed-text"}}})
	client := api.NewClient(mustParseURL(t, e.url), http.DefaultClient)
	tests := []struct {
		model string
		fake  int
	}{{"qwen2.5:0.5b", 1}, {"llama3.2", 0}, {"llama3.2:latest", 0}}
	for _, tt := range tests {
		t.Run(tt.model, func(t *testing.T) {
			before := inferences(e.fakes[tt.fake])
			var reply strings.Builder
			stream := true
			err := client.Chat(context.Background(), &api.ChatRequest{Model: tt.model, Stream: &stream,
				Messages: []api.Message{{Role: "user", Content: "hello"}}}, func(r api.ChatResponse) error {
				reply.WriteString(r.Message.Content)
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if got := inferences(e.fakes[tt.fake]) - before; got != 1 {
				t.Fatalf("gpu-%c got %d requests, want 1", 'a'+tt.fake, got)
			}
			if reply.Len() == 0 {
				t.Fatal("empty reply")
			}
		})
	}
	// The embeddings model is only on gpu-c.
	st, _, body := e.do("POST", "/api/embed", `{"model":"nomic-embed-text","input":"x"}`, map[string]string{"X-Correlation-ID": "embed-1"})
	if st != 200 {
		t.Fatalf("embed: %d %s", st, body)
	}
	if line := e.accessLine(t, "embed-1"); line["backend"] != "gpu-c" || line["attempts"] != float64(1) {
		t.Fatalf("access line %v: want backend gpu-c, attempts 1", line)
	}
}

func TestFleetModelInstalledNowhereIs404WithoutARoundTrip(t *testing.T) {
	e := startRoutingEnv(t, routingOptions{models: [][]string{{"llama3.2"}, {"qwen2.5:0.5b"}}})
	tests := []struct {
		path, body, want string
	}{
		{"/api/chat", chatBody("nope", "hi", false), `"error":"model \"nope\" not found, try pulling it first"`},
		{"/api/generate", `{"model":"nope","prompt":"hi"}`, `model \"nope\" not found`},
		{"/v1/chat/completions", `{"model":"nope","messages":[{"role":"user","content":"hi"}]}`, `"message":"model \"nope\" not found, try pulling it first"`},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			st, h, body := e.do("POST", tt.path, tt.body, nil)
			if st != 404 || !strings.Contains(string(body), tt.want) || !strings.Contains(string(body), h.Get("X-Correlation-ID")) {
				t.Fatalf("got %d %s, want 404 with %s and the correlation ID", st, body, tt.want)
			}
		})
	}
	for i, f := range e.fakes {
		if n := inferences(f); n != 0 {
			t.Fatalf("gpu-%c got %d inference requests, want none", 'a'+i, n)
		}
	}
}

func TestFleetFailover(t *testing.T) {
	all := [][]string{{"llama3.2"}, {"llama3.2"}, {"llama3.2"}}
	tests := []struct {
		name string
		// break gpu-a
		setup func(t *testing.T, e *routingEnv)
	}{
		{"connect refused", func(t *testing.T, e *routingEnv) { e.fakes[0].Close() }},
		{"busy 503", func(t *testing.T, e *routingEnv) {
			if err := e.fakes[0].SetDefaultFault("fail_status=503"); err != nil {
				t.Fatal(err)
			}
		}},
		{"reset on accept", func(t *testing.T, e *routingEnv) {
			if err := e.fakes[0].SetConnFault(ollamatest.ConnFaultRSTOnAccept); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Without probes or refreshes the fleet keeps choosing gpu-a,
			// so every failure is met on the request path.
			e := startRoutingEnv(t, routingOptions{models: all, noRun: true, routing: fleet.Config{Policy: fleet.PolicyRoundRobin, BreakerFailures: 100}})
			tt.setup(t, e)
			failovers := 0
			for i := range 9 {
				id := fmt.Sprintf("fo-%d", i)
				stream := i%2 == 0
				st, _, body := e.do("POST", "/api/chat", chatBody("llama3.2", "hi", stream), map[string]string{"X-Correlation-ID": id})
				if st != 200 || !strings.Contains(string(body), `"done":true`) {
					t.Fatalf("request %d: %d %s", i, st, body)
				}
				line := e.accessLine(t, id)
				if line["route_reason"] == "failover" {
					failovers++
					if line["attempts"] != float64(2) || line["backend"] == "gpu-a" {
						t.Fatalf("failover line %v: want attempts 2 on another backend", line)
					}
				}
			}
			if failovers == 0 {
				t.Fatal("no request met gpu-a's failure")
			}
		})
	}
}

func TestFleetNeverRetriesOnceABytePassed(t *testing.T) {
	e := startRoutingEnv(t, routingOptions{models: [][]string{{"llama3.2"}, {"llama3.2"}}, noRun: true, routing: fleet.Config{Policy: fleet.PolicyRoundRobin}})
	for _, f := range e.fakes {
		if err := f.SetDefaultFault("die_after=2"); err != nil {
			t.Fatal(err)
		}
	}
	st, _, body := e.do("POST", "/api/chat", chatBody("llama3.2", "hi", true), nil)
	if st != 200 || !strings.Contains(string(body), `"error"`) || strings.Contains(string(body), `"done":true`) {
		t.Fatalf("got %d %s: want a stream ended by an error record", st, body)
	}
	if n := inferences(e.fakes[0]) + inferences(e.fakes[1]); n != 1 {
		t.Fatalf("%d upstream requests, want 1 (no retry after the first byte)", n)
	}
	// A client error is not retried either.
	for _, f := range e.fakes {
		_ = f.SetDefaultFault("fail_status=400")
	}
	st, _, _ = e.do("POST", "/api/chat", chatBody("llama3.2", "hi", false), nil)
	if n := inferences(e.fakes[0]) + inferences(e.fakes[1]); st != 400 || n != 2 {
		t.Fatalf("status %d after %d upstream requests, want 400 after 2", st, n)
	}
}

func TestFleetBreakerTakesAFailingBackendOut(t *testing.T) {
	e := startRoutingEnv(t, routingOptions{models: [][]string{{"llama3.2"}, {"llama3.2"}},
		routing: fleet.Config{Policy: fleet.PolicyRoundRobin, BreakerFailures: 2, BreakerBackoff: 200 * time.Millisecond}})
	if err := e.fakes[0].SetDefaultFault("fail_status=500"); err != nil {
		t.Fatal(err)
	}
	// 5xx is relayed (nothing to fail over to once an answer came) but counts.
	for range 4 {
		e.do("POST", "/api/chat", chatBody("llama3.2", "hi", false), nil)
	}
	if s := e.fleet.Snapshot().Backends[0].Breaker; s.State != "open" {
		t.Fatalf("gpu-a breaker %+v, want open", s)
	}
	before := inferences(e.fakes[0])
	for range 4 {
		if st, _, body := e.do("POST", "/api/chat", chatBody("llama3.2", "hi", false), nil); st != 200 {
			t.Fatalf("with gpu-a out: %d %s", st, body)
		}
	}
	if n := inferences(e.fakes[0]) - before; n != 0 {
		t.Fatalf("gpu-a got %d requests while broken", n)
	}
	// It comes back after the back-off and a good probe.
	_ = e.fakes[0].SetDefaultFault("")
	waitFor(t, 5*time.Second, "gpu-a breaker closed", func() bool { return e.fleet.Snapshot().Backends[0].Breaker.State == "closed" })
}

func TestFleetPinnedBackend(t *testing.T) {
	const manage, infer = "manage-key-0123456789abcdef0123456789", "infer-key-0123456789abcdef01234567890"
	e := startRoutingEnv(t, routingOptions{models: [][]string{{"llama3.2"}, {"llama3.2"}, {"llama3.2"}},
		auth: access.Config{Keys: []access.KeyConfig{
			{Name: "ops", Key: manage, Scopes: []string{access.ScopeModelsManage, access.ScopeInference, access.ScopeModelsRead}},
			{Name: "app", Key: infer},
		}}})
	tests := []struct {
		name, key, pin string
		want           int
	}{
		{"manage key pins", manage, "gpu-b", 200},
		{"inference key refused", infer, "gpu-b", 403},
		{"unknown backend", manage, "gpu-z", 400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := inferences(e.fakes[1])
			st, _, body := e.do("POST", "/api/chat", chatBody("llama3.2", "hi", false),
				map[string]string{"Authorization": "Bearer " + tt.key, gateway.HeaderBackend: tt.pin})
			if st != tt.want {
				t.Fatalf("got %d %s, want %d", st, body, tt.want)
			}
			if tt.want == 200 && inferences(e.fakes[1])-before != 1 {
				t.Fatal("the pinned backend did not get the request")
			}
		})
	}
	for _, f := range e.fakes {
		for _, r := range f.Requests() {
			if r.Header.Get(gateway.HeaderBackend) != "" {
				t.Fatal("X-Vega-Backend was forwarded upstream")
			}
		}
	}
}

func TestFleetConversationAffinity(t *testing.T) {
	e := startRoutingEnv(t, routingOptions{models: [][]string{{"llama3.2"}, {"llama3.2"}, {"llama3.2"}},
		auth: access.Config{AllowModelManagement: true}})
	// Load the model on every backend (pinned), so all are equal choices.
	for _, b := range e.fleet.Backends() {
		if st, _, body := e.do("POST", "/api/chat", chatBody("llama3.2", "warm", false), map[string]string{gateway.HeaderBackend: b.Name}); st != 200 {
			t.Fatalf("warming %s: %d %s", b.Name, st, body)
		}
	}
	waitFor(t, 5*time.Second, "the model loaded everywhere", func() bool {
		for _, b := range e.fleet.Backends() {
			if len(b.Loaded()) == 0 {
				return false
			}
		}
		return true
	})
	used := map[string]bool{}
	for c := range 8 {
		history := fmt.Sprintf(`{"role":"system","content":"be brief"},{"role":"user","content":"conversation %d"}`, c)
		home := ""
		for turn := range 3 {
			id := fmt.Sprintf("conv-%d-%d", c, turn)
			body := fmt.Sprintf(`{"model":"llama3.2","stream":false,"messages":[%s]}`, history)
			if st, _, b := e.do("POST", "/api/chat", body, map[string]string{"X-Correlation-ID": id}); st != 200 {
				t.Fatalf("%s: %d %s", id, st, b)
			}
			line := e.accessLine(t, id)
			backend, _ := line["backend"].(string)
			if turn == 0 {
				home = backend
				used[home] = true
			} else if backend != home {
				t.Fatalf("conversation %d turn %d went to %s, turn 0 to %s", c, turn, backend, home)
			}
			history += fmt.Sprintf(`,{"role":"assistant","content":"reply %d"},{"role":"user","content":"next %d"}`, turn, turn)
		}
	}
	if len(used) < 2 {
		t.Fatalf("8 conversations all went to %v: affinity should spread them", used)
	}
}

func mustParseURL(t *testing.T, raw string) *url.URL {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	return u
}
