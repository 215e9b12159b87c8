package otelx

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"
)

// Defaults of Config.
const (
	// DefaultSampleRatio samples every trace the gateway begins.
	DefaultSampleRatio = 1.0
	// DefaultServiceName is the service.name resource attribute.
	DefaultServiceName = "vega-gateway"
	// QueueSize bounds the spans waiting for export; beyond it new spans
	// are dropped (counted by the SDK), never waited for.
	QueueSize = 4096
	// ExportTimeout bounds one export call, so a collector that never
	// answers holds the exporting goroutine for at most this long.
	ExportTimeout = 2 * time.Second
	// BatchTimeout is the longest a finished span waits before it is sent.
	BatchTimeout = 2 * time.Second
)

// Config is config key otel.*.
type Config struct {
	// Endpoint is the OTLP/HTTP collector's base URL, such as
	// http://collector:4318; spans are posted to its /v1/traces. Empty
	// (the default): tracing is off, unless OTEL_EXPORTER_OTLP_ENDPOINT or
	// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set, which the exporter reads
	// as the OpenTelemetry specification says.
	Endpoint string `mapstructure:"endpoint"`
	// Headers are sent with every export (an API key of a hosted
	// backend). Empty: OTEL_EXPORTER_OTLP_HEADERS applies, if set.
	Headers map[string]string `mapstructure:"headers"`
	// SampleRatio is the share of traces the gateway begins that are
	// recorded; a request that continues a client's traceparent follows
	// the client's sampled flag. Default (nil) 1; 0 records only the
	// traces clients sampled.
	SampleRatio *float64 `mapstructure:"sample_ratio"`
	// ServiceName is the service.name of every span. Default
	// "vega-gateway"; OTEL_SERVICE_NAME overrides it.
	ServiceName string `mapstructure:"service_name"`
}

// envEndpoints are the standard variables that name a collector.
var envEndpoints = []string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"}

// enabled reports whether spans are exported: an endpoint in the config or
// in the environment.
func (c Config) enabled(getenv func(string) string) bool {
	if c.Endpoint != "" {
		return true
	}
	for _, k := range envEndpoints {
		if getenv(k) != "" {
			return true
		}
	}
	return false
}

func (c Config) withDefaults() Config {
	if c.SampleRatio == nil {
		r := DefaultSampleRatio
		c.SampleRatio = &r
	}
	if c.ServiceName == "" {
		c.ServiceName = DefaultServiceName
	}
	return c
}

// Validate checks the config as New would, naming the bad key.
func (c Config) Validate() error {
	c = c.withDefaults()
	if r := *c.SampleRatio; r < 0 || r > 1 {
		return fmt.Errorf("otel.sample_ratio: %v is not between 0 and 1", r)
	}
	if c.Endpoint != "" {
		if _, err := tracesURL(c.Endpoint); err != nil {
			return err
		}
	}
	for k := range c.Headers {
		if k == "" || strings.ContainsAny(k, " \t\r\n:") {
			return fmt.Errorf("otel.headers: %q is not a header name", k)
		}
	}
	return nil
}

// tracesURL is the endpoint's /v1/traces.
func tracesURL(endpoint string) (string, error) {
	u, err := url.Parse(endpoint)
	if err != nil {
		return "", fmt.Errorf("otel.endpoint: %w", err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", errors.New("otel.endpoint: want a base URL such as http://collector:4318")
	}
	return strings.TrimRight(endpoint, "/") + "/v1/traces", nil
}
