package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vega-gateway/vega-gateway/otelx/otlptest"
)

func TestOtelConfig(t *testing.T) {
	const secret = "otel-secret-token-0123456789"
	path := filepath.Join(t.TempDir(), "config.yaml")
	yaml := "otel:\n  endpoint: http://collector:4318\n  sample_ratio: 0.25\n  headers:\n    Authorization: Bearer " + secret + "\n    x-tenant: a\n"
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := loadConfig(path, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.Otel.Endpoint != "http://collector:4318" || c.Otel.SampleRatio == nil || *c.Otel.SampleRatio != 0.25 || c.Otel.ServiceName != "vega-gateway" ||
		c.Otel.Headers["authorization"] != "Bearer "+secret || c.Otel.Headers["x-tenant"] != "a" {
		t.Fatalf("otel config from file: %+v", c.Otel)
	}
	// 0 is a ratio, not "unset": only the traces clients sampled are kept.
	if c, err := loadConfig("", nil, []string{"VEGA_OTEL_SAMPLE_RATIO=0"}); err != nil || c.Otel.SampleRatio == nil || *c.Otel.SampleRatio != 0 {
		t.Fatalf("otel.sample_ratio 0 from env: %v %+v", err, c.Otel)
	}
	if c, err := loadConfig("", nil, nil); err != nil || c.Otel.SampleRatio == nil || *c.Otel.SampleRatio != 1 {
		t.Fatalf("otel.sample_ratio default: %v %+v", err, c.Otel)
	}
	c, err = loadConfig("", nil, []string{"VEGA_OTEL_ENDPOINT=https://otlp.example:4318/", "VEGA_OTEL_HEADERS=api-key=a%3Db,x-tenant=t",
		"VEGA_OTEL_SERVICE_NAME=edge-gw", "OTEL_EXPORTER_OTLP_ENDPOINT=http://ignored-by-viper:4318"})
	if err != nil {
		t.Fatal(err)
	}
	if c.Otel.Endpoint != "https://otlp.example:4318/" || c.Otel.Headers["api-key"] != "a=b" || c.Otel.Headers["x-tenant"] != "t" || c.Otel.ServiceName != "edge-gw" {
		t.Fatalf("otel config from env: %+v", c.Otel)
	}

	for _, tc := range []struct {
		name    string
		env     []string
		wantKey string
	}{
		{"ratio over 1", []string{"VEGA_OTEL_SAMPLE_RATIO=1.5"}, "otel.sample_ratio"},
		{"negative ratio", []string{"VEGA_OTEL_SAMPLE_RATIO=-0.1"}, "otel.sample_ratio"},
		{"endpoint without scheme", []string{"VEGA_OTEL_ENDPOINT=collector:4318"}, "otel.endpoint"},
		{"headers not pairs", []string{"VEGA_OTEL_HEADERS=" + secret}, "otel.headers"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := loadConfig("", nil, tc.env)
			if err == nil || !strings.Contains(err.Error(), tc.wantKey) {
				t.Fatalf("error %v: want one naming %s", err, tc.wantKey)
			}
			if strings.Contains(err.Error(), secret) {
				t.Fatalf("error prints a header value: %v", err)
			}
		})
	}
}

// The binary exports spans when configured, says so at start, flushes them
// at exit, and serves /debug/pprof with admin.pprof.
func TestServeExportsTracesAndServesPprof(t *testing.T) {
	rcv := otlptest.NewReceiver()
	defer rcv.Close()
	p := startProcess(t, []string{"serve", "--demo"}, "VEGA_OTEL_ENDPOINT="+rcv.URL(), "VEGA_ADMIN_PPROF=true")
	st, _, body := post(t, "http://"+p.data+"/api/chat", `{"model":"llama3.2","messages":[{"role":"user","content":"hi"}],"stream":false}`,
		map[string]string{"X-Correlation-ID": "main-traced"})
	if st != 200 {
		t.Fatalf("chat: %d %s", st, body)
	}
	if st, _, body := get(t, "http://"+p.admin+"/debug/pprof/heap?debug=1", nil); st != 200 || !strings.Contains(string(body), "heap profile") {
		t.Fatalf("pprof heap: %d %.100s", st, body)
	}
	p.stop(t) // before the batch timeout: only the flush at exit can have sent the spans
	var traceID string
	for _, l := range strings.Split(p.stdout.String(), "\n") {
		if strings.Contains(l, `"message":"vega-gateway started"`) && !strings.Contains(l, `"tracing":true`) {
			t.Errorf("start line does not say tracing is on: %s", l)
		}
		if strings.Contains(l, `"message":"request"`) && strings.Contains(l, `"correlation_id":"main-traced"`) {
			var m map[string]any
			if err := json.Unmarshal([]byte(l), &m); err != nil {
				t.Fatal(err)
			}
			traceID, _ = m["trace_id"].(string)
		}
	}
	spans := rcv.Spans()
	for _, s := range spans {
		if s.Kind == "SERVER" && s.TraceID == traceID && s.Attrs["vega.correlation_id"] == "main-traced" {
			return
		}
	}
	t.Fatalf("no server span of trace %q among %d received; output:\n%s", traceID, len(spans), p.stdout.String())
}
