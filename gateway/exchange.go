package gateway

import (
	"bytes"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"github.com/valyala/fasthttp"
	oteltrace "go.opentelemetry.io/otel/trace"

	"github.com/vega-gateway/vega-gateway/access"
	"github.com/vega-gateway/vega-gateway/cache"
	"github.com/vega-gateway/vega-gateway/fleet"
	"github.com/vega-gateway/vega-gateway/limits"
	"github.com/vega-gateway/vega-gateway/pool"
	"github.com/vega-gateway/vega-gateway/trace"
)

// exchange is one client request's bookkeeping, from arrival to the access
// log line. It outlives the handler when the response is a stream (the
// stream's close writes the log line), so it holds copies, never views into
// the RequestCtx. Exchanges are pooled.
type exchange struct {
	g      *Gateway
	id     string
	trace  trace.Context
	start  time.Time
	route  route
	method string
	path   []byte
	remote net.IP
	// traceparent is the header value sent upstream.
	traceparent []byte
	scratch     []byte
	// body holds the request body read whole (body.go); reused across
	// requests while small.
	body    []byte
	model   string
	keyName string
	// authReason is why authentication failed (access.Status), for the log.
	authReason string
	// signedTS: the query's ts parameter belongs to an Ollama signed
	// credential and is not forwarded.
	signedTS bool
	// conn is the client connection; goneFn is x.clientGone, bound once
	// per pooled exchange so passing it to the pool does not allocate.
	conn   net.Conn
	goneFn func() bool
	// idReplaced: the client sent a correlation ID that was not kept.
	idReplaced bool
	// key is the request's identity (nil on an open gateway); grant is
	// what the limiter admitted it with, held until finish.
	key   *access.Identity
	grant limits.Grant
	// backendLease is the backend's limits.backend_max_in_flight slot,
	// held until finish.
	backendLease limits.BackendLease
	// inFlight: counted in Gateway.inFlight until finish.
	inFlight bool

	status         int
	upstreamStatus int
	outcome        string
	bytesIn        int
	bytesOut       int64
	frames         int
	retries        int
	// backend and up are the backend (and its pool) of the last attempt;
	// reason why it was chosen; attempts how many backends were tried.
	backend  *fleet.Backend
	up       *pool.Pool
	reason   fleet.Reason
	attempts int
	// ticket counts the request as outstanding on its backend (fleets of
	// more than one) until finish.
	ticket    fleet.Ticket
	queueWait time.Duration
	ttfb      time.Duration // upstream response headers
	ttft      time.Duration // first stream frame sent
	streamed  bool
	// telemetry from the final chunk of an Ollama stream or reply
	promptTokens, completionTokens int64
	doneReason                     string
	loadDuration, evalDuration     time.Duration
	// dropUsage: the gateway asked Ollama for a stream's usage chunk the
	// client did not ask for (askUsage); it is read, not relayed.
	dropUsage bool
	// cacheState is what the response cache did (hit, miss, bypass; ""
	// off or not a cached route); on a miss of a completion, cacheStore
	// says the answer is to be stored under cacheKey once complete.
	cacheState string
	cacheKey   cache.Key
	cacheStore bool
	// record is what the observer is told, kept here so it is not allocated.
	record Record
	// span is the request's server span and attempt the current upstream
	// attempt's (tracing.go); nil when tracing is off. attemptStart is
	// when the attempt began; respModel and genOpts are recorded only in
	// a span.
	span, attempt oteltrace.Span
	attemptStart  time.Time
	respModel     string
	genOpts       genOptions
}

var exchangePool = sync.Pool{New: func() any {
	x := new(exchange)
	x.goneFn = x.clientGone
	return x
}}

// methodString returns a constant string for common methods, so the log
// line does not allocate for them.
func methodString(m []byte) string {
	switch string(m) {
	case fasthttp.MethodGet:
		return fasthttp.MethodGet
	case fasthttp.MethodPost:
		return fasthttp.MethodPost
	case fasthttp.MethodHead:
		return fasthttp.MethodHead
	case fasthttp.MethodDelete:
		return fasthttp.MethodDelete
	case fasthttp.MethodPut:
		return fasthttp.MethodPut
	case fasthttp.MethodOptions:
		return fasthttp.MethodOptions
	}
	return "OTHER"
}

var (
	nameCorrelationID = []byte(trace.HeaderCorrelationID)
	nameRequestID     = []byte(trace.HeaderRequestID)
	nameTraceparent   = []byte(trace.HeaderTraceparent)
)

