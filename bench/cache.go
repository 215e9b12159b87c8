package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"slices"
	"time"

	"github.com/rs/zerolog"
	"github.com/valyala/fasthttp"

	"github.com/vega-gateway/vega-gateway/access"
	"github.com/vega-gateway/vega-gateway/cache"
	"github.com/vega-gateway/vega-gateway/fleet"
	"github.com/vega-gateway/vega-gateway/gateway"
	"github.com/vega-gateway/vega-gateway/ollamatest"
	"github.com/vega-gateway/vega-gateway/pool"
)

// The cache case (-cases cache) runs the fake Ollama, the gateway and the
// client in this process: the numbers are wall times of passes and
// requests counted at the fake, and one latency comparison in which every
// path pays the same client and process costs.
//
//   - embeddings: -cache-chunks distinct chunks in batches of
//     -cache-batch, sequentially, twice, through the gateway with the
//     cache off and on; the fake waits -cache-embed-delay per batch.
//   - chat: -cache-chats deterministic /api/chat requests (temperature 0,
//     a seed, distinct prompts), twice.
//   - latency: one small request at a time (a one-input /api/embed and a
//     deterministic /api/generate) to a fake without delays: directly, via
//     the gateway with the cache off (the gateway's own cost of an
//     upstream request), and as a cache hit.
//   - memory: the in-process store filled with distinct entries of two
//     sizes, many times its max_bytes; its charge and the heap it holds.

// cacheFlags are the cache case's settings.
type cacheFlags struct {
	chunks, batch, chats, latencyN, runs int
	embedDelay                           time.Duration
	memMax                               int64
}

func registerCacheFlags() *cacheFlags {
	var cf cacheFlags
	flag.IntVar(&cf.chunks, "cache-chunks", 10000, "cache: distinct chunks embedded per pass")
	flag.IntVar(&cf.batch, "cache-batch", 32, "cache: chunks per /api/embed request")
	flag.IntVar(&cf.chats, "cache-chats", 1000, "cache: deterministic /api/chat requests per pass")
	flag.IntVar(&cf.latencyN, "cache-latency-requests", 3000, "cache: sequential requests per latency path")
	flag.IntVar(&cf.runs, "cache-runs", 3, "cache: runs (the table shows the median and the range)")
	flag.DurationVar(&cf.embedDelay, "cache-embed-delay", 5*time.Millisecond, "cache: the fake's time per embedding batch (a small model on a GPU)")
	flag.Int64Var(&cf.memMax, "cache-mem-max-bytes", 8<<20, "cache: max_bytes of the memory-bound store")
	return &cf
}

// cacheStack is a fake and a gateway in front of it, in process.
type cacheStack struct {
	fake  *ollamatest.Server
	url   string
	cache *cache.Cache
	stop  func()
}

