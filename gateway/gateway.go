package gateway

import (
	"bytes"
	"crypto/tls"
	"errors"
	"math"
	"net"
	"strings"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"github.com/valyala/fasthttp"

	"github.com/vega-gateway/vega-gateway/access"
	"github.com/vega-gateway/vega-gateway/cache"
	"github.com/vega-gateway/vega-gateway/fleet"
	"github.com/vega-gateway/vega-gateway/limits"
	"github.com/vega-gateway/vega-gateway/otelx"
	"github.com/vega-gateway/vega-gateway/pool"
	"github.com/vega-gateway/vega-gateway/tlsfiles"
)

// Gateway is the data listener: the proxy in front of a fleet of upstream
// backends, each behind its own bounded pool.
type Gateway struct {
	cfg  Config
	chat ChatConfig
	auth access.Config
	// access answers who may call (keys, scopes, the keys file).
	access *access.Control
	fleet  *fleet.Fleet
	// pool is the first backend's pool: the upstream named in the log for
	// a request refused before a backend was chosen (nil for a fleet that
	// starts empty, found by discovery).
	pool     *pool.Pool
	log      zerolog.Logger
	server   *fasthttp.Server
	observer func(*Record)
	// tracer exports a span per request (tracing.go); nil: off.
	tracer *otelx.Tracer
	// draining is set at the start of Shutdown; new requests get 503.
	draining atomic.Bool
	closing  chan struct{}
	panics   atomic.Int64
	streams  streamSet
	// hijacked counts the client connections that streams took off
	// fasthttp's workers (hijack.go), which fasthttp no longer counts.
	hijacked atomic.Int64
	// limits admits requests: the keys' limits, the per-IP failure
	// budget, the per-backend bound (in the process, or shared in Redis).
	limits *limits.Limiter
	// cors is the CORS policy (nil: off, Ollama's own headers relayed).
	cors *corsPolicy
	// allowed is the model allowlist (nil: any model), names normalised.
	allowed map[string]bool
	// inFlight counts requests against cfg.MaxInFlight (shed.go);
	// authLines samples failed-authentication log lines (logsample.go).
	inFlight  atomic.Int64
	authLines lineSampler
	// cache answers cacheable requests (nil: off; SetCache).
	cache *cache.Cache
	// faultHook, when set (tests only), is called at named points of the
	// request path so tests can inject panics.
	faultHook func(where string)
	// tls, when set, makes every accepted connection a TLS server
	// connection (gateway.tls).
	tls *tls.Config
}

// Record is what the gateway tells its observer about each finished
// request, for metrics. It is valid only during the call.
type Record struct {
	Route            string
	Method           string
	Status           int
	Outcome          string
	Duration         time.Duration
	TTFB             time.Duration
	TTFT             time.Duration
	Streamed         bool
	Model            string
	PromptTokens     int64
	CompletionTokens int64
	DoneReason       string
	BytesOut         int64
	// LoadDuration and EvalDuration are Ollama's load_duration and
	// eval_duration from the final chunk (zero when not reported).
	LoadDuration time.Duration
	EvalDuration time.Duration
}

