package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vega-gateway/vega-gateway/fleet"
)

// loadYAML loads a config from yaml (none if empty) and env.
func loadYAML(t *testing.T, yaml string, env ...string) (config, error) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "absent.yaml")
	if yaml != "" {
		path = filepath.Join(t.TempDir(), "config.yaml")
		if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		return loadConfig(path, nil, env)
	}
	return loadConfig("", nil, env)
}

func TestUpstreamsConfig(t *testing.T) {
	three := []upstreamEntry{
		{Name: "gpu-a", URL: "http://10.0.0.1:11434", Weight: 2},
		{Name: "gpu-b", URL: "http://10.0.0.2:11434", MaxConnections: 8},
		{URL: "http://10.0.0.3:11434"},
	}
	for _, tc := range []struct {
		name string
		yaml string
		env  []string
		want []upstreamEntry
		// wantNames and wantMax are the fleet's names and each pool's bound.
		wantNames []string
		wantMax   []int
	}{
		{
			name: "yaml list of maps",
			yaml: "pool:\n  max_connections: 20\nupstreams:\n" +
				"  - {name: gpu-a, url: \"http://10.0.0.1:11434\", weight: 2}\n" +
				"  - name: gpu-b\n    url: \"http://10.0.0.2:11434\"\n    max_connections: 8\n" +
				"  - url: \"http://10.0.0.3:11434\"\n",
			want: three, wantNames: []string{"gpu-a", "gpu-b", "10.0.0.3:11434"}, wantMax: []int{20, 8, 20},
		},
		{
			name:      "yaml bare URLs",
			yaml:      "upstreams: [\"http://10.0.0.1:11434\", \"http://10.0.0.2:11434\"]\n",
			want:      []upstreamEntry{{URL: "http://10.0.0.1:11434"}, {URL: "http://10.0.0.2:11434"}},
			wantNames: []string{"10.0.0.1:11434", "10.0.0.2:11434"}, wantMax: []int{100, 100},
		},
		{
			name:      "VEGA_UPSTREAMS comma-separated",
			env:       []string{"VEGA_UPSTREAMS=http://10.0.0.1:11434, http://10.0.0.2:11434,"},
			want:      []upstreamEntry{{URL: "http://10.0.0.1:11434"}, {URL: "http://10.0.0.2:11434"}},
			wantNames: []string{"10.0.0.1:11434", "10.0.0.2:11434"}, wantMax: []int{100, 100},
		},
		{
			name: "VEGA_UPSTREAMS JSON",
			env: []string{`VEGA_UPSTREAMS=[{"name":"gpu-a","url":"http://10.0.0.1:11434","weight":2},` +
				`{"name":"gpu-b","url":"http://10.0.0.2:11434","max_connections":8},{"url":"http://10.0.0.3:11434"}]`},
			want: three, wantNames: []string{"gpu-a", "gpu-b", "10.0.0.3:11434"}, wantMax: []int{100, 8, 100},
		},
		{
			name: "env replaces the file's list",
			yaml: "upstreams:\n  - url: \"http://10.9.9.9:11434\"\n",
			env:  []string{"VEGA_UPSTREAMS=http://10.0.0.1:11434"},
			want: []upstreamEntry{{URL: "http://10.0.0.1:11434"}}, wantNames: []string{"10.0.0.1:11434"}, wantMax: []int{100},
		},
		{
			name: "upstream.url alone is one backend",
			env:  []string{"VEGA_UPSTREAM_URL=http://10.0.0.1:11434"},
			want: []upstreamEntry{}, wantNames: []string{"10.0.0.1:11434"}, wantMax: []int{100},
		},
		{
			name: "upstream.url at its default beside upstreams",
			yaml: "upstream:\n  url: \"http://127.0.0.1:11434\"\nupstreams: [\"http://10.0.0.1:11434\"]\n",
			want: []upstreamEntry{{URL: "http://10.0.0.1:11434"}}, wantNames: []string{"10.0.0.1:11434"}, wantMax: []int{100},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := loadYAML(t, tc.yaml, tc.env...)
			if err != nil {
				t.Fatal(err)
			}
			if len(c.Upstreams) != len(tc.want) {
				t.Fatalf("upstreams = %+v, want %+v", c.Upstreams, tc.want)
			}
			for i := range tc.want {
				if c.Upstreams[i] != tc.want[i] {
					t.Fatalf("upstreams[%d] = %+v, want %+v", i, c.Upstreams[i], tc.want[i])
				}
			}
			f, err := c.newFleet(nil)
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			var maxConns []int
			for _, b := range f.Backends() {
				names = append(names, b.Name)
				maxConns = append(maxConns, b.Pool.Snapshot().MaxConnections)
			}
			if strings.Join(names, ",") != strings.Join(tc.wantNames, ",") {
				t.Errorf("backends = %v, want %v", names, tc.wantNames)
			}
			for i := range tc.wantMax {
				if maxConns[i] != tc.wantMax[i] {
					t.Errorf("max_connections = %v, want %v", maxConns, tc.wantMax)
					break
				}
			}
		})
	}
}

