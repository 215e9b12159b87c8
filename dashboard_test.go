package main

import (
	"encoding/json"
	"os"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/vega-gateway/vega-gateway/fleet"
	"github.com/vega-gateway/vega-gateway/gateway"
	"github.com/vega-gateway/vega-gateway/metrics"
	"github.com/vega-gateway/vega-gateway/pool"
)

const dashboardPath = "deploy/grafana/vega-gateway.json"

// TestDashboardMetricsExist checks the Grafana dashboard: valid JSON in
// the import format, a ${DS_PROMETHEUS} input used by every panel, and
// every metric and label its queries name exist in the gateway's registry.
func TestDashboardMetricsExist(t *testing.T) {
	raw, err := os.ReadFile(dashboardPath)
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		SchemaVersion int              `json:"schemaVersion"`
		UID           string           `json:"uid"`
		Title         string           `json:"title"`
		Panels        []map[string]any `json:"panels"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("%s is not valid JSON: %v", dashboardPath, err)
	}
	var generic any
	_ = json.Unmarshal(raw, &generic)
	var inputs []struct {
		Name     string `json:"name"`
		Type     string `json:"type"`
		PluginID string `json:"pluginId"`
	}
	var top map[string]json.RawMessage
	_ = json.Unmarshal(raw, &top)
	if err := json.Unmarshal(top["__inputs"], &inputs); err != nil || len(inputs) != 1 || inputs[0].Name != "DS_PROMETHEUS" || inputs[0].Type != "datasource" || inputs[0].PluginID != "prometheus" {
		t.Fatalf("__inputs = %s, want one DS_PROMETHEUS datasource", top["__inputs"])
	}
	if dash.SchemaVersion < 36 || dash.UID == "" || dash.Title == "" || len(dash.Panels) == 0 {
		t.Fatalf("schemaVersion %d, uid %q, title %q, %d panels", dash.SchemaVersion, dash.UID, dash.Title, len(dash.Panels))
	}

	// Panels: unique ids, the input datasource, at least one query each.
	ids := map[float64]bool{}
	for _, p := range dash.Panels {
		id, _ := p["id"].(float64)
		if ids[id] {
			t.Errorf("panel id %v used twice", id)
		}
		ids[id] = true
		if p["type"] == "row" {
			continue
		}
		if ds, _ := p["datasource"].(map[string]any); ds["uid"] != "${DS_PROMETHEUS}" {
			t.Errorf("panel %q datasource %v, want ${DS_PROMETHEUS}", p["title"], p["datasource"])
		}
		if targets, _ := p["targets"].([]any); len(targets) == 0 {
			t.Errorf("panel %q has no query", p["title"])
		}
	}

	known := registryLabels(t)
	var queries []string
	collectQueries(generic, "", &queries)
	if len(queries) < 20 {
		t.Fatalf("only %d queries found", len(queries))
	}
	used := map[string]bool{}
	for _, q := range queries {
		names := metricName.FindAllString(q, -1)
		if len(names) == 0 {
			t.Errorf("query names no metric: %s", q)
			continue
		}
		labels := map[string]bool{"job": true, "instance": true, "le": true}
		for _, n := range names {
			ls, ok := known[n]
			if !ok {
				t.Errorf("query names %s, which the registry does not expose: %s", n, q)
				continue
			}
			used[strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(n, "_bucket"), "_sum"), "_count")] = true
			for _, l := range ls {
				labels[l] = true
			}
		}
		for _, l := range queryLabels(q) {
			if !labels[l] {
				t.Errorf("query uses label %q that none of %v has: %s", l, names, q)
			}
		}
	}
	// The metrics all have a panel.
	for _, want := range []string{
		"vega_http_requests_total", "vega_http_request_duration_seconds", "vega_http_ttfb_seconds",
		"vega_pool_max_connections", "vega_pool_connections_active", "vega_pool_connections_idle",
		"vega_pool_requests_waiting", "vega_pool_wait_timeouts_total", "vega_llm_tokens_total",
		"vega_llm_tokens_per_second", "vega_llm_time_to_first_token_seconds", "vega_llm_load_duration_seconds",
		"vega_llm_cold_loads_total", "vega_llm_done_total", "vega_client_disconnects_total",
		"vega_upstream_healthy", "vega_build_info",
	} {
		if !used[want] {
			t.Errorf("no panel shows %s", want)
		}
	}
}

var (
	metricName = regexp.MustCompile(`\b(?:vega|go|process)_[a-z0-9_]+\b`)
	byClause   = regexp.MustCompile(`\b(?:by|without)\s*\(([^)]*)\)`)
	matcher    = regexp.MustCompile(`[{,]\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)`)
	labelValue = regexp.MustCompile(`label_values\([^,]*,\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)`)
)

// queryLabels lists the label names a query groups by, matches on or asks
// the values of.
func queryLabels(q string) []string {
	var out []string
	for _, m := range byClause.FindAllStringSubmatch(q, -1) {
		for _, l := range strings.Split(m[1], ",") {
			if l = strings.TrimSpace(l); l != "" {
				out = append(out, l)
			}
		}
	}
	for _, re := range []*regexp.Regexp{matcher, labelValue} {
		for _, m := range re.FindAllStringSubmatch(q, -1) {
			out = append(out, m[1])
		}
	}
	return out
}

// collectQueries gathers every PromQL string of the dashboard: panel
// "expr" fields and template variable "query"/"definition" strings.
func collectQueries(v any, key string, out *[]string) {
	switch v := v.(type) {
	case map[string]any:
		for k, x := range v {
			collectQueries(x, k, out)
		}
	case []any:
		for _, x := range v {
			collectQueries(x, key, out)
		}
	case string:
		if key == "expr" || ((key == "query" || key == "definition") && v != "") {
			*out = append(*out, v)
		}
	}
}

// registryLabels gathers the gateway's registry after one observation of
// every kind, and returns each exposed series name (histograms with their
// _bucket, _sum and _count) with its label names.
func registryLabels(t *testing.T) map[string][]string {
	t.Helper()
	m, err := metrics.New(metrics.Config{}, "test", func() []pool.Snapshot {
		return []pool.Snapshot{{Upstream: "http://127.0.0.1:11434"}}
	})
	if err != nil {
		t.Fatal(err)
	}
	p, err := pool.New(pool.UpstreamConfig{URL: "http://127.0.0.1:11434"}, pool.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	m.RegisterFleet(fleet.Single(p).Snapshot) // the per-backend series
	m.Observe(&gateway.Record{
		Route: "/api/chat", Method: "POST", Status: 200, Duration: time.Second, TTFB: 100 * time.Millisecond,
		TTFT: 150 * time.Millisecond, Streamed: true, Model: "llama3.2", PromptTokens: 10, CompletionTokens: 20,
		DoneReason: "stop", LoadDuration: time.Second, EvalDuration: time.Second,
	})
	fams, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	known := map[string][]string{}
	for _, f := range fams {
		var labels []string
		if len(f.GetMetric()) > 0 {
			for _, lp := range f.GetMetric()[0].GetLabel() {
				labels = append(labels, lp.GetName())
			}
		}
		sort.Strings(labels)
		name := f.GetName()
		known[name] = labels
		if f.GetType() == dto.MetricType_HISTOGRAM || f.GetType() == dto.MetricType_SUMMARY {
			known[name+"_sum"] = labels
			known[name+"_count"] = labels
		}
		if f.GetType() == dto.MetricType_HISTOGRAM {
			known[name+"_bucket"] = labels
		}
	}
	return known
}
