package otelx_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/vega-gateway/vega-gateway/otelx"
	"github.com/vega-gateway/vega-gateway/otelx/otlptest"
	"github.com/vega-gateway/vega-gateway/trace"
)

func TestOffWithoutAnEndpoint(t *testing.T) {
	tr, err := otelx.New(otelx.Config{}, func(string) string { return "" })
	if err != nil || tr != nil {
		t.Fatalf("New with no endpoint: %v, %v; want nil, nil", tr, err)
	}
	if err := tr.Shutdown(context.Background()); err != nil { // a nil tracer shuts down as a no-op
		t.Fatal(err)
	}
}

// exportOne starts and ends a request span and returns it as received.
func exportOne(t *testing.T, tr *otelx.Tracer, rcv *otlptest.Receiver) otlptest.Span {
	t.Helper()
	tc := trace.ParseTraceparent(nil)
	tr.StartRequest(&tc, "GET /x", time.Now()).End()
	if err := tr.ForceFlush(context.Background()); err != nil {
		t.Fatal(err)
	}
	spans, ok := rcv.WaitFor(5*time.Second, func(s []otlptest.Span) bool { return len(s) > 0 })
	if !ok {
		t.Fatal("nothing received")
	}
	if spans[0].TraceID != string(tc.TraceID[:]) || spans[0].ParentSpanID != "" {
		t.Fatalf("span %+v: want a root in trace %s", spans[0], tc.TraceID)
	}
	return spans[0]
}

func TestConfigEndpointAndHeaders(t *testing.T) {
	rcv := otlptest.NewReceiver()
	defer rcv.Close()
	tr, err := otelx.New(otelx.Config{Endpoint: rcv.URL() + "/", Headers: map[string]string{"X-Api-Key": "k1"}, ServiceName: "gw-test"},
		func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Shutdown(context.Background())
	s := exportOne(t, tr, rcv)
	if s.Service != "gw-test" || rcv.Headers()[0].Get("X-Api-Key") != "k1" {
		t.Fatalf("service %q, headers %v", s.Service, rcv.Headers()[0])
	}
}

// The standard variables alone turn export on and configure it.
func TestStandardEnvironment(t *testing.T) {
	rcv := otlptest.NewReceiver()
	defer rcv.Close()
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rcv.URL())
	t.Setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=blue")
	t.Setenv("OTEL_SERVICE_NAME", "from-env")
	tr, err := otelx.New(otelx.Config{}, os.Getenv)
	if err != nil || tr == nil {
		t.Fatalf("New: %v, %v", tr, err)
	}
	defer tr.Shutdown(context.Background())
	s := exportOne(t, tr, rcv)
	if s.Service != "from-env" || rcv.Headers()[0].Get("X-Tenant") != "blue" {
		t.Fatalf("service %q, headers %v", s.Service, rcv.Headers()[0])
	}
}
