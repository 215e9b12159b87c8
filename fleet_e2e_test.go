package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vega-gateway/vega-gateway/ollamatest"
)

// runningApp is the app served in-process on loopback ports.
type runningApp struct {
	app         *app
	data, admin string
	out         *lockedBuffer
	sigs        chan os.Signal
	code        chan int
}

// startApp loads the config from env (no file) and serves it in-process
// until stop or the test's end.
func startApp(t *testing.T, env ...string) *runningApp {
	t.Helper()
	env = append([]string{
		"VEGA_GATEWAY_LISTEN=127.0.0.1:0", "VEGA_ADMIN_LISTEN=" + freeAddr(t), "VEGA_LOG_DIR=",
		"VEGA_UPSTREAM_HEALTH_INTERVAL=100ms", "VEGA_ROUTING_REFRESH_INTERVAL=100ms",
	}, env...)
	cfg, err := loadConfig("", nil, env)
	if err != nil {
		t.Fatal(err)
	}
	r := &runningApp{out: &lockedBuffer{}, sigs: make(chan os.Signal, 2), code: make(chan int, 1)}
	log, sink := newLogger(cfg.Log, r.out, r.out)
	if r.app, err = newApp(cfg, log, sink); err != nil {
		sink.Close()
		t.Fatal(err)
	}
	r.data, r.admin = r.app.gwLn.Addr().String(), r.app.adminLn.Addr().String()
	go func() {
		code := r.app.run(r.sigs, make(chan os.Signal))
		sink.Close() // every line written before stop returns
		r.code <- code
	}()
	t.Cleanup(func() { r.stop(t) })
	return r
}