func (g *Gateway) newExchange(ctx *fasthttp.RequestCtx) *exchange {
	x := exchangePool.Get().(*exchange)
	// Keep the pooled buffers across the reset.
	path, remote, tp, scratch, body, goneFn := x.path[:0], x.remote[:0], x.traceparent[:0], x.scratch[:0], x.body[:0], x.goneFn
	*x = exchange{g: g, start: time.Now(), path: append(path, ctx.Path()...), remote: append(remote, ctx.RemoteIP()...),
		scratch: scratch, body: body, goneFn: goneFn, conn: ctx.Conn()}
	// Behind a trusted proxy the client is in its X-Forwarded-For (B-61).
	x.remote = g.clientIP(x.remote, &ctx.Request.Header)
	// One walk over the headers finds the IDs: three lookups would each
	// normalise the name and scan every header. The values point into the
	// header buffer, which nothing changes before they are copied.
	var correlation, requestID trace.Picker
	var traceparent []byte
	for k, v := range ctx.Request.Header.All() {
		switch len(k) {
		case len(trace.HeaderCorrelationID):
			if bytes.EqualFold(k, nameCorrelationID) {
				correlation.Add(v)
			}
		case len(trace.HeaderRequestID):
			if bytes.EqualFold(k, nameRequestID) {
				requestID.Add(v)
			}
		case len(trace.HeaderTraceparent):
			if traceparent == nil && bytes.EqualFold(k, nameTraceparent) {
				traceparent = v
			}
		}
	}
	res := trace.Resolve(correlation.Value(), requestID.Value())
	x.id = res.ID
	x.idReplaced = res.Replaced
	x.trace.ParseTraceparent(traceparent)
	x.traceparent = x.trace.AppendTraceparent(tp)
	if g.tracer != nil {
		x.startSpan()
	}
	x.method = methodString(ctx.Method())
	// The body is still on the wire (the server streams bodies): counted
	// by its declared length until read (body.go, upload.go).
	x.bytesIn = len(ctx.Request.Header.RawHeaders()) + max(ctx.Request.Header.ContentLength(), 0)
	// The response's header names are written as set, like the upstream's
	// once relay copies them in (the pool keeps those as sent): the same
	// spelling whichever way the response is made, and no normalising.
	ctx.Response.Header.DisableNormalizing()
	ctx.Response.Header.Set(trace.HeaderCorrelationID, x.id)
	if res.Replaced && g.log.GetLevel() <= zerolog.DebugLevel {
		g.log.Debug().Str("correlation_id", x.id).Str("reason", res.Reason).Int("rejected_len", res.RejectedLen).
			Bool("correlation_id_replaced", true).Msg("client correlation ID replaced")
	}
	if g.log.GetLevel() <= zerolog.DebugLevel {
		g.log.Debug().Str("correlation_id", x.id).Bytes("trace_id", x.trace.TraceID[:]).Str("method", x.method).
			Bytes("path", x.path).IPAddr("remote_ip", x.remote).Msg("request received")
	}
	return x
}

// finish writes the access log line and returns x to the pool. It is
// called exactly once per request: by the handler for whole responses, by
// the stream's close for streamed ones.
func (x *exchange) finish() {
	g := x.g
	dur := time.Since(x.start)
	if x.status == 0 {
		x.status = statusClientClosedNoBytes
	}
	if x.outcome == "" {
		x.outcome = outcomeOK
		if x.status >= 400 {
			x.outcome = outcomeClientError
		}
	}
	lvl := zerolog.InfoLevel
	if x.status >= 500 || (x.outcome != outcomeOK && x.outcome != outcomeClientError && x.outcome != outcomeAuthFailed && x.outcome != outcomeClientClosed) {
		lvl = zerolog.WarnLevel
	}
	var e *zerolog.Event
	if g.log.GetLevel() <= lvl && x.logLine() { // sampled only if it would be written
		e = g.log.WithLevel(lvl)
	}
	if e != nil {
		// Values that need no JSON escaping (IDs, hex, the gateway's own
		// constants) are quoted here and numbers formatted here, then copied
		// in raw: zerolog's escaping and float formatting would be over half
		// of the line's cost (callgrind). x.scratch carries each one in turn.
		x.scratch = quoteSafe(x.scratch[:0], x.id)
		e.RawJSON("correlation_id", x.scratch)
		x.scratch = quoteSafe(x.scratch[:0], x.trace.TraceID[:])
		e.RawJSON("trace_id", x.scratch)
		x.scratch = quoteSafe(x.scratch[:0], x.method)
		e.RawJSON("method", x.scratch)
		x.scratch = quoteSafe(x.scratch[:0], x.route.name)
		e.RawJSON("route", x.scratch)
		e.Bytes("path", x.path).Int("status", x.status)
		x.scratch = quoteSafe(x.scratch[:0], x.outcome)
		e.RawJSON("outcome", x.scratch)
		x.scratch = appendMillis(x.scratch[:0], dur)
		e.RawJSON("duration_ms", x.scratch)
		x.scratch = appendMillis(x.scratch[:0], x.ttfb)
		e.RawJSON("ttfb_ms", x.scratch)
		x.scratch = appendMillis(x.scratch[:0], x.queueWait)
		e.RawJSON("queue_wait_ms", x.scratch)
		e.Int("bytes_in", x.bytesIn).
			Int64("bytes_out", x.bytesOut).
			Bytes("remote_ip", x.remoteText()) // pooled text; IPAddr would allocate a string per line
		switch {
		case x.backend != nil:
			x.scratch = quoteSafe(x.scratch[:0], x.reason.String())
			e.Str("upstream", x.up.URL()).Str("backend", x.backend.Name).RawJSON("route_reason", x.scratch).Int("attempts", x.attempts)
		case x.attempts > 0: // fleet-wide: every backend answered
			e.Str("upstream", upstreamFleet).Int("attempts", x.attempts)
		case x.cacheState == cacheHit: // answered from the response cache alone
			e.Str("upstream", upstreamCache)
		case g.pool != nil: // refused before any backend was chosen
			e.Str("upstream", g.pool.URL())
		default: // the same, with no configured backend
			e.Str("upstream", upstreamFleet)
		}
		if x.upstreamStatus != 0 {
			e.Int("upstream_status", x.upstreamStatus)
		}
		if x.streamed {
			x.scratch = appendMillis(x.scratch[:0], x.ttft)
			e.Bool("stream", true).Int("frames_out", x.frames).RawJSON("ttft_ms", x.scratch)
		}
		if x.retries > 0 {
			e.Int("retries", x.retries)
		}
		if x.idReplaced {
			e.Bool("correlation_id_replaced", true)
		}
		if x.model != "" {
			e.Str("model", x.model)
		}
		if x.keyName != "" {
			e.Str("key_id", x.keyName)
		}
		if x.cacheState != "" {
			x.scratch = quoteSafe(x.scratch[:0], x.cacheState)
			e.RawJSON("cache", x.scratch)
		}
		if x.authReason != "" {
			e.Str("auth_reason", x.authReason)
		}
		if x.doneReason != "" {
			e.Str("done_reason", x.doneReason).Int64("prompt_tokens", x.promptTokens).Int64("completion_tokens", x.completionTokens)
		}
		e.Msg("request")
	}
	if x.span != nil {
		x.endSpans(dur)
	}
	x.endTicket()
	g.observe(x, dur)
	// Slots go back and tokens are charged however the request ended: a
	// stream cut by its client included (its close calls finish).
	g.limits.Done(&x.grant, x.chargedTokens())
	g.limits.ReleaseBackend(&x.backendLease)
	if x.inFlight {
		g.inFlight.Add(-1)
	}
	x.g, x.key, x.conn, x.backend, x.up = nil, nil, nil, nil, nil
	x.releaseBody()
	exchangePool.Put(x)
}

