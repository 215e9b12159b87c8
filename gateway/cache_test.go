package gateway_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"reflect"
	"strings"
	"testing"
	"time"

	ollama "github.com/ollama/ollama/api"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/rs/zerolog"

	"github.com/vega-gateway/vega-gateway/access"
	"github.com/vega-gateway/vega-gateway/cache"
	"github.com/vega-gateway/vega-gateway/fleet"
	"github.com/vega-gateway/vega-gateway/gateway"
	"github.com/vega-gateway/vega-gateway/ollamatest"
	"github.com/vega-gateway/vega-gateway/pool"
	"github.com/vega-gateway/vega-gateway/redistest"
)

// cacheEnv is a gateway with the response cache in front of a fake
// Ollama, its fleet running (so model digests are known).
type cacheEnv struct {
	*env
	fleet *fleet.Fleet
	cache *cache.Cache
}

const (
	keyA = "tenant-a-key-0123456789abcdef0123456789"
	keyB = "tenant-b-key-0123456789abcdef0123456789"
)

func startCacheEnv(t testing.TB, cc cache.Config, auth access.Config) *cacheEnv {
	t.Helper()
	e := &env{t: t, logs: &syncBuffer{}}
	fake, err := ollamatest.NewServer(ollamatest.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fake.Close() })
	e.fake = fake
	p, err := pool.New(pool.UpstreamConfig{URL: fake.URL()}, pool.Config{})
	if err != nil {
		t.Fatal(err)
	}
	e.pool = p
	f := fleet.Single(p)
	f.TrackDigests()
	cc.Enabled = true
	c, err := cache.New(cc)
	if err != nil {
		t.Fatal(err)
	}
	gw, err := gateway.New(countInFlight, gateway.ChatConfig{}, auth, f, zerolog.New(e.logs))
	if err != nil {
		t.Fatal(err)
	}
	gw.SetCache(c)
	e.gw = gw
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() { defer close(ran); f.Run(runCtx, nil) }()
	served := make(chan struct{})
	go func() { defer close(served); _ = gw.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := contextWithTimeout(2 * time.Second)
		defer cancel()
		_ = gw.Shutdown(ctx)
		stop()
		<-ran
		p.Close()
		<-served
		c.Close()
	})
	e.url = "http://" + ln.Addr().String()
	deadline := time.Now().Add(5 * time.Second)
	for _, m := range []string{"nomic-embed-text", "llama3.2"} {
		for _, ok := f.Digest(m); !ok; _, ok = f.Digest(m) {
			if time.Now().After(deadline) {
				t.Fatalf("the digest of %s not known after 5 s", m)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	return &cacheEnv{env: e, fleet: f, cache: c}
}

// reached counts the requests for path that reached the fake.
func (e *cacheEnv) reached(path string) int {
	n := 0
	for _, r := range e.fake.Requests() {
		if r.Path == path {
			n++
		}
	}
	return n
}

// lastInputs is the input list of the last /api/embed request the fake got.
func (e *cacheEnv) lastInputs(t *testing.T, path string) []string {
	t.Helper()
	rs := e.fake.Requests()
	for i := len(rs) - 1; i >= 0; i-- {
		if rs[i].Path == path {
			var b struct {
				Input []string `json:"input"`
			}
			if err := json.Unmarshal(rs[i].Body, &b); err != nil {
				t.Fatalf("upstream body %q: %v", rs[i].Body, err)
			}
			return b.Input
		}
	}
	return nil
}

func wantVectors(t *testing.T, inputs []string, got [][]float32) {
	t.Helper()
	if len(got) != len(inputs) {
		t.Fatalf("%d vectors for %d inputs", len(got), len(inputs))
	}
	for i, in := range inputs {
		if want := ollamatest.Embedding(in); !reflect.DeepEqual(got[i], want) {
			t.Fatalf("vector %d (%q) = %v, want %v", i, in, got[i], want)
		}
	}
}

// TestCacheEmbedBatchMerge: a batch partly cached sends only the missing
// inputs upstream, in one request, and the answer keeps the request's
// order (Ollama's own client decodes it).
func TestCacheEmbedBatchMerge(t *testing.T) {
	e := startCacheEnv(t, cache.Config{}, access.Config{})
	client := ollama.NewClient(mustParseURL(t, e.url), testClient)
	ctx := context.Background()
	first := []string{"alpha", "beta"}
	r, err := client.Embed(ctx, &ollama.EmbedRequest{Model: "nomic-embed-text", Input: first})
	if err != nil {
		t.Fatal(err)
	}
	wantVectors(t, first, r.Embeddings)

	second := []string{"beta", "gamma", "alpha", "delta"}
	r, err = client.Embed(ctx, &ollama.EmbedRequest{Model: "nomic-embed-text", Input: second})
	if err != nil {
		t.Fatal(err)
	}
	wantVectors(t, second, r.Embeddings)
	if got, want := e.lastInputs(t, "/api/embed"), []string{"gamma", "delta"}; !reflect.DeepEqual(got, want) {
		t.Errorf("upstream got inputs %q, want only the missing %q", got, want)
	}
	if n := e.reached("/api/embed"); n != 2 {
		t.Errorf("%d requests reached the fake, want 2", n)
	}

	// Wholly cached: nothing upstream, Ollama's shape without durations.
	st, hdr, body := e.do("POST", "/api/embed", `{"model":"nomic-embed-text","input":["delta","alpha"],"keep_alive":"1m"}`, nil)
	if st != 200 || hdr.Get(gateway.HeaderCache) != "hit" {
		t.Fatalf("status %d, X-Vega-Cache %q, want 200 hit: %s", st, hdr.Get(gateway.HeaderCache), body)
	}
	if !strings.HasPrefix(string(body), `{"model":"nomic-embed-text","embeddings":[[`) || strings.Contains(string(body), "duration") {
		t.Errorf("body %s: want Ollama's EmbedResponse shape, durations omitted", body)
	}
	if n := e.reached("/api/embed"); n != 2 {
		t.Errorf("a wholly cached batch reached the fake (%d requests)", n)
	}

	// A different option is a different vector: it misses.
	st, hdr, _ = e.do("POST", "/api/embed", `{"model":"nomic-embed-text","input":["alpha"],"dimensions":4}`, nil)
	if st != 200 || hdr.Get(gateway.HeaderCache) != "miss" {
		t.Errorf("with dimensions: status %d, X-Vega-Cache %q, want 200 miss", st, hdr.Get(gateway.HeaderCache))
	}

	s := e.cache.Snapshot()
	if s.Hits != 4 || s.Misses != 5 {
		t.Errorf("cache counted %d hits and %d misses (per input), want 4 and 5", s.Hits, s.Misses)
	}
}

// TestCacheOpenAIEmbeddings: /v1/embeddings through openai-go, and the
// legacy /api/embeddings, each cached per input.
func TestCacheOpenAIEmbeddings(t *testing.T) {
	e := startCacheEnv(t, cache.Config{}, access.Config{})
	oa := openai.NewClient(option.WithBaseURL(e.url+"/v1"), option.WithAPIKey("unused"), option.WithMaxRetries(0))
	ctx := context.Background()
	embed := func(inputs []string) []openai.Embedding {
		t.Helper()
		r, err := oa.Embeddings.New(ctx, openai.EmbeddingNewParams{
			Model: "nomic-embed-text", Input: openai.EmbeddingNewParamsInputUnion{OfArrayOfStrings: inputs},
			EncodingFormat: openai.EmbeddingNewParamsEncodingFormatFloat,
		})
		if err != nil {
			t.Fatal(err)
		}
		return r.Data
	}
	embed([]string{"one", "two"})
	inputs := []string{"three", "two", "one"}
	data := embed(inputs)
	for i, d := range data {
		want := ollamatest.Embedding(inputs[i])
		if int(d.Index) != i || len(d.Embedding) != len(want) || float32(d.Embedding[0]) != want[0] {
			t.Fatalf("data[%d] = index %d %v, want %v", i, d.Index, d.Embedding, want)
		}
	}
	if got := e.lastInputs(t, "/v1/embeddings"); !reflect.DeepEqual(got, []string{"three"}) {
		t.Errorf("upstream got %q, want only [three]", got)
	}

	for i, want := range []string{"miss", "hit"} {
		st, hdr, body := e.do("POST", "/api/embeddings", `{"model":"nomic-embed-text","prompt":"legacy"}`, nil)
		if st != 200 || hdr.Get(gateway.HeaderCache) != want || !strings.HasPrefix(string(body), `{"embedding":[`) {
			t.Errorf("/api/embeddings #%d: %d %q %s, want 200 %s", i, st, hdr.Get(gateway.HeaderCache), body, want)
		}
	}
	if n := e.reached("/api/embeddings"); n != 1 {
		t.Errorf("/api/embeddings reached the fake %d times, want 1", n)
	}
}

// TestCacheRepulledModelMisses: a model pulled again with new weights has
// a new digest, and nothing cached for the old one is served.
func TestCacheRepulledModelMisses(t *testing.T) {
	e := startCacheEnv(t, cache.Config{}, access.Config{})
	const body = `{"model":"nomic-embed-text","input":"chunk"}`
	for _, want := range []string{"miss", "hit"} {
		if _, hdr, _ := e.do("POST", "/api/embed", body, nil); hdr.Get(gateway.HeaderCache) != want {
			t.Fatalf("X-Vega-Cache %q, want %s", hdr.Get(gateway.HeaderCache), want)
		}
	}
	old, _ := e.fleet.Digest("nomic-embed-text")
	if !e.fake.Repull("nomic-embed-text") {
		t.Fatal("Repull: model unknown")
	}
	e.fleet.First().RefreshCatalogue()
	waitFor(t, 5*time.Second, "the new digest", func() bool { d, ok := e.fleet.Digest("nomic-embed-text"); return ok && d != old })
	if _, hdr, _ := e.do("POST", "/api/embed", body, nil); hdr.Get(gateway.HeaderCache) != "miss" {
		t.Fatalf("after a re-pull: X-Vega-Cache %q, want miss", hdr.Get(gateway.HeaderCache))
	}
	if n := e.reached("/api/embed"); n != 2 {
		t.Errorf("%d requests reached the fake, want 2 (first, and after the re-pull)", n)
	}
}

// TestCacheScopeIsolates: under cache.scope key one key's entries are not
// another's; under global they are shared.
func TestCacheScopeIsolates(t *testing.T) {
	auth := access.Config{Keys: []access.KeyConfig{{Name: "a", Key: keyA}, {Name: "b", Key: keyB}}}
	for _, tc := range []struct {
		scope string
		want  []string // X-Vega-Cache for a, b, a
	}{
		{cache.ScopeKey, []string{"miss", "miss", "hit"}},
		{cache.ScopeGlobal, []string{"miss", "hit", "hit"}},
	} {
		t.Run(tc.scope, func(t *testing.T) {
			e := startCacheEnv(t, cache.Config{Scope: tc.scope}, auth)
			for i, key := range []string{keyA, keyB, keyA} {
				st, hdr, body := e.do("POST", "/api/embed", `{"model":"nomic-embed-text","input":"secret plan"}`,
					map[string]string{"Authorization": "Bearer " + key})
				if st != 200 || hdr.Get(gateway.HeaderCache) != tc.want[i] {
					t.Fatalf("request %d: %d %q (%s), want 200 %s", i, st, hdr.Get(gateway.HeaderCache), body, tc.want[i])
				}
			}
		})
	}
}

// TestCacheCompletionReplay: a deterministic completion is answered once
// upstream, then replayed byte for byte — the same NDJSON lines or SSE
// events, done_reason and token counts as recorded.
func TestCacheCompletionReplay(t *testing.T) {
	e := startCacheEnv(t, cache.Config{}, access.Config{})
	for _, tc := range []struct {
		name, path, body string
		contentType      string
	}{
		{"native chat stream", "/api/chat", `{"model":"llama3.2","messages":[{"role":"user","content":"hi"}],"options":{"temperature":0,"seed":42}}`, "application/x-ndjson"},
		{"native generate reply", "/api/generate", `{"model":"llama3.2","prompt":"hi","stream":false,"options":{"seed":7,"temperature":0.0}}`, "application/json"},
		{"openai chat stream", "/v1/chat/completions", `{"model":"llama3.2","messages":[{"role":"user","content":"hi"}],"stream":true,"temperature":0,"seed":1}`, "text/event-stream"},
		{"openai completion reply", "/v1/completions", `{"model":"llama3.2","prompt":"hi","temperature":0,"seed":1}`, "application/json"},
		{"vega chat stream", "/chat", `{"model":"llama3.2","prompt":"hi","stream":true,"options":{"temperature":0,"seed":3}}`, "application/x-ndjson"},
		{"vega chat reply", "/chat", `{"model":"llama3.2","prompt":"hello","options":{"temperature":0,"seed":3}}`, "application/json"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			upstream := "/api/chat"
			if tc.path != "/chat" {
				upstream = tc.path
			}
			before := e.reached(upstream)
			st, h1, first := e.do("POST", tc.path, tc.body, nil)
			if st != 200 || h1.Get(gateway.HeaderCache) != "miss" || !strings.HasPrefix(h1.Get("Content-Type"), tc.contentType) {
				t.Fatalf("first: %d %q %q: %s", st, h1.Get(gateway.HeaderCache), h1.Get("Content-Type"), first)
			}
			// keep_alive changes no answer: still a hit.
			body := tc.body
			if tc.path != "/chat" {
				body = strings.Replace(body, `"model":"llama3.2"`, `"model":"llama3.2","keep_alive":"10m"`, 1)
			}
			st, h2, second := e.do("POST", tc.path, body, nil)
			if st != 200 || h2.Get(gateway.HeaderCache) != "hit" || h2.Get("Content-Type") != h1.Get("Content-Type") {
				t.Fatalf("second: %d %q %q: %s", st, h2.Get(gateway.HeaderCache), h2.Get("Content-Type"), second)
			}
			want := string(first)
			if tc.path == "/chat" {
				want = strings.ReplaceAll(want, h1.Get("X-Correlation-ID"), h2.Get("X-Correlation-ID"))
			}
			if string(second) != want {
				t.Fatalf("replay differs:\n got %q\nwant %q", second, want)
			}
			if n := e.reached(upstream) - before; n != 1 {
				t.Errorf("%d requests reached the fake, want 1", n)
			}
			var line map[string]any
			waitFor(t, 2*time.Second, "the access line", func() bool {
				ls := e.logs.accessLines(t, h2.Get("X-Correlation-ID"))
				if len(ls) == 1 {
					line = ls[0]
				}
				return line != nil
			})
			if line["cache"] != "hit" || line["upstream"] != "cache" || (tc.path != "/chat" && line["done_reason"] == nil) {
				t.Errorf("access line %v: want cache hit, upstream cache and the recorded done_reason", line)
			}
		})
	}
}

// TestCacheHeaders: X-Vega-Cache use caches a request its options do not
// make deterministic; bypass skips the cache; neither, on a sampled
// request, is a bypass.
func TestCacheHeaders(t *testing.T) {
	e := startCacheEnv(t, cache.Config{}, access.Config{})
	const sampled = `{"model":"llama3.2","prompt":"hi","stream":false,"options":{"temperature":0.8}}`
	const fixed = `{"model":"llama3.2","prompt":"hi","stream":false,"options":{"temperature":0,"seed":9}}`
	for _, tc := range []struct {
		name, body, ask, want string
		reaches               bool
	}{
		{"sampled", sampled, "", "bypass", true},
		{"sampled again", sampled, "", "bypass", true},
		{"asked to use", sampled, "use", "miss", true},
		{"asked to use again", sampled, "use", "hit", false},
		{"deterministic", fixed, "", "miss", true},
		{"deterministic bypassed", fixed, "bypass", "bypass", true},
		{"deterministic again", fixed, "", "hit", false},
	} {
		before := e.reached("/api/generate")
		hdr := map[string]string{}
		if tc.ask != "" {
			hdr[gateway.HeaderCache] = tc.ask
		}
		st, h, body := e.do("POST", "/api/generate", tc.body, hdr)
		if st != 200 || h.Get(gateway.HeaderCache) != tc.want {
			t.Errorf("%s: %d %q (%s), want 200 %s", tc.name, st, h.Get(gateway.HeaderCache), body, tc.want)
		}
		if got := e.reached("/api/generate") > before; got != tc.reaches {
			t.Errorf("%s: reached the fake %v, want %v", tc.name, got, tc.reaches)
		}
	}
	s := e.cache.Snapshot()
	if s.Hits != 2 || s.Misses != 2 || s.Bypasses != 3 || len(s.Routes) != 1 || s.Routes[0].Route != "/api/generate" || s.Routes[0].Model != "llama3.2" {
		t.Errorf("snapshot %+v: want 2 hits, 2 misses, 3 bypasses on /api/generate llama3.2", s)
	}
}

// TestCacheRedisDown: with the cache in Redis, stopping Redis mid-run
// loses no request — each is answered upstream, correctly — and the cache
// serves again once Redis is back.
func TestCacheRedisDown(t *testing.T) {
	srv := redistest.Start(t)
	e := startCacheEnv(t, cache.Config{RedisURL: srv.URL(), RedisTimeout: 2 * time.Second}, access.Config{})
	client := ollama.NewClient(mustParseURL(t, e.url), testClient)
	ctx := context.Background()
	embed := func(inputs []string) {
		t.Helper()
		r, err := client.Embed(ctx, &ollama.EmbedRequest{Model: "nomic-embed-text", Input: inputs})
		if err != nil {
			t.Fatalf("a request failed: %v", err)
		}
		wantVectors(t, inputs, r.Embeddings)
	}
	batch := []string{"r1", "r2", "r3"}
	embed(batch)
	embed(batch)
	if n := e.reached("/api/embed"); n != 1 {
		t.Fatalf("with Redis up %d requests reached the fake, want 1", n)
	}
	srv.Stop()
	for range 20 {
		embed(batch)
	}
	if n := e.reached("/api/embed"); n != 21 {
		t.Errorf("with Redis down %d requests reached the fake, want 21 (each served uncached)", n)
	}
	srv.Restart()
	waitFor(t, 10*time.Second, "the cache to serve again", func() bool {
		before := e.reached("/api/embed")
		embed([]string{"after"})
		return e.reached("/api/embed") == before
	})
}

// TestCacheMemoryBound embeds many more distinct inputs than the store
// holds: its charge never passes cache.max_bytes, the oldest go first, and
// the newest are still served.
func TestCacheMemoryBound(t *testing.T) {
	const max = 64 << 10
	e := startCacheEnv(t, cache.Config{MaxBytes: max, MaxEntryBytes: 4 << 10}, access.Config{})
	batch := func(i int) string {
		in := make([]string, 50)
		for j := range in {
			in[j] = fmt.Sprintf("distinct chunk %d", i*50+j)
		}
		b, _ := json.Marshal(map[string]any{"model": "nomic-embed-text", "input": in})
		return string(b)
	}
	for i := range 40 {
		if st, _, body := e.do("POST", "/api/embed", batch(i), nil); st != 200 {
			t.Fatalf("batch %d: %d %s", i, st, body)
		}
		if s := e.cache.Snapshot(); s.Bytes > max {
			t.Fatalf("after batch %d the store charges %d bytes, over max_bytes %d", i, s.Bytes, max)
		}
	}
	s := e.cache.Snapshot()
	if s.Evictions == 0 || s.Entries*cache.EntryOverhead > max {
		t.Errorf("snapshot %+v: want evictions and at most max_bytes of entries", s)
	}
	if _, hdr, _ := e.do("POST", "/api/embed", batch(39), nil); hdr.Get(gateway.HeaderCache) != "hit" {
		t.Errorf("the newest batch: X-Vega-Cache %q, want hit", hdr.Get(gateway.HeaderCache))
	}
	if _, hdr, _ := e.do("POST", "/api/embed", batch(0), nil); hdr.Get(gateway.HeaderCache) != "miss" {
		t.Errorf("the oldest batch: X-Vega-Cache %q, want miss (evicted)", hdr.Get(gateway.HeaderCache))
	}
}

// TestCacheFleetDigests: with several backends a model is cached only
// while every backend that lists it agrees on its digest; a model pulled
// anew on one backend is bypassed until the others have it too, and then
// misses (new digest) before it hits again.
func TestCacheFleetDigests(t *testing.T) {
	e := startRoutingEnv(t, routingOptions{
		models: [][]string{{"nomic-embed-text"}, {"nomic-embed-text"}},
		cache:  &cache.Config{Enabled: true},
	})
	const body = `{"model":"nomic-embed-text","input":"shared chunk"}`
	step := func(want string) {
		t.Helper()
		st, hdr, b := e.do("POST", "/api/embed", body, nil)
		if st != 200 || hdr.Get(gateway.HeaderCache) != want {
			t.Fatalf("%d %q (%s), want 200 %s", st, hdr.Get(gateway.HeaderCache), b, want)
		}
	}
	step("miss")
	step("hit")
	old, _ := e.fleet.Digest("nomic-embed-text")
	repull := func(f *ollamatest.Server) {
		t.Helper()
		if !f.Repull("nomic-embed-text") {
			t.Fatal("Repull: model unknown")
		}
	}
	repull(e.fakes[1])
	waitFor(t, 5*time.Second, "the backends to disagree", func() bool { _, ok := e.fleet.Digest("nomic-embed-text"); return !ok })
	step("bypass")
	repull(e.fakes[0])
	waitFor(t, 5*time.Second, "the backends to agree on the new digest", func() bool {
		d, ok := e.fleet.Digest("nomic-embed-text")
		return ok && d != old
	})
	step("miss")
	step("hit")
}

// TestCacheKeyTricks: a body whose decoded form (the cache key) says less
// than its bytes (what Ollama reads) is never cached, under cache.scope
// global where a poisoned entry would reach every key: a repeated key
// (Ollama reads a later null as "no change", the decoded map as absent), at
// any depth, and a key Ollama folds onto another (ſ is s, the Kelvin sign
// is k). Each trick is bypassed, stores nothing (the plain request after it
// misses), and is not served the plain request's answer after it.
func TestCacheKeyTricks(t *testing.T) {
	e := startCacheEnv(t, cache.Config{Scope: cache.ScopeGlobal}, access.Config{})
	const gen = `{"model":"llama3.2","prompt":"%s","stream":false,%s"options":{"temperature":0,"seed":1%s}}`
	const oai = `{"model":"llama3.2","messages":[{"role":"user","content":"%s"}],%s"temperature":0,"seed":1}`
	for _, tc := range []struct {
		name, path, plain, trick string
	}{
		{"system then null", "/api/generate", fmt.Sprintf(gen, "p1", "", ""), fmt.Sprintf(gen, "p1", `"system":"talk like a pirate","system":null,`, "")},
		{"template then null", "/api/generate", fmt.Sprintf(gen, "p2", "", ""), fmt.Sprintf(gen, "p2", `"template":"{{ .Prompt }} arr","template":null,`, "")},
		{"suffix then null", "/api/generate", fmt.Sprintf(gen, "p3", "", ""), fmt.Sprintf(gen, "p3", `"suffix":" matey","suffix":null,`, "")},
		{"raw then null", "/api/generate", fmt.Sprintf(gen, "p4", "", ""), fmt.Sprintf(gen, "p4", `"raw":true,"raw":null,`, "")},
		{"nested repeat", "/api/generate", fmt.Sprintf(gen, "p5", "", ""), fmt.Sprintf(gen, "p5", "", `,"num_predict":3,"num_predict":null`)},
		{"escaped repeat", "/api/generate", fmt.Sprintf(gen, "p6", "", ""), fmt.Sprintf(gen, "p6", `"system":"pirate","\u0073ystem":null,`, "")},
		{"long s key", "/api/generate", fmt.Sprintf(gen, "p7", "", ""), fmt.Sprintf(gen, "p7", `"optionſ":{"temperature":0.9},`, "")},
		{"kelvin key", "/api/generate", fmt.Sprintf(gen, "p8", "", ""), fmt.Sprintf(gen, "p8", "", `,"top_\u212a":1`)},
		{"openai stream then null", "/v1/chat/completions", fmt.Sprintf(oai, "p9", ""), fmt.Sprintf(oai, "p9", `"stream":true,"stream":null,`)},
		{"chat message repeat", "/api/chat", `{"model":"llama3.2","stream":false,"messages":[{"role":"user","content":"p10"}],"options":{"temperature":0,"seed":1}}`,
			`{"model":"llama3.2","stream":false,"messages":[{"role":"user","content":"arr","content":"p10"}],"options":{"temperature":0,"seed":1}}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for i, step := range []struct{ body, want string }{
				{tc.trick, "bypass"}, {tc.plain, "miss"}, {tc.plain, "hit"}, {tc.trick, "bypass"},
			} {
				before := e.reached(tc.path)
				st, h, body := e.do("POST", tc.path, step.body, nil)
				if st != 200 || h.Get(gateway.HeaderCache) != step.want {
					t.Fatalf("step %d: %d %q (%s), want 200 %s", i, st, h.Get(gateway.HeaderCache), body, step.want)
				}
				if reached := e.reached(tc.path) > before; reached != (step.want != "hit") {
					t.Fatalf("step %d: reached the fake %v", i, reached)
				}
			}
		})
	}
	if s := e.cache.Snapshot(); s.Bypasses != 20 || s.Misses != 10 || s.Hits != 10 {
		t.Errorf("snapshot %+v: want 20 bypasses, 10 misses, 10 hits", s)
	}
}

// TestCachePinCheckedFirst: X-Vega-Backend is judged before the cache can
// answer: a key without models:manage gets 403 and an unknown backend 400,
// even for a request the cache holds, on a pass-through completion, an
// embedding and /chat.
func TestCachePinCheckedFirst(t *testing.T) {
	const manage, infer = "manage-key-0123456789abcdef0123456789", "infer-key-0123456789abcdef01234567890"
	e := startRoutingEnv(t, routingOptions{
		models: [][]string{{"llama3.2", "nomic-embed-text"}, {"llama3.2", "nomic-embed-text"}},
		cache:  &cache.Config{Enabled: true, Scope: cache.ScopeGlobal},
		auth: access.Config{Keys: []access.KeyConfig{
			{Name: "ops", Key: manage, Scopes: []string{access.ScopeModelsManage, access.ScopeInference, access.ScopeModelsRead}},
			{Name: "app", Key: infer},
		}},
	})
	waitFor(t, 5*time.Second, "the digests", func() bool {
		_, a := e.fleet.Digest("llama3.2")
		_, b := e.fleet.Digest("nomic-embed-text")
		return a && b
	})
	for _, tc := range []struct{ path, body string }{
		{"/api/generate", `{"model":"llama3.2","prompt":"pin","stream":false,"options":{"temperature":0,"seed":1}}`},
		{"/api/embed", `{"model":"nomic-embed-text","input":["pin"]}`},
		{"/chat", `{"model":"llama3.2","prompt":"pin","options":{"temperature":0,"seed":1}}`},
	} {
		t.Run(tc.path, func(t *testing.T) {
			for i, step := range []struct {
				key, pin, cache string
				want            int
			}{
				{infer, "", "miss", 200},
				{infer, "", "hit", 200},
				{infer, "gpu-b", "", 403},
				{manage, "gpu-z", "", 400},
				{manage, "gpu-b", "hit", 200},
			} {
				hdr := map[string]string{"Authorization": "Bearer " + step.key}
				if step.pin != "" {
					hdr[gateway.HeaderBackend] = step.pin
				}
				st, h, body := e.do("POST", tc.path, tc.body, hdr)
				if st != step.want || h.Get(gateway.HeaderCache) != step.cache {
					t.Fatalf("step %d: %d %q (%s), want %d %q", i, st, h.Get(gateway.HeaderCache), body, step.want, step.cache)
				}
			}
		})
	}
}

// TestCacheEmbedBadUpstreamReply: an embedding reply that does not give
// each input exactly one vector (two /v1/embeddings entries claiming the
// same index, which left a hole) is a 502, not cached; the same request
// then misses and gets a whole answer.
func TestCacheEmbedBadUpstreamReply(t *testing.T) {
	e := startCacheEnv(t, cache.Config{}, access.Config{})
	const body = `{"model":"nomic-embed-text","input":["d1","d2"]}`
	st, h, b := e.do("POST", "/v1/embeddings", body, map[string]string{ollamatest.FaultHeader: "raw=embed_duplicate_index"})
	if code, _ := decodeJSON(t, b)["error"].(map[string]any)["code"].(string); st != 502 || code != "upstream_protocol_error" || h.Get(gateway.HeaderCache) != "miss" {
		t.Fatalf("duplicate index: %d %q %s, want 502 upstream_protocol_error, miss", st, h.Get(gateway.HeaderCache), b)
	}
	st, h, b = e.do("POST", "/v1/embeddings", body, nil)
	var list struct {
		Data []struct {
			Embedding []float32 `json:"embedding"`
		} `json:"data"`
	}
	if err := json.Unmarshal(b, &list); err != nil || st != 200 || h.Get(gateway.HeaderCache) != "miss" || len(list.Data) != 2 {
		t.Fatalf("after: %d %q %s (%v), want 200 miss with two vectors", st, h.Get(gateway.HeaderCache), b, err)
	}
	wantVectors(t, []string{"d1", "d2"}, [][]float32{list.Data[0].Embedding, list.Data[1].Embedding})
}

// TestCacheEmbedCountsServed: a batch's cached inputs count as hits only
// when the answer is served; the inputs sent upstream count as misses
// whatever it answers, and every reply — the upstream's refusal, a
// gateway error — says miss, as the access line does.
func TestCacheEmbedCountsServed(t *testing.T) {
	e := startCacheEnv(t, cache.Config{}, access.Config{})
	if st, h, b := e.do("POST", "/api/embed", `{"model":"nomic-embed-text","input":["c1"]}`, nil); st != 200 || h.Get(gateway.HeaderCache) != "miss" {
		t.Fatalf("priming: %d %q %s", st, h.Get(gateway.HeaderCache), b)
	}
	const batch = `{"model":"nomic-embed-text","input":["c1","c2"]}`
	for _, tc := range []struct {
		name, fault, want string
		status            int
		hits, misses      int64 // after the step
	}{
		{"upstream refuses", "fail_status=500", "miss", 500, 0, 2},
		{"upstream breaks", "raw=short_body", "miss", 502, 0, 3},
		{"served", "", "miss", 200, 1, 4},
		{"all cached", "", "hit", 200, 3, 4},
	} {
		hdr := map[string]string{}
		if tc.fault != "" {
			hdr[ollamatest.FaultHeader] = tc.fault
		}
		st, h, b := e.do("POST", "/api/embed", batch, hdr)
		if st != tc.status || h.Get(gateway.HeaderCache) != tc.want {
			t.Fatalf("%s: %d %q %s, want %d %s", tc.name, st, h.Get(gateway.HeaderCache), b, tc.status, tc.want)
		}
		var line map[string]any
		waitFor(t, 2*time.Second, "the access line", func() bool {
			if ls := e.logs.accessLines(t, h.Get("X-Correlation-ID")); len(ls) == 1 {
				line = ls[0]
			}
			return line != nil
		})
		if line["cache"] != tc.want {
			t.Errorf("%s: access line cache %v, want %s", tc.name, line["cache"], tc.want)
		}
		if s := e.cache.Snapshot(); s.Hits != tc.hits || s.Misses != tc.misses {
			t.Errorf("%s: %d hits, %d misses, want %d, %d", tc.name, s.Hits, s.Misses, tc.hits, tc.misses)
		}
	}
}
