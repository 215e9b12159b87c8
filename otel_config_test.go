package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
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
	if c.Otel.Endpoint != "http://collector:4318" || c.Otel.SampleRatio != 0.25 || c.Otel.ServiceName != "vega-gateway" ||
		c.Otel.Headers["authorization"] != "Bearer "+secret || c.Otel.Headers["x-tenant"] != "a" {
		t.Fatalf("otel config from file: %+v", c.Otel)
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
