package gateway

import (
	"encoding/json"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/tidwall/gjson"
	"github.com/valyala/fasthttp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	oteltrace "go.opentelemetry.io/otel/trace"

	"github.com/vega-gateway/vega-gateway/fleet"
	"github.com/vega-gateway/vega-gateway/otelx"
	"github.com/vega-gateway/vega-gateway/trace"
)

// Spans: with a tracer set, every request has a server span (started with
// the exchange, ended by finish), and each upstream attempt a client span
// under it, with a "pool wait" span when it queued for a connection.
// Everything here runs only when x.span is set, so with tracing off the
// request path neither calls the SDK nor allocates for it. Attributes are
// metadata only: never a prompt, a message or a completion.

// SetTracer exports a span per request through t (nil: tracing off).
// Call it before Serve.
func (g *Gateway) SetTracer(t *otelx.Tracer) { g.tracer = t }

// Attribute keys the semconv package does not name yet, and the gateway's
// own.
const (
	// attrTimeToFirstChunk is the GenAI conventions' time to the first
	// chunk of a streamed response, in seconds.
	attrTimeToFirstChunk = attribute.Key("gen_ai.response.time_to_first_chunk")
	attrCorrelationID    = attribute.Key("vega.correlation_id")
	attrBackend          = attribute.Key("vega.backend")
	attrRouteReason      = attribute.Key("vega.route_reason")
	attrQueueWaitMS      = attribute.Key("vega.queue_wait_ms")
	attrOutcome          = attribute.Key("vega.outcome")
	attrAttempt          = attribute.Key("vega.attempt")
	attrAttempts         = attribute.Key("vega.attempts")
)

// genOperation is the GenAI operation of an inference route ("" for the
// others).
var genOperation = map[string]attribute.KeyValue{
	"/chat": semconv.GenAIOperationNameChat, "/api/chat": semconv.GenAIOperationNameChat,
	"/v1/chat/completions": semconv.GenAIOperationNameChat, "/v1/messages": semconv.GenAIOperationNameChat,
	"/api/generate": semconv.GenAIOperationNameTextCompletion, "/v1/completions": semconv.GenAIOperationNameTextCompletion,
	"/api/embed": semconv.GenAIOperationNameEmbeddings, "/api/embeddings": semconv.GenAIOperationNameEmbeddings,
	"/v1/embeddings": semconv.GenAIOperationNameEmbeddings,
}

// genOptions are the request options the GenAI conventions record, when
// the request sets them: Ollama's options object, or the top-level fields
// of the OpenAI and Anthropic routes.
type genOptions struct {
	Temperature *float64 `json:"temperature"`
	MaxTokens   *int64   `json:"max_tokens"`
	Seed        *int64   `json:"seed"`
	Options     struct {
		Temperature *float64 `json:"temperature"`
		NumPredict  *int64   `json:"num_predict"`
		Seed        *int64   `json:"seed"`
	} `json:"options"`
}

// startSpan starts the request's server span, continuing the client's
// traceparent (x.trace), and points the traceparent sent upstream at it
// until an attempt span replaces it.
func (x *exchange) startSpan() {
	x.span = x.g.tracer.StartRequest(&x.trace, x.method, x.start)
	x.traceparent = otelx.AppendTraceparent(x.traceparent[:0], x.span.SpanContext())
}

// traceOptions records the request options of an inference body in the
// server span, for a span that records. As modelOf, it looks the keys up
// rather than decode the body (a chat history may be hundreds of KiB) and
// decodes only the values found, so it serves telemetry, never a decision.
func (x *exchange) traceOptions(body []byte) {
	if x.span == nil || !x.span.IsRecording() || genOperation[x.route.name].Key == "" {
		return
	}
	o := &x.genOpts
	decodeTopLevel(body, "options", &o.Options)
	decodeTopLevel(body, "temperature", &o.Temperature)
	decodeTopLevel(body, "max_tokens", &o.MaxTokens)
	decodeTopLevel(body, "seed", &o.Seed)
}

// decodeTopLevel decodes into v the value of the body object's top-level
// key, leaving v alone if there is none or it does not decode. Only the top
// level counts: a tool call's arguments or a format schema may hold keys
// of the same names.
func decodeTopLevel[T any](body []byte, key string, v *T) {
	res := gjson.GetBytes(body, key)
	if !res.Exists() {
		return
	}
	var got T
	if json.Unmarshal([]byte(res.Raw), &got) == nil {
		*v = got
	}
}

// traceChatOptions records /chat's options (its upstream options, after
// chat.max_tokens): the object alone, already split from the prompt.
func (x *exchange) traceChatOptions(options json.RawMessage) {
	if x.span == nil || !x.span.IsRecording() || len(options) == 0 {
		return
	}
	_ = json.Unmarshal(options, &x.genOpts.Options)
}

// startAttempt starts the span of an upstream attempt on b and sends the
// attempt's span ID upstream as the parent in req's traceparent.
func (x *exchange) startAttempt(b *fleet.Backend, reason fleet.Reason, req *fasthttp.Request) {
	if x.span == nil {
		return
	}
	x.attemptStart = time.Now()
	x.attempt = x.g.tracer.StartChild(x.span, "upstream "+b.Name, oteltrace.SpanKindClient, x.attemptStart)
	if x.attempt.IsRecording() {
		x.attempt.SetAttributes(attrBackend.String(b.Name), attrRouteReason.String(reason.String()), attrAttempt.Int(x.attempts))
		// The pool's URL is a validated base URL: scheme://host[:port].
		_, hostPort, _ := strings.Cut(b.Pool.URL(), "://")
		if host, port, err := net.SplitHostPort(hostPort); err == nil {
			n, _ := strconv.Atoi(port)
			x.attempt.SetAttributes(semconv.ServerAddress(host), semconv.ServerPort(n))
		} else {
			x.attempt.SetAttributes(semconv.ServerAddress(hostPort))
		}
	}
	x.traceparent = otelx.AppendTraceparent(x.traceparent[:0], x.attempt.SpanContext())
	req.Header.SetBytesV(trace.HeaderTraceparent, x.traceparent)
}