// New builds the gateway in front of the fleet's backends. It starts
// nothing: the fleet's Run probes and refreshes them.
func New(cfg Config, chat ChatConfig, auth access.Config, backends *fleet.Fleet, log zerolog.Logger) (*Gateway, error) {
	cfg = cfg.withDefaults()
	chat = chat.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if err := chat.validate(); err != nil {
		return nil, err
	}
	if backends == nil {
		return nil, errors.New("gateway: no upstream backends")
	}
	ac, err := access.New(auth)
	if err != nil {
		return nil, err
	}
	// In the process until SetLimiter hands over main's (which may share
	// its counters through Redis).
	lim, err := limits.New(limits.Config{MaxFailuresPerIP: auth.MaxFailuresPerIP}, log)
	if err != nil {
		return nil, err
	}
	g := &Gateway{cfg: cfg, chat: chat, auth: auth, access: ac, fleet: backends, log: log, closing: make(chan struct{})}
	if b := backends.First(); b != nil {
		g.pool = b.Pool // a fleet of discovery alone starts empty
	}
	g.SetLimiter(lim)
	for _, m := range cfg.ModelAllowlist {
		if g.allowed == nil {
			g.allowed = map[string]bool{}
		}
		g.allowed[normalizeModel(m)] = true
	}
	cert, err := tlsfiles.Load(cfg.TLS, "gateway.tls", log)
	if err != nil {
		return nil, err
	}
	if cert != nil {
		g.tls = cert.ServerConfig()
	}
	if g.cors, err = newCORSPolicy(cfg.CORS); err != nil {
		return nil, err
	}
	g.server = &fasthttp.Server{
		Handler:               g.serve,
		ErrorHandler:          g.serveError,
		Name:                  "vega-gateway",
		NoDefaultServerHeader: true,
		ReadBufferSize:        cfg.MaxHeaderBytes,
		WriteBufferSize:       2 << 10, // frames are flushed one by one; a big buffer only costs memory per stream
		ReadTimeout:           cfg.ReadTimeout,
		Concurrency:           cfg.MaxClientConnections,
		IdleTimeout:           cfg.KeepAliveTimeout,
		// Bodies are streamed so that a blob upload goes upstream as it
		// arrives, never whole in memory (upload.go); every other body is
		// read whole by the handler under its route's limit (body.go).
		// With streaming, MaxRequestBodySize only bounds what the server
		// reads of a body before calling the handler (up to 8 KiB, and it
		// waits for them): one byte, so that a body over its limit is
		// refused at its first byte, and the handler copies the rest from
		// the connection's buffer once, not twice.
		StreamRequestBody:            true,
		MaxRequestBodySize:           1,
		DisablePreParseMultipartForm: true,
		SecureErrorLogMessage:        true,
		TCPKeepalive:                 true,
		TCPKeepalivePeriod:           15 * time.Second,
		CloseOnShutdown:              true,
		// A hijacked stream's connection goes back to the server when the
		// stream ends (hijack.go).
		KeepHijackedConns: true,
		// Release a connection's read buffer (MaxHeaderBytes) once its
		// request is read, and its write buffer between responses: a
		// stream then holds no 16 KiB header buffer while it runs.
		ReduceMemoryUsage: true,
		// Idle worker goroutines go within a few seconds of a burst, so a
		// leak check after load settles quickly (fasthttp's default is 10 s).
		MaxIdleWorkerDuration: 3 * time.Second,
		Logger:                fasthttpLogger{log: log},
		ExpectHandler:         g.expect,
		// The gateway reads its own clock once per request (exchange
		// start) and never asks for ctx.Time: skip fasthttp's read.
		LazyRequestTime: true,
	}
	return g, nil
}

// SetObserver registers fn to be told about every finished request (from
// the goroutine that finished it). Call it before Serve.
func (g *Gateway) SetObserver(fn func(*Record)) { g.observer = fn }

// Open reports whether no keys (API or Ollama keys) are configured.
func (g *Gateway) Open() bool { return g.access.Open() }

// SetLimiter makes l decide admissions (its MaxFailuresPerIP is the per-IP
// budget) and hands it the keys' limits. Call it before Serve; the
// gateway does not close l.
func (g *Gateway) SetLimiter(l *limits.Limiter) {
	g.limits = l
	g.setKeyLimits()
}

// Limiter is the limiter deciding admissions.
func (g *Gateway) Limiter() *limits.Limiter { return g.limits }

// setKeyLimits hands the configured keys' limits to the limiter.
func (g *Gateway) setKeyLimits() {
	ids := g.access.Identities()
	m := make(map[string]limits.KeyLimits, len(ids))
	for _, id := range ids {
		m[id.Name] = limits.KeyLimits{RequestsPerMinute: int(id.Limits.RequestsPerMinute), MaxConcurrent: int(id.Limits.MaxConcurrent),
			TokensPerMinute: id.Limits.TokensPerMinute, TokensPerDay: id.Limits.TokensPerDay}
	}
	g.limits.SetKeys(m)
}

// ReloadKeys re-reads auth.keys_file and swaps the keys at once: new
// requests use the new keys, open streams are not touched. On error the
// old keys stay.
func (g *Gateway) ReloadKeys() error {
	if err := g.access.Reload(); err != nil {
		return err
	}
	g.setKeyLimits()
	return nil
}

