package gateway

import (
	"bytes"
	"io"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"github.com/valyala/fasthttp"

	"github.com/vega-gateway/vega-gateway/access"
	"github.com/vega-gateway/vega-gateway/pool"
	"github.com/vega-gateway/vega-gateway/trace"
)

// inlineBodyMax is the largest non-streamed upstream body read whole into
// the client response (the upstream connection then goes straight back to
// the pool); bigger ones are streamed through.
const inlineBodyMax = 1 << 20

var (
	mimeNDJSON      = []byte("application/x-ndjson")
	mimeEventStream = []byte("text/event-stream")
)

// frameKind says how a response body is framed.
type frameKind uint8

const (
	frameNone   frameKind = iota // opaque bytes
	frameNDJSON                  // one JSON object per line
	frameSSE                     // server-sent events
)

func frameKindOf(contentType []byte) frameKind {
	switch {
	case hasMediaType(contentType, mimeNDJSON):
		return frameNDJSON
	case hasMediaType(contentType, mimeEventStream):
		return frameSSE
	}
	return frameNone
}

// hasMediaType compares the media type of a Content-Type, ignoring
// parameters and case.
func hasMediaType(ct, mt []byte) bool {
	if i := bytes.IndexByte(ct, ';'); i >= 0 {
		ct = ct[:i]
	}
	return bytes.EqualFold(bytes.TrimSpace(ct), mt)
}

// proxy forwards the request unchanged (but for hop-by-hop headers and the
// gateway's credentials) and relays the answer. It reports whether the
// response was handed to a stream that will finish the exchange.
func (g *Gateway) proxy(ctx *fasthttp.RequestCtx, x *exchange, keyInAuthorization bool) bool {
	x.model = modelOf(ctx.Request.Body())
	x.traceOptions(ctx.Request.Body())
	// Model allowlist, resource caps, registry allowlist (policy.go).
	if e, ok := g.checkBody(ctx, x); !ok {
		g.reject(ctx, x, e)
		return false
	}
	if g.cache != nil && ctx.IsPost() {
		// X-Vega-Backend is refused (403, 400) before the cache answers:
		// a hit must not let a key without models:manage past the check.
		if _, e, ok := g.pinnedBackend(ctx, x); !ok {
			g.reject(ctx, x, e)
			return false
		}
		if _, ok := completionRoutes[x.route.name]; ok && g.lookupCompletion(ctx, x, ctx.Request.Body()) {
			return false
		}
		if embedRoutes[x.route.name] && g.serveEmbed(ctx, x, keyInAuthorization) {
			return false
		}
	}
	t, e, ok := g.targetOf(ctx, x)
	if !ok {
		g.reject(ctx, x, e)
		return false
	}
	if t.fanOut {
		return g.serveFleetWide(ctx, x, t, keyInAuthorization)
	}
	req := acquireOutbound()
	g.outboundRequest(ctx, x, req, keyInAuthorization)
	if x.route.name == "/v1/chat/completions" && x.grant.TokenBudget() {
		req.SetBodyRaw(askUsage(x, ctx.Request.Body()))
	} else {
		req.SetBodyRaw(ctx.Request.Body())
	}
	resp := fasthttp.AcquireResponse()
	if g.log.GetLevel() <= zerolog.DebugLevel {
		g.log.Debug().Str("correlation_id", x.id).Str("route", x.route.name).Msg("upstream call started")
	}
	upStart := time.Now()
	release, err := g.send(x, t.target, req, resp)
	fasthttp.ReleaseRequest(req)
	x.ttfb = time.Since(upStart) - x.queueWait
	if err != nil {
		fasthttp.ReleaseResponse(resp)
		g.sendFailed(ctx, x, t.Model, err)
		return false
	}
	if g.log.GetLevel() <= zerolog.DebugLevel {
		g.log.Debug().Str("correlation_id", x.id).Int("upstream_status", resp.StatusCode()).
			Float64("ttfb_ms", ms(x.ttfb)).Msg("upstream first byte")
	}
	return g.relay(ctx, x, resp, release, nil)
}

// acquireOutbound returns a pooled request for the upstream that writes
// header names as they are set. They need no normalising: the server has
// normalised the client's, and the gateway's own are spelled as documented
// (X-Correlation-ID). Normalising them again cost a tenth of the gateway's
// own work on a small request (callgrind).
func acquireOutbound() *fasthttp.Request {
	req := fasthttp.AcquireRequest()
	req.Header.DisableNormalizing()
	return req
}

