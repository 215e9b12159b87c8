package main

import (
	"strings"
	"testing"
	"time"
)

func TestDiscoveryConfig(t *testing.T) {
	want := upstreamEntry{Name: "ollama", URL: "http://ollama-headless.llm.svc.cluster.local:11434", Discover: "dns",
		Refresh: 10 * time.Second, Resolver: "127.0.0.1:5353", Weight: 1, MaxConnections: 64, SRV: "_http._tcp"}
	for _, tc := range []struct {
		name string
		yaml string
		env  []string
	}{
		{"yaml", "upstreams:\n  - {name: ollama, url: \"http://ollama-headless.llm.svc.cluster.local:11434\", discover: dns, refresh: 10s," +
			" resolver: \"127.0.0.1:5353\", weight: 1, max_connections: 64, srv: _http._tcp}\n", nil},
		{"VEGA_UPSTREAMS JSON", "", []string{`VEGA_UPSTREAMS=[{"name":"ollama","url":"http://ollama-headless.llm.svc.cluster.local:11434",` +
			`"discover":"dns","refresh":"10s","resolver":"127.0.0.1:5353","weight":1,"max_connections":64,"srv":"_http._tcp"}]`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := loadYAML(t, tc.yaml, tc.env...)
			if err != nil {
				t.Fatal(err)
			}
			if len(c.Upstreams) != 1 || c.Upstreams[0] != want {
				t.Fatalf("upstreams = %+v, want [%+v]", c.Upstreams, want)
			}
			f, err := c.newFleet(nil)
			if err != nil {
				t.Fatal(err)
			}
			// No lookup before Run: the fleet starts empty.
			if s := f.Snapshot(); f.Len() != 0 || f.Single() || len(s.Discovery) != 1 || s.Discovery[0].Name != "ollama" {
				t.Fatalf("fleet: %d backends, single %v, discovery %+v", f.Len(), f.Single(), s.Discovery)
			}
		})
	}
	// Unnamed, the group takes the URL's host; beside a configured backend.
	c, err := loadYAML(t, "upstreams:\n  - http://10.0.0.1:11434\n  - {url: \"http://ollama.llm.svc:11434\", discover: dns}\n")
	if err != nil {
		t.Fatal(err)
	}
	f, err := c.newFleet(nil)
	if err != nil {
		t.Fatal(err)
	}
	if s := f.Snapshot(); f.Len() != 1 || f.Single() || len(s.Discovery) != 1 || s.Discovery[0].Name != "ollama.llm.svc" {
		t.Fatalf("fleet: %d backends, single %v, discovery %+v", f.Len(), f.Single(), s.Discovery)
	}
}

func TestDiscoveryConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name    string
		yaml    string
		env     []string
		wantKey string
	}{
		{"unknown discover", "upstreams:\n  - {url: \"http://o.svc:1\", discover: k8s}\n", nil, "upstreams[0].discover"},
		{"resolver without discover", "upstreams:\n  - {url: \"http://o.svc:1\", resolver: \"127.0.0.1:53\"}\n", nil, "upstreams[0]: refresh, resolver and srv need discover"},
		{"resolver without port", "upstreams:\n  - {url: \"http://o.svc:1\", discover: dns, resolver: 10.0.0.10}\n", nil, "upstreams[0].resolver"},
		{"bad srv", "upstreams:\n  - {url: \"http://o.svc:1\", discover: dns, srv: http}\n", nil, "upstreams[0].srv"},
		{"negative refresh", "upstreams:\n  - {url: \"http://o.svc:1\", discover: dns, refresh: -1s}\n", nil, "upstreams[0].refresh"},
		{"refresh without a unit", "upstreams:\n  - {url: \"http://o.svc:1\", discover: dns, refresh: 10}\n", nil, "upstreams[0].refresh: must be at least 100ms"},
		{"refresh not a duration", "upstreams:\n  - {url: \"http://o.svc:1\", discover: dns, refresh: often}\n", nil, "upstreams[0].refresh"},
		{"JSON refresh not a duration", "", []string{`VEGA_UPSTREAMS=[{"url":"http://o.svc:1","discover":"dns","refresh":10}]`}, "upstreams"},
		{"JSON unknown field", "", []string{`VEGA_UPSTREAMS=[{"url":"http://o.svc:1","discover":"dns","resolvr":"x:53"}]`}, "upstreams"},
		{"group named as a backend", "upstreams:\n  - {name: a, url: \"http://10.0.0.1:1\"}\n  - {name: a, url: \"http://o.svc:1\", discover: dns}\n", nil, "upstreams (discovery a).name"},
		{"bad url", "upstreams:\n  - {url: \"ftp://o.svc:1\", discover: dns}\n", nil, "upstreams[0]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := loadYAML(t, tc.yaml, tc.env...)
			if err == nil || !strings.Contains(err.Error(), tc.wantKey) {
				t.Fatalf("error %v does not name %q", err, tc.wantKey)
			}
		})
	}
}