// KeyReloadFailures is the number of ReloadKeys calls that failed (the
// previous keys stayed in force each time).
func (g *Gateway) KeyReloadFailures() int64 { return g.access.ReloadFailures() }

// Panics is the number of handler panics recovered so far.
func (g *Gateway) Panics() int64 { return g.panics.Load() }

// Serve accepts connections on ln until Shutdown; with gateway.tls set,
// each is a TLS connection (its handshake runs in the connection's
// goroutine, under gateway.read_timeout).
func (g *Gateway) Serve(ln net.Listener) error {
	return g.server.Serve(&connLimitListener{Listener: ln, g: g})
}

func (g *Gateway) observe(x *exchange, dur time.Duration) {
	if g.observer == nil {
		return
	}
	// The record lives in the pooled exchange: the observer must not keep it.
	x.record = Record{
		Route: x.route.name, Method: x.method, Status: x.status, Outcome: x.outcome, Duration: dur,
		TTFB: x.ttfb, TTFT: x.ttft, Streamed: x.streamed, Model: x.model, PromptTokens: x.promptTokens,
		CompletionTokens: x.completionTokens, DoneReason: x.doneReason, BytesOut: x.bytesOut,
		LoadDuration: x.loadDuration, EvalDuration: x.evalDuration,
	}
	g.observer(&x.record)
}

var (
	contentTypeJSON = "application/json; charset=utf-8"
	healthzBody     = []byte(`{"status":"ok"}`)
)

// serve is the whole request chain, in order: correlation ID, panic
// recovery, CORS headers, probe, in-flight limit, path check, CORS
// preflight, per-IP failure budget, auth (access.Control), scope and key
// limits, drain check, then /chat or the proxy.
func (g *Gateway) serve(ctx *fasthttp.RequestCtx) {
	x := g.newExchange(ctx)
	x.route = classify(ctx.Path())
	handedOff := false
	defer func() {
		if r := recover(); r != nil {
			g.recovered(x, r)
			if x.streamed {
				// The response already belongs to a stream, which will
				// finish the exchange when the server closes it.
				return
			}
			writeError(ctx, x.route.family, errInternal, x.id)
			x.status, x.outcome = errInternal.status, errInternal.outcome
		}
		if !handedOff {
			if x.status == 0 {
				x.status = ctx.Response.StatusCode()
			}
			x.bytesOut = int64(len(ctx.Response.Body()))
			x.finish()
		}
	}()

	if g.faultHook != nil {
		g.faultHook("handler")
	}
	if g.cors != nil {
		// Before any answer, so the gateway's own errors (a 401 too) are
		// readable by an allowed page.
		g.cors.decorate(ctx)
	}
	if x.route.family == familyProbe {
		if !ctx.IsGet() && !ctx.IsHead() {
			g.reject(ctx, x, apiError{405, "method_not_allowed", "use GET", outcomeClientError, ""})
			ctx.Response.Header.Set("Allow", "GET, HEAD")
			return
		}
		ctx.SetContentType(contentTypeJSON)
		ctx.SetBody(healthzBody)
		return
	}
	if !g.admit(x) {
		g.reject(ctx, x, errShed)
		return
	}
	if x.route == routeAdminOnly {
		g.reject(ctx, x, apiError{404, "not_found", "admin routes are served on the admin listener only", outcomeClientError, ""})
		return
	}
	if ctx.IsConnect() || ctx.IsTrace() {
		g.reject(ctx, x, apiError{405, "method_not_allowed", "CONNECT and TRACE are not supported", outcomeClientError, ""})
		ctx.SetConnectionClose()
		return
	}
	if bad := ctx.Request.Header.RequestURI(); bytes.IndexByte(bad, '\\') >= 0 || bytes.Contains(bad, []byte("%00")) {
		g.reject(ctx, x, apiError{400, "invalid_path", "the request path is not allowed", outcomeClientError, ""})
		return
	}
	if sentChunked(&ctx.Request.Header) && x.route.name != "/api/blobs/:digest" {
		// Chunked bodies (or Content-Length together with
		// Transfer-Encoding, which fasthttp reads as chunked) are refused
		// on routes whose real clients always send a length: a front proxy
		// that framed the request by Content-Length would desync (B-24).
		g.reject(ctx, x, apiError{411, "length_required", "send the body with a Content-Length", outcomeClientError, ""})
		ctx.SetConnectionClose()
		return
	}
	if x.route.name == "/api/blobs/:digest" && sentChunked(&ctx.Request.Header) && hasField(ctx.Request.Header.RawHeaders(), "content-length") {
		// The one route that takes chunked bodies still refuses a body
		// framed both ways: a front proxy reading the length would see a
		// different request boundary (B-20).
		g.reject(ctx, x, apiError{400, "bad_request", "Content-Length together with Transfer-Encoding", outcomeClientError, ""})
		ctx.SetConnectionClose()
		return
	}
	if streamsBody(ctx, x.route) {
		if e, ok := g.checkUploadLength(ctx); !ok {
			g.reject(ctx, x, e)
			ctx.SetConnectionClose()
			return
		}
	} else if e, ok := g.readBody(ctx, x, g.readLimit(x)); !ok {
		g.reject(ctx, x, e)
		ctx.SetConnectionClose()
		return
	}
	if g.cors != nil && isPreflight(&ctx.Request.Header) {
		g.preflight(ctx, x)
		return
	}
	res, id := g.access.Check(&ctx.Request.Header, x.start)
	if !res.Accepted() {
		x.authReason, x.keyName = res.Status.String(), res.KeyName
		// One limiter call counts the failure, or says the IP had used its
		// budget already (429 rather than 401).
		if d := g.limits.Failed(x.remote); !d.OK() {
			g.reject(ctx, x, limitError(d, x.start))
			return
		}
		g.reject(ctx, x, unauthorized(res.Status))
		return
	}
	x.signedTS = res.SignedTS
	if e, ok := g.authorize(x, id); !ok {
		g.reject(ctx, x, e)
		return
	}
	if g.draining.Load() {
		g.reject(ctx, x, apiError{503, "shutting_down", "the gateway is shutting down", outcomeShutdownAborted, retryAfterSeconds})
		ctx.SetConnectionClose()
		return
	}
	if x.route.family == familyChat {
		handedOff = g.serveChat(ctx, x)
		return
	}
	if streamsBody(ctx, x.route) {
		handedOff = g.serveUpload(ctx, x, res.InAuthorization)
		return
	}
	handedOff = g.proxy(ctx, x, res.InAuthorization)
}

