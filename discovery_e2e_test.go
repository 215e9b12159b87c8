package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ollama/ollama/api"

	"github.com/vega-gateway/vega-gateway/dnstest"
	"github.com/vega-gateway/vega-gateway/ollamatest"
)

// discoveryDoc is the discovery part of /admin/resources/pools.
type discoveryDoc struct {
	Pools []struct {
		Name string `json:"name"`
	} `json:"pools"`
	Routing struct {
		Discovery []struct {
			Name           string   `json:"name"`
			Backends       []string `json:"backends"`
			Joining        []string `json:"joining"`
			Draining       []string `json:"draining"`
			Lookups        int64    `json:"lookups"`
			LookupFailures int64    `json:"lookup_failures"`
		} `json:"discovery"`
	} `json:"routing"`
}

func waitDiscovery(t *testing.T, admin, what string, ok func(d discoveryDoc) bool) discoveryDoc {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, _, body := get(t, "http://"+admin+"/admin/resources/pools", nil)
		var doc discoveryDoc
		if st == 200 && json.Unmarshal(body, &doc) == nil && len(doc.Routing.Discovery) == 1 && ok(doc) {
			return doc
		}
		if time.Now().After(deadline) {
			t.Fatalf("never %s: %d %s", what, st, body)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// fakesOnPort starts a fake Ollama on each of ips at one port, as the pods
// of a headless Service listen (A records carry no port).
func fakesOnPort(t *testing.T, cfg ollamatest.Config, ips ...string) (int, []*ollamatest.Server) {
	t.Helper()
	for range 20 {
		ln, err := net.Listen("tcp", ips[0]+":0")
		if err != nil {
			t.Skipf("cannot listen on %s: %v", ips[0], err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		var fakes []*ollamatest.Server
		for _, ip := range ips {
			c := cfg
			c.Addr = net.JoinHostPort(ip, strconv.Itoa(port))
			s, err := ollamatest.NewServer(c)
			if err != nil {
				break
			}
			fakes = append(fakes, s)
		}
		if len(fakes) == len(ips) {
			for _, s := range fakes {
				t.Cleanup(func() { s.Close() })
			}
			return port, fakes
		}
		for _, s := range fakes {
			s.Close()
		}
	}
	t.Fatal("no port free on every address")
	return 0, nil
}

func chats(s *ollamatest.Server) int {
	n := 0
	for _, r := range s.Requests() {
		if r.Path == "/api/chat" {
			n++
		}
	}
	return n
}

// TestDiscoveryScaleUpAndDownUnderLoad is issue 17's target: under steady
// load through the gateway, a backend added to DNS takes requests within
// one refresh of the change, and one removed drains (its fake serving on
// until its pool closes, then stopped) — with no failed request.
func TestDiscoveryScaleUpAndDownUnderLoad(t *testing.T) {
	const refresh = 150 * time.Millisecond
	const name = "ollama-headless.llm.e2e.test"
	ips := []string{"127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"}
	port, fakes := fakesOnPort(t, ollamatest.Config{Tokens: 8, TokenDelay: 5 * time.Millisecond}, ips...)
	srv, err := dnstest.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	srv.SetA(name, ips[:3]...)
	hp := func(i int) string { return net.JoinHostPort(ips[i], strconv.Itoa(port)) }

	upstreams := fmt.Sprintf(`[{"name":"ollama","url":"http://%s:%d","discover":"dns","refresh":"%s","resolver":"%s","weight":1,"max_connections":64}]`,
		name, port, refresh, srv.Addr())
	r := startApp(t, "VEGA_UPSTREAMS="+upstreams, "VEGA_ROUTING_POLICY=least_loaded")
	waitDiscovery(t, r.admin, "three backends", func(d discoveryDoc) bool { return len(d.Pools) == 3 })

	// Steady load: four clients streaming chats back to back.
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 8}}
	client := api.NewClient(&url.URL{Scheme: "http", Host: r.data}, hc)
	var ok, failed atomic.Int64
	var firstErr atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			stream := true
			for {
				select {
				case <-stop:
					return
				default:
				}
				var reply strings.Builder
				err := client.Chat(context.Background(), &api.ChatRequest{Model: "llama3.2", Stream: &stream,
					Messages: []api.Message{{Role: "user", Content: "hi"}}}, func(c api.ChatResponse) error {
					reply.WriteString(c.Message.Content)
					return nil
				})
				if err == nil && reply.Len() == 0 {
					err = fmt.Errorf("empty reply")
				}
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
				} else {
					ok.Add(1)
				}
			}
		}()
	}
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		wg.Wait()
	}()
	time.Sleep(3 * refresh)

	// Scale-up: the fourth address enters DNS. "Within one refresh" is
	// checked in lookups, not in time (a loaded machine stretches time):
	// the lookup that finds the new address is at most the second after
	// the change (the first may have been under way with the old records).
	lookupsBefore := waitDiscovery(t, r.admin, "the lookup count", func(discoveryDoc) bool { return true }).Routing.Discovery[0].Lookups
	changed := time.Now()
	srv.SetA(name, ips...)
	deadline := changed.Add(10 * time.Second)
	for chats(fakes[3]) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the added backend got no request")
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("added backend's first request %s after the DNS change (refresh %s)", time.Since(changed).Round(time.Millisecond), refresh)

	// Scale-down: the second address leaves DNS; its fake serves on until
	// the gateway has closed its pool, then stops.
	before := chats(fakes[1])
	srv.SetA(name, ips[0], ips[2], ips[3])
	waitDiscovery(t, r.admin, hp(1)+" out of the view", func(d discoveryDoc) bool {
		return len(d.Pools) == 3 && !slices.Contains(d.Routing.Discovery[0].Backends, hp(1))
	})
	removed := chats(fakes[1])
	waitDiscovery(t, r.admin, hp(1)+" drained", func(d discoveryDoc) bool {
		g := d.Routing.Discovery[0]
		return len(g.Draining) == 0 && len(g.Backends) == 3
	})
	fakes[1].Close()
	if after := chats(fakes[1]); after != removed {
		t.Errorf("the removed backend got %d requests after leaving the view", after-removed)
	}
	t.Logf("removed backend: %d requests before the DNS change, %d more before the lookup saw it", before, removed-before)
	time.Sleep(3 * refresh) // load on the three left
	close(stop)
	wg.Wait()

	if n := failed.Load(); n != 0 {
		t.Fatalf("%d of %d requests failed; first: %v", n, n+ok.Load(), firstErr.Load())
	}
	if ok.Load() < 20 {
		t.Errorf("only %d requests completed under load", ok.Load())
	}
	t.Logf("%d requests, none failed", ok.Load())

	// Metrics: the lookups are counted, the removed backend's series gone.
	_, _, body := get(t, "http://"+r.admin+"/metrics", nil)
	m := string(body)
	for _, want := range []string{`vega_discovery_lookups_total{discovery="ollama"}`, `vega_discovery_backends{discovery="ollama",state="serving"} 3`,
		`vega_backend_outstanding_requests{backend="` + hp(3) + `"}`} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if strings.Contains(m, `backend="`+hp(1)+`"`) {
		t.Errorf("/metrics still has series of the removed backend %s", hp(1))
	}
	hc.CloseIdleConnections() // the gateway's drain waits for idle keep-alive connections
	r.stop(t)
	out := r.out.String()
	for _, want := range []string{`"event":"joined"`, `"event":"left"`, `"event":"closed"`, `"discovery":"ollama"`} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %s", want)
		}
	}
	foundAt := int64(-1)
	for line := range strings.Lines(out) {
		var ev struct {
			Event, Backend string
			Lookup         int64
		}
		if json.Unmarshal([]byte(line), &ev) == nil && ev.Event == "found" && ev.Backend == hp(3) {
			foundAt = ev.Lookup
		}
	}
	if foundAt < 0 || foundAt > lookupsBefore+2 {
		t.Errorf("the added backend was found by lookup %d, want at most the second after the change (%d + 2)", foundAt, lookupsBefore)
	}
}