// traceWait records the attempt's wait for a connection of b's pool as a
// span from the attempt's start; err is the pool's refusal, if any. An
// attempt that found a free connection at once has none: a span of zero
// length would cost as much as the others and say nothing.
func (x *exchange) traceWait(b *fleet.Backend, waited time.Duration, err error) {
	if x.attempt == nil || !x.attempt.IsRecording() || (waited == 0 && err == nil) {
		return
	}
	s := x.g.tracer.StartChild(x.attempt, "pool wait", oteltrace.SpanKindInternal, x.attemptStart)
	s.SetAttributes(attrBackend.String(b.Name), attrQueueWaitMS.Float64(ms(waited)))
	if err != nil {
		e := upstreamError(err)
		s.SetAttributes(semconv.ErrorTypeKey.String(e.outcome))
		s.SetStatus(codes.Error, e.code)
	}
	s.End(oteltrace.WithTimestamp(x.attemptStart.Add(waited)))
}

// endAttempt ends a failed attempt's span: outcome says how it failed.
func (x *exchange) endAttempt(outcome string, status int) {
	if x.attempt == nil {
		return
	}
	if x.attempt.IsRecording() {
		x.attempt.SetAttributes(attrOutcome.String(outcome), semconv.ErrorTypeKey.String(outcome))
		if status != 0 {
			x.attempt.SetAttributes(semconv.HTTPResponseStatusCode(status))
		}
		x.attempt.SetStatus(codes.Error, outcome)
	}
	x.attempt.End()
	x.attempt = nil
}

// endSpans ends the last attempt's span and the server span, with what the
// access log line says about the request. Called by finish.
func (x *exchange) endSpans(dur time.Duration) {
	end := oteltrace.WithTimestamp(x.start.Add(dur))
	if a := x.attempt; a != nil {
		if a.IsRecording() {
			a.SetAttributes(attrOutcome.String(x.outcome))
			if x.upstreamStatus != 0 {
				a.SetAttributes(semconv.HTTPResponseStatusCode(x.upstreamStatus))
			}
			if x.upstreamStatus >= 500 {
				a.SetStatus(codes.Error, x.outcome)
			}
		}
		a.End(end)
	}
	s := x.span
	if s.IsRecording() {
		x.spanAttributes(s)
	}
	s.End(end)
	x.span, x.attempt = nil, nil
}

// spanAttributes sets the server span's name and attributes, in one call
// (each SetAttributes grows the span's list).
func (x *exchange) spanAttributes(s oteltrace.Span) {
	s.SetName(x.method + " " + x.route.name)
	a := make([]attribute.KeyValue, 0, 24)
	a = append(a,
		semconv.HTTPRequestMethodKey.String(x.method),
		semconv.HTTPRoute(x.route.name),
		semconv.HTTPResponseStatusCode(x.status),
		attrCorrelationID.String(x.id),
		attrOutcome.String(x.outcome),
		attrQueueWaitMS.Float64(ms(x.queueWait)),
	)
	if x.attempts > 0 {
		a = append(a, attrAttempts.Int(x.attempts))
	}
	if x.backend != nil {
		a = append(a, attrBackend.String(x.backend.Name), attrRouteReason.String(x.reason.String()))
	}
	if x.status >= 500 {
		a = append(a, semconv.ErrorTypeKey.String(x.outcome))
		s.SetStatus(codes.Error, x.outcome)
	}
	if op := genOperation[x.route.name]; op.Key != "" {
		a = x.genAIAttributes(append(a, op, semconv.GenAIProviderNameKey.String("ollama")))
	}
	s.SetAttributes(a...)
}

// genAIAttributes appends the GenAI conventions' attributes that the
// request and its answer gave values for.
func (x *exchange) genAIAttributes(a []attribute.KeyValue) []attribute.KeyValue {
	if x.model != "" {
		a = append(a, semconv.GenAIRequestModel(x.model))
	}
	if x.respModel != "" {
		a = append(a, semconv.GenAIResponseModel(x.respModel))
	}
	if x.doneReason != "" || x.promptTokens != 0 || x.completionTokens != 0 {
		a = append(a, semconv.GenAIUsageInputTokens(int(x.promptTokens)), semconv.GenAIUsageOutputTokens(int(x.completionTokens)))
	}
	if x.doneReason != "" {
		a = append(a, semconv.GenAIResponseFinishReasons(x.doneReason))
	}
	o := &x.genOpts
	if v := firstSet(o.Options.Temperature, o.Temperature); v != nil {
		a = append(a, semconv.GenAIRequestTemperature(*v))
	}
	if v := firstSet(o.Options.NumPredict, o.MaxTokens); v != nil && *v >= 0 { // -1: until the context is full
		a = append(a, semconv.GenAIRequestMaxTokens(int(*v)))
	}
	if v := firstSet(o.Options.Seed, o.Seed); v != nil {
		a = append(a, semconv.GenAIRequestSeed(int(*v)))
	}
	if x.streamed && x.ttft > 0 {
		a = append(a, attrTimeToFirstChunk.Float64(x.ttft.Seconds()))
	}
	return a
}

// firstSet returns the first non-nil of vs.
func firstSet[T any](vs ...*T) *T {
	for _, v := range vs {
		if v != nil {
			return v
		}
	}
	return nil
}
