package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vega-gateway/vega-gateway/ollamatest"
)

// TestCacheNumbers runs the binary with the cache on in front of a fake
// Ollama: a repeated embedding is a hit, and the stats' cache section,
// /metrics and the access line all say so.
func TestCacheNumbers(t *testing.T) {
	fake, err := ollamatest.NewServer(ollamatest.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer fake.Close()
	p := startProcess(t, []string{"serve"}, "VEGA_UPSTREAM_URL="+fake.URL(), "VEGA_CACHE_ENABLED=true",
		"VEGA_CACHE_MAX_BYTES=4194304", "VEGA_ROUTING_REFRESH_INTERVAL=100ms")
	const body = `{"model":"nomic-embed-text","input":["a","b"]}`
	// Until the catalogue is fetched the model's digest is unknown: bypass.
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, h, _ := post(t, "http://"+p.data+"/api/embed", body, nil)
		if h.Get("X-Vega-Cache") == "hit" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no cache hit within 10 s (last: %q)", h.Get("X-Vega-Cache"))
		}
		time.Sleep(50 * time.Millisecond)
	}

	_, _, raw := get(t, "http://"+p.admin+"/admin/resources/stats", nil)
	var st struct {
		Cache *struct {
			Store    string  `json:"store"`
			Hits     int64   `json:"hits"`
			Misses   int64   `json:"misses"`
			MaxBytes int64   `json:"max_bytes"`
			Bytes    int64   `json:"bytes"`
			HitRate  float64 `json:"hit_rate"`
			Routes   []struct {
				Route, Model string
				Hits         int64 `json:"hits"`
			} `json:"routes"`
		} `json:"cache"`
	}
	if err := json.Unmarshal(raw, &st); err != nil || st.Cache == nil {
		t.Fatalf("stats %s: no cache section (%v)", raw, err)
	}
	c := st.Cache
	if c.Store != "memory" || c.Hits != 2 || c.Misses != 2 || c.MaxBytes != 4<<20 || c.Bytes == 0 || c.HitRate != 0.5 ||
		len(c.Routes) != 1 || c.Routes[0].Route != "/api/embed" || c.Routes[0].Model != "nomic-embed-text" {
		t.Errorf("cache section %s: want 2 hits and 2 misses on /api/embed nomic-embed-text, in memory", raw)
	}

	_, _, metrics := get(t, "http://"+p.admin+"/metrics", nil)
	for _, want := range []string{
		`vega_cache_requests_total{model="nomic-embed-text",result="hit",route="/api/embed"} 2`,
		`vega_cache_max_bytes 4.194304e+06`,
		`vega_cache_entries 2`,
	} {
		if !strings.Contains(string(metrics), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	waitForLog := time.Now().Add(5 * time.Second)
	for {
		logBytes, _ := os.ReadFile(filepath.Join(p.logDir, "gateway.log"))
		if strings.Contains(string(logBytes), `"cache":"hit"`) {
			break
		}
		if time.Now().After(waitForLog) {
			t.Fatalf("no access line with cache hit in the log:\n%s", tailOf(string(logBytes), 2000))
		}
		time.Sleep(50 * time.Millisecond)
	}
	p.stop(t)
}