// TestDiscoveryResolverFailureCounted: a resolver that stops answering
// keeps the backends, and each failed lookup is counted and logged.
func TestDiscoveryResolverFailureCounted(t *testing.T) {
	const name = "ollama.e2e.test"
	port, _ := fakesOnPort(t, ollamatest.Config{}, "127.0.0.2", "127.0.0.3")
	srv, err := dnstest.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	srv.SetA(name, "127.0.0.2", "127.0.0.3")
	upstreams := fmt.Sprintf(`[{"url":"http://%s:%d","discover":"dns","refresh":"100ms","resolver":"%s"}]`, name, port, srv.Addr())
	r := startApp(t, "VEGA_UPSTREAMS="+upstreams)
	waitDiscovery(t, r.admin, "two backends", func(d discoveryDoc) bool { return len(d.Pools) == 2 })
	srv.Fail(2) // SERVFAIL
	d := waitDiscovery(t, r.admin, "failed lookups", func(d discoveryDoc) bool { return d.Routing.Discovery[0].LookupFailures >= 3 })
	if len(d.Pools) != 2 || d.Routing.Discovery[0].Name != name {
		t.Errorf("while the resolver fails: %+v", d)
	}
	if st, _, body := post(t, "http://"+r.data+"/api/chat", `{"model":"llama3.2","stream":false,"messages":[{"role":"user","content":"hi"}]}`, nil); st != 200 {
		t.Errorf("chat while the resolver fails: %d %s", st, body)
	}
	_, _, body := get(t, "http://"+r.admin+"/metrics", nil)
	if !strings.Contains(string(body), `vega_discovery_lookup_failures_total{discovery="`+name+`"}`) {
		t.Error("/metrics lacks vega_discovery_lookup_failures_total")
	}
	r.stop(t)
	if n := strings.Count(r.out.String(), `"event":"lookup_failed"`); n < 3 {
		t.Errorf("%d lookup_failed lines, want one per failed lookup (at least 3)", n)
	}
}