// upstreamFailed answers a request whose upstream call failed before any
// response byte, and logs why (the detail stays out of the body).
func (g *Gateway) upstreamFailed(ctx *fasthttp.RequestCtx, x *exchange, err error) {
	e := upstreamError(err)
	g.reject(ctx, x, e)
	g.log.Warn().Str("correlation_id", x.id).Str("outcome", e.outcome).Err(err).Msg("upstream call failed")
}

// outboundRequest builds the upstream request: method, raw request target
// and headers as received, less hop-by-hop headers and the gateway's
// credentials, plus the correlation ID and trace context.
func (g *Gateway) outboundRequest(ctx *fasthttp.RequestCtx, x *exchange, req *fasthttp.Request, keyInAuthorization bool) {
	// With CORS on, the gateway has judged the page's Origin: Ollama,
	// which refuses origins outside OLLAMA_ORIGINS with 403, must not
	// judge it again.
	copyRequestHeaders(&ctx.Request.Header, &req.Header, keyInAuthorization, g.cors != nil)
	// The path forwarded is the normalised one the route and scope were
	// decided on (re-encoded), never another spelling of it; the query goes
	// through verbatim, uninspected, but for an Ollama signature's ts.
	uri := ctx.URI().RequestURI()
	if x.signedTS {
		uri = withoutTS(x, uri)
	}
	req.Header.SetRequestURIBytes(uri)
	req.Header.Set(trace.HeaderCorrelationID, x.id)
	req.Header.SetBytesV(trace.HeaderTraceparent, x.traceparent)
	req.Header.SetBytesV("X-Forwarded-For", g.forwardedFor(x, ctx.RemoteIP(), &ctx.Request.Header))
}

// withoutTS is uri less its query's ts parameter, in x's scratch buffer.
func withoutTS(x *exchange, uri []byte) []byte {
	path, query, ok := bytes.Cut(uri, []byte{'?'})
	if !ok {
		return uri
	}
	x.scratch = append(append(x.scratch[:0], path...), '?')
	x.scratch = access.AppendWithoutTS(x.scratch, query)
	return bytes.TrimSuffix(x.scratch, []byte{'?'})
}

// relay sends the upstream response to the client: headers less hop-by-hop
// ones, then the body — framed streams frame by frame, small bodies whole,
// big ones as a byte stream. translate, when set, rewrites each frame (the
// /chat stream). It reports whether a stream now owns the exchange.
func (g *Gateway) relay(ctx *fasthttp.RequestCtx, x *exchange, resp *fasthttp.Response, release func(), translate translator) bool {
	x.upstreamStatus = resp.StatusCode()
	if resp.StatusCode() < 200 {
		// 101 Switching Protocols (or a stray 1xx) is never relayed: the
		// gateway speaks HTTP/1.1 request/response only, and the
		// connection is unusable after it.
		resp.SetConnectionClose()
		_ = resp.CloseBodyStream()
		fasthttp.ReleaseResponse(resp)
		release()
		x.upstream().NoteError()
		g.upstreamFailed(ctx, x, pool.ErrProtocol)
		return false
	}
	resp.Header.CopyTo(&ctx.Response.Header)
	stripResponseHop(&ctx.Response.Header)
	if g.cors != nil {
		g.cors.decorate(ctx)
	}
	ctx.Response.Header.Set(trace.HeaderCorrelationID, x.id)
	if x.cacheState != "" {
		ctx.Response.Header.Set(HeaderCache, x.cacheState)
	}
	x.status = resp.StatusCode()
	if x.status >= 400 {
		x.outcome = outcomeUpstreamHTTPError
	}

	kind := frameKindOf(resp.Header.ContentType())
	if ctx.IsHead() || x.status == fasthttp.StatusNoContent || x.status == fasthttp.StatusNotModified {
		resp.CloseBodyStream()
		fasthttp.ReleaseResponse(resp)
		release()
		ctx.Response.SkipBody = ctx.IsHead()
		return false
	}
	if cl := resp.Header.ContentLength(); cl > x.upstream().MaxResponseBytes() {
		// Refuse before sending a byte rather than cut the body later.
		_ = resp.CloseBodyStream()
		fasthttp.ReleaseResponse(resp)
		release()
		g.replaceRelayed(ctx, x, pool.ErrTooLarge)
		return false
	}
	if kind != frameNone {
		s := g.newStream(ctx, x, resp, release, kind == frameSSE, translate)
		ctx.Response.Header.Set("Cache-Control", "no-cache")
		ctx.Response.Header.Set("X-Accel-Buffering", "no")
		x.streamed = true
		// The request body (a chat history can be hundreds of KiB) went
		// upstream already; a stream may last minutes, so let it go now.
		ctx.Request.ResetBody()
		// Headers go out with the first frame, in one write, as Ollama
		// itself sends them (its first flush carries both).
		g.sendStream(ctx, s)
		return true
	}
	cl := resp.Header.ContentLength()
	if cl >= 0 && cl <= inlineBodyMax {
		err := readBody(ctx, resp, cl)
		resp.CloseBodyStream()
		fasthttp.ReleaseResponse(resp)
		release()
		if err != nil {
			g.replaceRelayed(ctx, x, err)
			return false
		}
		if x.status == fasthttp.StatusOK {
			noteReplyTelemetry(x, ctx.Response.Body())
			if x.cacheStore && x.doneReason != "" {
				g.storeAnswer(x, false, ctx.Response.Header.ContentType(), ctx.Response.Body())
			}
		}
		return false
	}
	// Large or unknown length: relayed as it comes, capped (a chunked body
	// over the cap is cut, which the client sees as a broken response). The
	// first bytes are read before the headers are committed, so an upstream
	// that fails before its body starts gets a clean 502, not a connection
	// closed on a response that never came.
	rs := g.newRawStream(x, resp, release)
	if err := rs.prefetch(); err != nil {
		_ = resp.CloseBodyStream()
		fasthttp.ReleaseResponse(resp)
		release()
		g.replaceRelayed(ctx, x, classifyBody(err))
		return false
	}
	ctx.Response.SetBodyStream(rs, cl)
	return true
}

