package otelx

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"time"

	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	oteltrace "go.opentelemetry.io/otel/trace"

	"github.com/vega-gateway/vega-gateway/trace"
)

// Tracer exports spans through a batching processor: a span ends into a
// bounded queue and one SDK goroutine sends batches, so a slow or absent
// collector costs a request nothing (spans beyond the queue are dropped).
// A nil *Tracer means tracing is off.
type Tracer struct {
	tp     *sdktrace.TracerProvider
	tracer oteltrace.Tracer
}

// New builds the tracer, or returns nil when neither otel.endpoint nor an
// OTEL_EXPORTER_OTLP_*ENDPOINT variable names a collector. getenv is
// os.Getenv (a parameter so tests leave the process environment alone).
// The exporter's goroutine runs until Shutdown.
func New(cfg Config, getenv func(string) string) (*Tracer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if !cfg.enabled(getenv) {
		return nil, nil
	}
	cfg = cfg.withDefaults()
	// Options given here win over the environment; only what the config
	// sets is given, so OTEL_EXPORTER_OTLP_ENDPOINT, _HEADERS and the rest
	// apply to whatever it leaves empty.
	opts := []otlptracehttp.Option{
		otlptracehttp.WithTimeout(ExportTimeout),
		otlptracehttp.WithRetry(otlptracehttp.RetryConfig{
			Enabled: true, InitialInterval: 200 * time.Millisecond, MaxInterval: time.Second, MaxElapsedTime: ExportTimeout,
		}),
	}
	if cfg.Endpoint != "" {
		u, _ := tracesURL(cfg.Endpoint) // checked by Validate
		opts = append(opts, otlptracehttp.WithEndpointURL(u))
	}
	if len(cfg.Headers) > 0 {
		opts = append(opts, otlptracehttp.WithHeaders(cfg.Headers))
	}
	exp, err := otlptracehttp.New(context.Background(), opts...)
	if err != nil {
		return nil, fmt.Errorf("otel: exporter: %w", err)
	}
	res, err := resource.New(context.Background(),
		resource.WithSchemaURL(semconv.SchemaURL),
		resource.WithAttributes(semconv.ServiceName(cfg.ServiceName)),
		resource.WithFromEnv(), // OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
	)
	if err != nil {
		return nil, fmt.Errorf("otel: resource: %w", err)
	}
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(exp,
			sdktrace.WithMaxQueueSize(QueueSize),
			sdktrace.WithBatchTimeout(BatchTimeout),
			sdktrace.WithExportTimeout(ExportTimeout),
		),
		sdktrace.WithResource(res),
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(*cfg.SampleRatio))),
		sdktrace.WithIDGenerator(idGenerator{}),
	)
	return &Tracer{tp: tp, tracer: tp.Tracer("github.com/vega-gateway/vega-gateway")}, nil
}

// Shutdown exports the spans still queued, within ctx, and stops the
// exporter's goroutine.
func (t *Tracer) Shutdown(ctx context.Context) error {
	if t == nil {
		return nil
	}
	return t.tp.Shutdown(ctx)
}

// ForceFlush exports every span ended so far, within ctx.
func (t *Tracer) ForceFlush(ctx context.Context) error { return t.tp.ForceFlush(ctx) }

// StartRequest starts the server span of a request under the trace tc
// names: as a child of the client's span when tc continues one, else as
// the root of tc's trace, so the span's trace ID is the access log's
// trace_id either way. A client's unsampled flag gives a span that records
// nothing but still carries its IDs upstream.
func (t *Tracer) StartRequest(tc *trace.Context, name string, start time.Time) oteltrace.Span {
	var tid oteltrace.TraceID
	_, _ = hex.Decode(tid[:], tc.TraceID[:])
	ctx := context.Background()
	if tc.Started {
		ctx = context.WithValue(ctx, traceIDKey{}, tid)
	} else {
		var sid oteltrace.SpanID
		_, _ = hex.Decode(sid[:], tc.ClientSpanID[:])
		var flags [1]byte
		_, _ = hex.Decode(flags[:], tc.Flags[:])
		ctx = oteltrace.ContextWithRemoteSpanContext(ctx, oteltrace.NewSpanContext(oteltrace.SpanContextConfig{
			TraceID: tid, SpanID: sid, TraceFlags: oteltrace.TraceFlags(flags[0]), Remote: true,
		}))
	}
	_, span := t.tracer.Start(ctx, name, oteltrace.WithSpanKind(oteltrace.SpanKindServer), oteltrace.WithTimestamp(start))
	return span
}

// StartChild starts a span under parent.
func (t *Tracer) StartChild(parent oteltrace.Span, name string, kind oteltrace.SpanKind, start time.Time) oteltrace.Span {
	ctx := oteltrace.ContextWithSpan(context.Background(), parent)
	_, span := t.tracer.Start(ctx, name, oteltrace.WithSpanKind(kind), oteltrace.WithTimestamp(start))
	return span
}

// AppendTraceparent appends the W3C traceparent of span's context.
func AppendTraceparent(dst []byte, sc oteltrace.SpanContext) []byte {
	tid, sid := sc.TraceID(), sc.SpanID()
	dst = append(dst, "00-"...)
	dst = hex.AppendEncode(dst, tid[:])
	dst = append(dst, '-')
	dst = hex.AppendEncode(dst, sid[:])
	dst = append(dst, '-')
	return hex.AppendEncode(dst, []byte{byte(sc.TraceFlags())})
}

// traceIDKey carries the trace ID the gateway chose for a trace it begins
// (the one in its access log) to idGenerator.
type traceIDKey struct{}

// idGenerator is the SDK's random generator but for a root span started
// with a traceIDKey: that span takes the given trace ID.
type idGenerator struct{}

func (idGenerator) NewIDs(ctx context.Context) (oteltrace.TraceID, oteltrace.SpanID) {
	tid, ok := ctx.Value(traceIDKey{}).(oteltrace.TraceID)
	if !ok {
		binary.LittleEndian.PutUint64(tid[:8], rand.Uint64())
		binary.LittleEndian.PutUint64(tid[8:], rand.Uint64())
	}
	return tid, newSpanID()
}

func (idGenerator) NewSpanID(context.Context, oteltrace.TraceID) oteltrace.SpanID { return newSpanID() }

// newSpanID draws from math/rand/v2's per-thread ChaCha8, as trace does:
// no lock on the request path, unlike the SDK's default generator.
func newSpanID() oteltrace.SpanID {
	var sid oteltrace.SpanID
	for !sid.IsValid() {
		binary.LittleEndian.PutUint64(sid[:], rand.Uint64())
	}
	return sid
}