func startCacheStack(fakeCfg ollamatest.Config, cacheOn bool) (*cacheStack, error) {
	fake, err := ollamatest.NewServer(fakeCfg)
	if err != nil {
		return nil, err
	}
	p, err := pool.New(pool.UpstreamConfig{URL: fake.URL()}, pool.Config{MaxConnections: 64})
	if err != nil {
		fake.Close()
		return nil, err
	}
	f := fleet.Single(p)
	gw, err := gateway.New(gateway.Config{}, gateway.ChatConfig{}, access.Config{}, f, zerolog.New(io.Discard).Level(zerolog.InfoLevel))
	if err != nil {
		fake.Close()
		return nil, err
	}
	s := &cacheStack{fake: fake}
	if cacheOn {
		f.TrackDigests()
		if s.cache, err = cache.New(cache.Config{Enabled: true}); err != nil {
			fake.Close()
			return nil, err
		}
		gw.SetCache(s.cache)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fake.Close()
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran, served := make(chan struct{}), make(chan struct{})
	go func() { defer close(ran); f.Run(ctx, nil) }()
	go func() { defer close(served); _ = gw.Serve(ln) }()
	s.url = "http://" + ln.Addr().String()
	s.stop = func() {
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		_ = gw.Shutdown(sctx)
		cancel()
		<-ran
		p.Close()
		<-served
		fake.Close()
	}
	if cacheOn {
		deadline := time.Now().Add(10 * time.Second)
		for _, m := range []string{"nomic-embed-text", "llama3.2"} {
			for {
				if _, ok := f.Digest(m); ok {
					break
				}
				if time.Now().After(deadline) {
					s.stop()
					return nil, fmt.Errorf("cache bench: the digest of %s not known after 10 s", m)
				}
				time.Sleep(10 * time.Millisecond)
			}
		}
	}
	return s, nil
}

// cacheClient is the load generator's client: fasthttp's, as in the other
// cases, so the client's own cost is small next to what is measured.
var cacheClient = &fasthttp.Client{MaxConnsPerHost: 8, ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second}

// postJSON sends one request and returns X-Vega-Cache.
func postJSON(url string, body []byte) (string, error) {
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI(url)
	req.Header.SetMethod(fasthttp.MethodPost)
	req.Header.SetContentType("application/json")
	req.SetBodyRaw(body)
	if err := cacheClient.Do(req, resp); err != nil {
		return "", err
	}
	if resp.StatusCode() != 200 {
		return "", fmt.Errorf("status %d: %.200s", resp.StatusCode(), resp.Body())
	}
	return string(resp.Header.Peek(gateway.HeaderCache)), nil
}

// pass is one timed pass: its wall time and what reached the fake.
type pass struct {
	wall             time.Duration
	requests, inputs int
}

// upstreamInputs counts the requests for path the fake got since its last
// ResetStats, and their inputs.
func upstreamInputs(fake *ollamatest.Server, path string) (requests, inputs int) {
	for _, r := range fake.Requests() {
		if r.Path != path {
			continue
		}
		requests++
		var b struct {
			Input []string `json:"input"`
		}
		if json.Unmarshal(r.Body, &b) == nil {
			inputs += len(b.Input)
		}
	}
	return
}

// embedBodies are the passes' requests, built before the clock starts.
func embedBodies(cf *cacheFlags) [][]byte {
	var out [][]byte
	for i := 0; i < cf.chunks; i += cf.batch {
		in := make([]string, 0, cf.batch)
		for j := i; j < min(i+cf.batch, cf.chunks); j++ {
			in = append(in, fmt.Sprintf("chunk %d of a document being re-indexed: some text that a retrieval pipeline embeds", j))
		}
		body, _ := json.Marshal(map[string]any{"model": "nomic-embed-text", "input": in})
		out = append(out, body)
	}
	return out
}

func embedPass(s *cacheStack, bodies [][]byte) (pass, error) {
	s.fake.ResetStats()
	start := time.Now()
	for _, body := range bodies {
		if _, err := postJSON(s.url+"/api/embed", body); err != nil {
			return pass{}, err
		}
	}
	p := pass{wall: time.Since(start)}
	p.requests, p.inputs = upstreamInputs(s.fake, "/api/embed")
	return p, nil
}

func chatBodies(cf *cacheFlags) [][]byte {
	out := make([][]byte, cf.chats)
	for i := range out {
		out[i] = fmt.Appendf(nil, `{"model":"llama3.2","stream":false,"messages":[{"role":"user","content":"question %d"}],"options":{"temperature":0,"seed":42}}`, i)
	}
	return out
}

func chatPass(s *cacheStack, bodies [][]byte) (pass, error) {
	s.fake.ResetStats()
	start := time.Now()
	for _, body := range bodies {
		if _, err := postJSON(s.url+"/api/chat", body); err != nil {
			return pass{}, err
		}
	}
	p := pass{wall: time.Since(start)}
	p.requests, _ = upstreamInputs(s.fake, "/api/chat")
	return p, nil
}

// p50 of n sequential requests to url.
func latencyP50(url string, body []byte, n int, want string) (time.Duration, error) {
	for range 200 { // warm the connections and the path
		if _, err := postJSON(url, body); err != nil {
			return 0, err
		}
	}
	ds := make([]time.Duration, n)
	for i := range ds {
		t := time.Now()
		got, err := postJSON(url, body)
		ds[i] = time.Since(t)
		if err != nil {
			return 0, err
		}
		if want != "" && got != want {
			return 0, fmt.Errorf("X-Vega-Cache %q, want %s", got, want)
		}
	}
	slices.Sort(ds)
	return ds[n/2], nil
}

// cacheRun is one run's numbers.
type cacheRun struct {
	embed, chat     [2][2]pass // [cache off, on][first, second pass]
	direct, proxied [2]time.Duration
	hit             [2]time.Duration // [embed, generate]
}

var latencyBodies = [2]struct{ path, body string }{
	{"/api/embed", `{"model":"nomic-embed-text","input":"one short chunk"}`},
	{"/api/generate", `{"model":"llama3.2","prompt":"hi","stream":false,"options":{"temperature":0,"seed":1}}`},
}

func oneCacheRun(cf *cacheFlags) (cacheRun, error) {
	var r cacheRun
	embeds, chats := embedBodies(cf), chatBodies(cf)
	for on := range 2 {
		s, err := startCacheStack(ollamatest.Config{EmbedDelay: cf.embedDelay}, on == 1)
		if err != nil {
			return r, err
		}
		for k := range 2 {
			if r.embed[on][k], err = embedPass(s, embeds); err != nil {
				s.stop()
				return r, fmt.Errorf("embed pass: %w", err)
			}
		}
		for k := range 2 {
			if r.chat[on][k], err = chatPass(s, chats); err != nil {
				s.stop()
				return r, fmt.Errorf("chat pass: %w", err)
			}
		}
		s.stop()
	}
	// Latency: no delays at the fake, one request at a time.
	for on := range 2 {
		s, err := startCacheStack(ollamatest.Config{RecordLimit: 1}, on == 1)
		if err != nil {
			return r, err
		}
		for i, lb := range latencyBodies {
			var d time.Duration
			if on == 0 {
				if r.direct[i], err = latencyP50(s.fake.URL()+lb.path, []byte(lb.body), cf.latencyN, ""); err == nil {
					r.proxied[i], err = latencyP50(s.url+lb.path, []byte(lb.body), cf.latencyN, "")
				}
			} else {
				d, err = latencyP50(s.url+lb.path, []byte(lb.body), cf.latencyN, "hit")
				r.hit[i] = d
			}
			if err != nil {
				s.stop()
				return r, fmt.Errorf("latency %s: %w", lb.path, err)
			}
		}
		s.stop()
	}
	return r, nil
}

// memoryBound fills a store of max bytes with distinct entries of size
// valSize, ten times over, and reports its peak charge and the heap it
// holds after a collection, over the heap before it was made.
func memoryBound(max int64, valSize int) (charge int64, heap int64, entries int64, err error) {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	c, err := cache.New(cache.Config{Enabled: true, MaxBytes: max, MaxEntryBytes: valSize})
	if err != nil {
		return 0, 0, 0, err
	}
	ctx := context.Background()
	n := int(10 * max / int64(valSize+cache.EntryOverhead))
	for i := range n {
		v := make([]byte, valSize)
		copy(v, fmt.Sprint(i))
		c.Set(ctx, []cache.Key{cache.NewKey([]byte("mem"), []byte(fmt.Sprint(i)))}, [][]byte{v})
		if i%1000 == 0 {
			charge = max64(charge, c.Snapshot().Bytes)
		}
	}
	s := c.Snapshot()
	charge = max64(charge, s.Bytes)
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(c)
	return charge, int64(after.HeapAlloc) - int64(before.HeapAlloc), s.Entries, nil
}

func max64(a, b int64) int64 {
	if a > b {
		return a
	}
	return b
}

func ms3(d time.Duration) string { return fmt.Sprintf("%.3f", float64(d.Microseconds())/1000) }

// spread renders the median and the range of xs.
func spread(xs []float64, format string) string {
	s := slices.Clone(xs)
	slices.Sort(s)
	return fmt.Sprintf(format+" ("+format+"–"+format+")", s[len(s)/2], s[0], s[len(s)-1])
}

func runCacheCase(cf *cacheFlags) {
	fmt.Printf("cache case: in one process (fake, gateway, client); %d runs; embeddings: %d distinct chunks in batches of %d, "+
		"sequential, fake embed_delay %s per batch; chat: %d deterministic /api/chat (stream false, temperature 0, seed 42); "+
		"latency: %d sequential requests per path, fake without delays; gateway defaults, access log at info to io.Discard\n\n",
		cf.runs, cf.chunks, cf.batch, cf.embedDelay, cf.chats, cf.latencyN)
	fmt.Printf("load average at start: %s\n\n", loadavg())
	var runs []cacheRun
	for i := range cf.runs {
		r, err := oneCacheRun(cf)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench: cache:", err)
			os.Exit(1)
		}
		fmt.Fprintf(os.Stderr, "bench: cache run %d done\n", i+1)
		runs = append(runs, r)
	}
	col := func(get func(r cacheRun) float64, format string) string {
		var xs []float64
		for _, r := range runs {
			xs = append(xs, get(r))
		}
		return spread(xs, format)
	}
	sec := func(d time.Duration) float64 { return d.Seconds() }
	fmt.Println("| workload | cache | pass | wall s | requests at the fake | inputs at the fake |")
	fmt.Println("|---|---|---|---:|---:|---:|")
	for on, name := range []string{"off", "on"} {
		for k, p := range []string{"first", "second"} {
			fmt.Printf("| embed %d × %d | %s | %s | %s | %s | %s |\n", cf.chunks, cf.batch, name, p,
				col(func(r cacheRun) float64 { return sec(r.embed[on][k].wall) }, "%.3f"),
				col(func(r cacheRun) float64 { return float64(r.embed[on][k].requests) }, "%.0f"),
				col(func(r cacheRun) float64 { return float64(r.embed[on][k].inputs) }, "%.0f"))
		}
	}
	for on, name := range []string{"off", "on"} {
		for k, p := range []string{"first", "second"} {
			fmt.Printf("| chat %d deterministic | %s | %s | %s | %s | – |\n", cf.chats, name, p,
				col(func(r cacheRun) float64 { return sec(r.chat[on][k].wall) }, "%.3f"),
				col(func(r cacheRun) float64 { return float64(r.chat[on][k].requests) }, "%.0f"))
		}
	}
	fmt.Printf("\nembed, cache on: second pass ÷ first pass wall time %s (target ≤ 0.02); chat: %s\n\n",
		col(func(r cacheRun) float64 { return float64(r.embed[1][1].wall) / float64(r.embed[1][0].wall) }, "%.4f"),
		col(func(r cacheRun) float64 { return float64(r.chat[1][1].wall) / float64(r.chat[1][0].wall) }, "%.4f"))

	fmt.Println("| request | direct p50 ms | via gateway, cache off, p50 ms | gateway's own cost ms | cache hit p50 ms | hit − gateway's own cost µs (target ≤ 50) |")
	fmt.Println("|---|---:|---:|---:|---:|---:|")
	for i, lb := range latencyBodies {
		fmt.Printf("| %s | %s | %s | %s | %s | %s |\n", lb.path,
			col(func(r cacheRun) float64 { return float64(r.direct[i].Microseconds()) / 1000 }, "%.3f"),
			col(func(r cacheRun) float64 { return float64(r.proxied[i].Microseconds()) / 1000 }, "%.3f"),
			col(func(r cacheRun) float64 { return float64((r.proxied[i] - r.direct[i]).Microseconds()) / 1000 }, "%.3f"),
			col(func(r cacheRun) float64 { return float64(r.hit[i].Microseconds()) / 1000 }, "%.3f"),
			col(func(r cacheRun) float64 { return float64((r.hit[i] - (r.proxied[i] - r.direct[i])).Microseconds()) }, "%.0f"))
	}

	fmt.Printf("\n| memory bound (in-process store, max_bytes %d, 10× its size in distinct entries) | peak charge | ÷ max_bytes | heap held after GC | heap ÷ max_bytes | entries |\n", cf.memMax)
	fmt.Println("|---|---:|---:|---:|---:|---:|")
	for _, size := range []int{100, 8 << 10} {
		charge, heap, entries, err := memoryBound(cf.memMax, size)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench: cache memory:", err)
			os.Exit(1)
		}
		fmt.Printf("| values of %d B | %d | %.3f | %d | %.3f | %d |\n", size, charge, float64(charge)/float64(cf.memMax),
			heap, float64(heap)/float64(cf.memMax), entries)
	}
	fmt.Printf("\nload average at end: %s\n", loadavg())
	fmt.Println("\nwall s, requests, inputs, ms, µs: median (min–max) over the runs. Latencies are one client's sequential round trips; " +
		"\"gateway's own cost\" is the proxied p50 less the direct p50; a hit never reaches the fake.")
}