// stop sends SIGTERM and waits for run to return 0; a second call does
// nothing.
func (r *runningApp) stop(t *testing.T) {
	t.Helper()
	if r.sigs == nil {
		return
	}
	r.sigs <- syscall.SIGTERM
	r.sigs = nil
	select {
	case code := <-r.code:
		if code != 0 {
			t.Errorf("run returned %d; output:\n%s", code, tailOf(r.out.String(), 3000))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not return within 10 s of SIGTERM")
	}
}

// fleetPoolsDoc is the part of /admin/resources/pools the fleet test reads.
type fleetPoolsDoc struct {
	Upstream string `json:"upstream"`
	Pools    []struct {
		Name           string `json:"name"`
		URL            string `json:"url"`
		MaxConnections int    `json:"max_connections"`
		Health         struct {
			Healthy bool `json:"healthy"`
			Down    bool `json:"down"`
		} `json:"health"`
		Models struct {
			Installed []string `json:"installed"`
		} `json:"models"`
		Catalogue struct {
			Known bool `json:"known"`
		} `json:"catalogue"`
		Picks map[string]int `json:"picks"`
	} `json:"pools"`
	Routing struct {
		Policy string `json:"policy"`
	} `json:"routing"`
}

// waitPools polls /admin/resources/pools until ok holds, for at most 5 s.
func waitPools(t *testing.T, admin string, what string, ok func(fleetPoolsDoc) bool) fleetPoolsDoc {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		st, _, body := get(t, "http://"+admin+"/admin/resources/pools", nil)
		var doc fleetPoolsDoc
		if st == 200 && json.Unmarshal(body, &doc) == nil && ok(doc) {
			return doc
		}
		if time.Now().After(deadline) {
			t.Fatalf("never %s: %d %s", what, st, body)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestFleetEndToEnd serves three fake Ollamas with different models as one
// fleet: the admin listener lists them with their catalogues, requests go
// to a backend with the model, /metrics has per-backend series, and
// /readyz stays 200 while one backend is gone and another closed.
func TestFleetEndToEnd(t *testing.T) {
	backends := []struct {
		name      string
		models    []string
		installed string // as the catalogue lists them: normalised, sorted
	}{
		{"gpu-a", []string{"llama3.2", "qwen2.5:0.5b"}, "llama3.2:latest,qwen2.5:0.5b"},
		{"gpu-b", []string{"llama3.2", "nomic-embed-text"}, "llama3.2:latest,nomic-embed-text:latest"},
		{"gpu-c", []string{"qwen2.5:0.5b", "nomic-embed-text"}, "nomic-embed-text:latest,qwen2.5:0.5b"},
	}
	fakes := make([]*ollamatest.Server, len(backends))
	var entries []string
	for i, b := range backends {
		fake, err := ollamatest.NewServer(ollamatest.Config{Models: b.models})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { fake.Close() })
		fakes[i] = fake
		maxConns := 0
		if i == 2 {
			maxConns = 3
		}
		entries = append(entries, fmt.Sprintf(`{"name":%q,"url":%q,"max_connections":%d}`, b.name, fake.URL(), maxConns))
	}
	r := startApp(t, "VEGA_UPSTREAMS=["+strings.Join(entries, ",")+"]")

	// Every backend listed by name, with its installed models once the
	// first catalogue refresh is in.
	doc := waitPools(t, r.admin, "three known catalogues", func(d fleetPoolsDoc) bool {
		for _, b := range d.Pools {
			if !b.Catalogue.Known || !b.Health.Healthy {
				return false
			}
		}
		return len(d.Pools) == len(backends)
	})
	if doc.Upstream != fakes[0].URL() || doc.Routing.Policy != "model_aware" {
		t.Errorf("seed upstream %q, policy %q; want %q, model_aware", doc.Upstream, doc.Routing.Policy, fakes[0].URL())
	}
	for i, b := range backends {
		got := doc.Pools[i]
		if installed := strings.Join(got.Models.Installed, ","); got.Name != b.name || got.URL != fakes[i].URL() || installed != b.installed {
			t.Errorf("pools[%d] = %s %s %s, want %s %s %s", i, got.Name, got.URL, installed, b.name, fakes[i].URL(), b.installed)
		}
		if wantMax := map[bool]int{true: 3, false: 100}[i == 2]; got.MaxConnections != wantMax {
			t.Errorf("pools[%d].max_connections = %d, want %d", i, got.MaxConnections, wantMax)
		}
	}

	// An embedding model only gpu-b and gpu-c have: gpu-a never sees it.
	for range 4 {
		st, _, body := post(t, "http://"+r.data+"/api/embed", `{"model":"nomic-embed-text","input":"hi"}`, nil)
		if st != 200 {
			t.Fatalf("/api/embed: %d %s", st, body)
		}
	}
	for _, req := range fakes[0].Requests() {
		if req.Path == "/api/embed" {
			t.Fatalf("gpu-a got an /api/embed for a model it does not have")
		}
	}

	st, _, body := get(t, "http://"+r.admin+"/metrics", nil)
	if st != 200 {
		t.Fatalf("/metrics: %d", st)
	}
	for _, b := range backends {
		for _, series := range []string{
			`vega_backend_outstanding_requests{backend="` + b.name + `"}`,
			`vega_backend_breaker_open{backend="` + b.name + `"} 0`,
			`vega_backend_picks_total{backend="` + b.name + `",reason="loaded"}`,
			`vega_backend_models_installed{backend="` + b.name + `"} 2`,
		} {
			if !strings.Contains(string(body), series) {
				t.Errorf("/metrics lacks %s", series)
			}
		}
	}
	for _, f := range fakes {
		if s := `vega_pool_max_connections{upstream="` + f.URL() + `"}`; !strings.Contains(string(body), s) {
			t.Errorf("/metrics lacks %s", s)
		}
	}

	// gpu-a goes away: once its prober marks it down the gateway is still
	// ready, and llama3.2 is served by gpu-b.
	fakes[0].Close()
	waitPools(t, r.admin, "gpu-a marked down", func(d fleetPoolsDoc) bool { return len(d.Pools) == 3 && d.Pools[0].Health.Down })
	if st, _, body := get(t, "http://"+r.admin+"/readyz", nil); st != 200 {
		t.Fatalf("/readyz = %d %s with two of three backends up", st, body)
	}
	if st, _, body := post(t, "http://"+r.data+"/api/chat", `{"model":"llama3.2","stream":false,"messages":[{"role":"user","content":"hi"}]}`, nil); st != 200 {
		t.Fatalf("/api/chat with gpu-a down: %d %s", st, body)
	}

	// gpu-b's pool closed as well: gpu-c alone keeps the gateway ready.
	r.app.fleet.Backends()[1].Pool.Close()
	if st, _, body := get(t, "http://"+r.admin+"/readyz", nil); st != 200 {
		t.Fatalf("/readyz = %d %s with gpu-a down and gpu-b closed", st, body)
	}

	r.stop(t)
	out := r.out.String()
	for _, want := range []string{`"message":"vega-gateway started"`, `"name":"gpu-c"`, `"backend":"gpu-a"`, "requests go to the other backends"} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %s:\n%s", want, tailOf(out, 3000))
		}
	}
}