// authorize checks the route's scope, then asks the limiter, in one call
// (one Redis round trip at most), about the client IP's failure budget and
// the key's limits; id is nil on an open gateway, which has neither. On
// success the exchange holds the limiter's grant until it finishes.
func (g *Gateway) authorize(x *exchange, id *access.Identity) (apiError, bool) {
	need := x.route.scope()
	if id == nil {
		if need == access.ModelsManage && !g.auth.AllowModelManagement {
			return errManageDisabled, false
		}
		return apiError{}, true
	}
	x.keyName = id.Name
	if !id.Scopes.Has(need) {
		if need == access.ModelsManage {
			return errManageForbidden, false
		}
		return apiError{403, "route_forbidden", "this key's scopes do not allow this route", outcomeClientError, ""}, false
	}
	grant, d := g.limits.Admit(x.remote, id.Name)
	if !d.OK() {
		return limitError(d, x.start), false
	}
	x.key, x.grant = id, grant
	return apiError{}, true
}

var (
	errManageDisabled  = apiError{403, "route_forbidden", "model management is disabled: use a key with the models:manage scope (or set auth.allow_model_management on an open gateway)", outcomeClientError, ""}
	errManageForbidden = apiError{403, "route_forbidden", "model management needs a key with the models:manage scope", outcomeClientError, ""}
)

// reject answers with a gateway-made error.
func (g *Gateway) reject(ctx *fasthttp.RequestCtx, x *exchange, e apiError) {
	writeError(ctx, x.route.family, e, x.id)
	x.status, x.outcome = e.status, e.outcome
}