func TestUpstreamsConfigErrors(t *testing.T) {
	const secret = "upstream-password-0123456789"
	many := make([]string, fleet.MaxBackends+1)
	for i := range many {
		many[i] = fmt.Sprintf("http://10.0.1.%d:11434", i+1)
	}
	for _, tc := range []struct {
		name    string
		yaml    string
		env     []string
		wantKey string
	}{
		{"duplicate name", "upstreams:\n  - {name: a, url: \"http://10.0.0.1:1\"}\n  - {name: a, url: \"http://10.0.0.2:1\"}\n", nil, "upstreams[1].name"},
		{"duplicate URL", "upstreams:\n  - {name: a, url: \"http://10.0.0.1:1\"}\n  - {name: b, url: \"http://10.0.0.1:1/\"}\n", nil, "upstreams[1].url"},
		{"duplicate URL, default names", "", []string{"VEGA_UPSTREAMS=http://10.0.0.1:1,http://10.0.0.1:1"}, "upstreams[1].url"},
		{"negative weight", "upstreams:\n  - {url: \"http://10.0.0.1:1\", weight: -1}\n", nil, "upstreams[0].weight"},
		{"weight not a number", "upstreams:\n  - {url: \"http://10.0.0.1:1\", weight: lots}\n", nil, "upstreams[0].weight"},
		{"negative max_connections", "upstreams:\n  - {url: \"http://10.0.0.1:1\", max_connections: -3}\n", nil, "upstreams[0].max_connections"},
		{"missing url", "upstreams:\n  - {url: \"http://10.0.0.1:1\"}\n  - {name: b}\n", nil, "upstreams[1].url"},
		{"unknown key in an entry", "upstreams:\n  - {url: \"http://10.0.0.1:1\", wieght: 2}\n", nil, "upstreams[0]"},
		{"unknown key in the JSON form", "", []string{`VEGA_UPSTREAMS=[{"url":"http://10.0.0.1:1","wieght":2}]`}, "upstreams"},
		{"bad name", "upstreams:\n  - {name: \"gpu a\", url: \"http://10.0.0.1:1\"}\n", nil, "upstreams[0].name"},
		{"bad URL", "upstreams:\n  - {url: \"ftp://10.0.0.1:1\"}\n", nil, "upstreams[0]"},
		{"URL with credentials", "upstreams:\n  - {url: \"http://u:" + secret + "@10.0.0.1:1\"}\n", nil, "upstreams[0]"},
		{"both forms in the file", "upstream:\n  url: \"http://10.0.0.9:1\"\nupstreams: [\"http://10.0.0.1:1\"]\n", nil, "upstreams"},
		{"both forms in the environment", "", []string{"VEGA_UPSTREAM_URL=http://10.0.0.9:1", "VEGA_UPSTREAMS=http://10.0.0.1:1"}, "upstreams"},
		{"file list, env shorthand", "upstreams: [\"http://10.0.0.1:1\"]\n", []string{"VEGA_UPSTREAM_URL=http://10.0.0.9:1"}, "upstreams"},
		{"too many", "", []string{"VEGA_UPSTREAMS=" + strings.Join(many, ",")}, "upstreams"},
		{"unknown policy", "routing:\n  policy: random\n", nil, "routing.policy"},
		{"unknown routing key", "routing:\n  polcy: round_robin\n", nil, "routing.polcy"},
		{"affinity factor below 1", "", []string{"VEGA_ROUTING_AFFINITY_LOAD_FACTOR=0.5"}, "routing.affinity_load_factor"},
		{"attempts not a number", "", []string{"VEGA_ROUTING_MAX_ATTEMPTS=all"}, "routing.max_attempts"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := loadYAML(t, tc.yaml, tc.env...)
			if err == nil {
				t.Fatal("loadConfig accepted it")
			}
			if !strings.Contains(err.Error(), tc.wantKey) {
				t.Fatalf("error %q does not name %q", err, tc.wantKey)
			}
			if strings.Contains(err.Error(), secret) {
				t.Fatalf("error prints the secret: %q", err)
			}
		})
	}
}

func TestRoutingConfigFromEnv(t *testing.T) {
	c, err := loadYAML(t, "", "VEGA_ROUTING_POLICY=round_robin", "VEGA_ROUTING_REFRESH_INTERVAL=500ms",
		"VEGA_ROUTING_MAX_ATTEMPTS=1", "VEGA_ROUTING_SATURATED_AT=7", "VEGA_ROUTING_AFFINITY_LOAD_FACTOR=1.5",
		"VEGA_ROUTING_BREAKER_FAILURES=2", "VEGA_ROUTING_BREAKER_BACKOFF=3s", "VEGA_ROUTING_BREAKER_MAX_BACKOFF=9s",
		"VEGA_ROUTING_COLD_LOAD_THRESHOLD=1s")
	if err != nil {
		t.Fatal(err)
	}
	want := fleet.Config{
		Policy: fleet.PolicyRoundRobin, RefreshInterval: 500 * time.Millisecond, MaxAttempts: 1, SaturatedAt: 7,
		AffinityLoadFactor: 1.5, BreakerFailures: 2, BreakerBackoff: 3 * time.Second, BreakerMaxBackoff: 9 * time.Second,
		ColdLoadThreshold: time.Second,
	}
	if c.Routing != want {
		t.Fatalf("routing = %+v, want %+v", c.Routing, want)
	}
	f, err := c.newFleet(nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := f.Config(); got != want {
		t.Fatalf("fleet config = %+v, want %+v", got, want)
	}

	d, err := loadYAML(t, "")
	if err != nil {
		t.Fatal(err)
	}
	wantDefaults := fleet.Config{
		Policy: fleet.DefaultPolicy, RefreshInterval: fleet.DefaultRefreshInterval, MaxAttempts: fleet.DefaultMaxAttempts,
		SaturatedAt: fleet.DefaultSaturatedAt, AffinityLoadFactor: fleet.DefaultAffinityLoadFactor,
		BreakerFailures: fleet.DefaultBreakerFailures, BreakerBackoff: fleet.DefaultBreakerBackoff,
		BreakerMaxBackoff: fleet.DefaultBreakerMaxBackoff, ColdLoadThreshold: fleet.DefaultColdLoadThreshold,
	}
	if d.Routing != wantDefaults {
		t.Fatalf("default routing = %+v, want %+v", d.Routing, wantDefaults)
	}
}