// upstreamFleet is the access line's upstream for a request answered by
// every backend at once (lists, model management).
const upstreamFleet = "fleet"

// upstreamCache is the access line's upstream for a request answered
// wholly from the response cache; cacheHit is its cache field then.
const (
	upstreamCache = "cache"
	cacheHit      = "hit"
)

// upstream is the pool of the backend the request went to, else the first
// backend's.
func (x *exchange) upstream() *pool.Pool {
	if x.up != nil {
		return x.up
	}
	return x.g.pool
}

// remoteText renders the client IP into a pooled buffer.
func (x *exchange) remoteText() []byte {
	a, _ := netip.AddrFromSlice(x.remote)
	x.scratch = a.Unmap().AppendTo(x.scratch[:0])
	return x.scratch
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// quoteSafe appends s as a JSON string, for values that cannot hold a byte
// JSON escapes: a correlation ID (trace.Valid's alphabet, or a UUID), hex,
// and the gateway's own method, route and outcome names.
func quoteSafe[T string | []byte](dst []byte, s T) []byte {
	dst = append(dst, '"')
	dst = append(dst, s...)
	return append(dst, '"')
}

// appendMillis appends d in milliseconds with microsecond precision, as
// zerolog writes ms(d) (strconv's shortest 'f' form: "12.34", "0.001", "3")
// but for a tenth of the cost: three floats through strconv cost an eighth
// of the access line's (callgrind). Event.RawJSON copies it, so one buffer
// serves every field.
func appendMillis(dst []byte, d time.Duration) []byte {
	us := d.Microseconds()
	if us < 0 {
		dst = append(dst, '-')
		us = -us
	}
	dst = strconv.AppendInt(dst, us/1000, 10)
	frac := us % 1000
	if frac == 0 {
		return dst
	}
	dst = append(dst, '.', byte('0'+frac/100))
	if frac%100 != 0 {
		dst = append(dst, byte('0'+frac/10%10))
		if frac%10 != 0 {
			dst = append(dst, byte('0'+frac%10))
		}
	}
	return dst
}

// chargedTokens is what the request costs its key's token budget: the
// reply's prompt + completion tokens; nothing for a response-cache hit,
// which cost the backend nothing; and for an OpenAI stream that reported
// no usage (a /v1/completions stream, or a chat stream whose client set
// stream_options without include_usage: askUsage covers the others), one
// token per event relayed, an estimate that keeps the budget bounded.
func (x *exchange) chargedTokens() int64 {
	if x.cacheState == cacheHit {
		return 0
	}
	n := x.promptTokens + x.completionTokens
	if n == 0 && x.streamed && (x.route.name == "/v1/chat/completions" || x.route.name == "/v1/completions") {
		n = int64(x.frames)
	}
	return n
}