// replaceRelayed turns a response whose upstream headers were already
// copied into a gateway error: the upstream's headers go, the ID stays.
func (g *Gateway) replaceRelayed(ctx *fasthttp.RequestCtx, x *exchange, err error) {
	x.upstream().NoteError()
	ctx.Response.Header.Reset()
	ctx.Response.Header.Set(trace.HeaderCorrelationID, x.id)
	if g.cors != nil {
		g.cors.decorate(ctx)
	}
	g.upstreamFailed(ctx, x, err)
}

// readBody copies a small upstream body of known length into the client
// response. fasthttp's copy reads to EOF with a pooled buffer, so the
// connection goes back to the pool; the declared length bounds the read.
func readBody(ctx *fasthttp.RequestCtx, resp *fasthttp.Response, cl int) error {
	ctx.Response.ResetBody()
	if err := resp.BodyWriteTo(ctx.Response.BodyWriter()); err != nil {
		return classifyBody(err)
	}
	if len(ctx.Response.Body()) != cl {
		return classifyBody(io.ErrUnexpectedEOF)
	}
	return nil
}

var modelKey = []byte(`"model"`)

// modelOf finds the top-level "model" string of a JSON request body
// cheaply, for logs and metrics only (never for a decision: a crafted body
// may fool it).
func modelOf(body []byte) string {
	i := bytes.Index(body, modelKey)
	if i < 0 {
		return ""
	}
	rest := bytes.TrimLeft(body[i+len(modelKey):], " \t\r\n")
	if len(rest) == 0 || rest[0] != ':' {
		return ""
	}
	rest = bytes.TrimLeft(rest[1:], " \t\r\n")
	if len(rest) == 0 || rest[0] != '"' {
		return ""
	}
	end := bytes.IndexByte(rest[1:], '"')
	if end < 0 || end > 200 || bytes.IndexByte(rest[1:1+end], '\\') >= 0 {
		return ""
	}
	return string(rest[1 : 1+end])
}

// noteReplyTelemetry reads token counts from a whole (non-streamed) reply
// of an inference route.
func noteReplyTelemetry(x *exchange, body []byte) {
	switch x.route.name {
	case "/api/chat", "/api/generate":
		readFinalChunk(x, body)
	case "/v1/chat/completions", "/v1/completions":
		readOpenAIUsage(x, body)
	case "/v1/messages", "/v1/responses", "/api/embed", "/v1/embeddings":
		readTokenCounts(x, body)
	}
}

var errModelNotAllowed = apiError{403, "model_not_allowed", "this model is not allowed on this gateway", outcomeClientError, ""}

// normalizeModel makes "llama3.2" and "llama3.2:latest" the same name, as
// Ollama does.
func normalizeModel(m string) string {
	m = strings.ToLower(strings.TrimSpace(m))
	if m != "" && !strings.Contains(m[strings.LastIndex(m, "/")+1:], ":") {
		m += ":latest"
	}
	return m
}