// serveError answers requests fasthttp could not parse, in the native
// error shape with a fresh correlation ID, and closes the connection.
func (g *Gateway) serveError(ctx *fasthttp.RequestCtx, err error) {
	e := apiError{400, "bad_request", "malformed HTTP request", outcomeClientError, ""}
	switch {
	case errors.Is(err, fasthttp.ErrBodyTooLarge):
		e = apiError{413, "body_too_large", "request body too large", outcomeClientError, ""}
	case errors.As(err, new(*fasthttp.ErrSmallBuffer)):
		e = apiError{431, "headers_too_large", "request headers too large", outcomeClientError, ""}
	case isTimeoutErr(err):
		e = apiError{408, "request_timeout", "request not received in time", outcomeClientError, ""}
	}
	x := g.newExchange(ctx)
	x.route = routeUnknown
	x.bytesIn = 0
	writeError(ctx, familyNative, e, x.id)
	ctx.SetConnectionClose()
	x.status, x.outcome = e.status, e.outcome
	x.finish()
}

// bodyLimit is the request body cap of the route a request line names,
// judged from the Content-Length before the body is read (readLimit
// bounds the read itself).
func (g *Gateway) bodyLimit(h *fasthttp.RequestHeader) int {
	path := h.RequestURI()
	if i := bytes.IndexByte(path, '?'); i >= 0 {
		path = path[:i]
	}
	if string(path) == "/chat" {
		return g.chat.MaxBodyBytes
	}
	if bytes.HasPrefix(path, prefixBlobs) && string(h.Method()) == fasthttp.MethodPost {
		if g.cfg.MaxBlobBytes <= 0 || g.cfg.MaxBlobBytes > math.MaxInt {
			return math.MaxInt
		}
		return int(g.cfg.MaxBlobBytes)
	}
	return g.cfg.MaxBodyBytes
}

// readLimit is the most of a request body the server reads: the route's
// own cap (gateway.max_body_bytes for everything proxied), but for /chat
// the larger of both caps, so that a /chat body between them is read
// whole and refused by the /chat handler with its own message, on a
// connection that stays usable.
func (g *Gateway) readLimit(x *exchange) int {
	if x.route.family == familyChat {
		return max(g.cfg.MaxBodyBytes, g.chat.MaxBodyBytes)
	}
	return g.cfg.MaxBodyBytes
}

// expect refuses an oversized body before fasthttp sends 100 Continue: the
// client has not sent it yet, so nothing needs reading.
func (g *Gateway) expect(ctx *fasthttp.RequestCtx) int {
	if cl := ctx.Request.Header.ContentLength(); cl > g.bodyLimit(&ctx.Request.Header) {
		return fasthttp.StatusRequestEntityTooLarge
	}
	return fasthttp.StatusContinue
}

func isTimeoutErr(err error) bool {
	var ne net.Error
	// fasthttp's own ErrTimeout (a body that stops mid-chunk) is not a
	// net.Error.
	return errors.Is(err, fasthttp.ErrTimeout) || errors.As(err, &ne) && ne.Timeout()
}

// fasthttpLogger routes fasthttp's own messages into zerolog at warn.
// SecureErrorLogMessage keeps raw request bytes out of most of them, but
// not all: fasthttp v1.78.0 still quotes the whole header buffer — API key
// included — in "cannot find whitespace in the first line of request %q".
// So every argument but an address is redacted here: an error keeps its
// text up to the first quote (where fasthttp starts quoting input).
type fasthttpLogger struct{ log zerolog.Logger }

func (l fasthttpLogger) Printf(format string, args ...any) {
	safe := make([]any, len(args))
	for i, a := range args {
		switch v := a.(type) {
		case net.Addr:
			safe[i] = v
		case error:
			safe[i] = redactedError(v.Error())
		case int, int64, uint64, time.Duration:
			safe[i] = v
		default:
			safe[i] = "[redacted]"
		}
	}
	l.log.Warn().Str("component", "fasthttp").Msgf(format, safe...)
}

// redactedError cuts an error message at its first quote.
func redactedError(msg string) string {
	if i := strings.IndexByte(msg, '"'); i >= 0 {
		msg = strings.TrimRight(msg[:i], " :") + " [input redacted]"
	}
	return msg
}