// TestDiscoveryStartsEmpty: until DNS names a backend the gateway is not
// ready and every route answers 503 no_backend, fleet-wide ones (a blob
// upload too) included;
// then the first backend joins and serves.
func TestDiscoveryStartsEmpty(t *testing.T) {
	const name = "later.e2e.test"
	port, _ := fakesOnPort(t, ollamatest.Config{}, "127.0.0.2")
	srv, err := dnstest.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	upstreams := fmt.Sprintf(`[{"name":"later","url":"http://%s:%d","discover":"dns","refresh":"100ms","resolver":"%s"}]`, name, port, srv.Addr())
	r := startApp(t, "VEGA_UPSTREAMS="+upstreams, "VEGA_AUTH_ALLOW_MODEL_MANAGEMENT=true")
	waitDiscovery(t, r.admin, "a failed lookup", func(d discoveryDoc) bool { return d.Routing.Discovery[0].LookupFailures > 0 })
	if st, _, body := get(t, "http://"+r.admin+"/readyz", nil); st != 503 {
		t.Errorf("/readyz = %d %s with no backend", st, body)
	}
	for _, c := range []struct{ method, path, body string }{
		{"POST", "/api/chat", `{"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}`},
		{"POST", "/chat", `{"prompt":"hi"}`},
		{"GET", "/api/tags", ""},
		{"POST", "/api/pull", `{"model":"llama3.2"}`},
		{"GET", "/api/version", ""},
		// A blob upload too (with a body that fits one write: a client
		// still writing when the early answer closes the connection may
		// see a reset instead of the 503).
		{"POST", "/api/blobs/sha256:" + strings.Repeat("ab", 32), strings.Repeat("x", 16)},
	} {
		st, _, body := send(t, c.method, "http://"+r.data+c.path, c.body, nil)
		if st != 503 || !strings.Contains(string(body), "no_backend") {
			t.Errorf("%s %s with no backend = %d %s, want 503 no_backend", c.method, c.path, st, body)
		}
	}
	srv.SetA(name, "127.0.0.2")
	waitDiscovery(t, r.admin, "the backend joined", func(d discoveryDoc) bool { return len(d.Pools) == 1 })
	if st, _, body := post(t, "http://"+r.data+"/api/chat", `{"model":"llama3.2","stream":false,"messages":[{"role":"user","content":"hi"}]}`, nil); st != 200 {
		t.Errorf("chat once a backend joined: %d %s", st, body)
	}
	if st, _, body := get(t, "http://"+r.admin+"/readyz", nil); st != 200 {
		t.Errorf("/readyz = %d %s with a backend", st, body)
	}
	r.stop(t)
	if !strings.Contains(r.out.String(), `"discovery":["later"]`) {
		t.Error("the start-up line does not name the discovery")
	}
}
