package gateway

import (
	"bytes"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/vega-gateway/vega-gateway/trace"
)

// DefaultCORSMaxAge is gateway.cors.max_age's default: how long a browser
// may reuse a preflight's answer. Chromium caps it at two hours, so more
// buys nothing there.
const DefaultCORSMaxAge = 2 * time.Hour

// DefaultCORSAllowedHeaders returns gateway.cors.allowed_headers' default:
// the request headers Ollama itself allows (server/routes.go, the OpenAI
// SDKs' x-stainless-* among them), the gateway's credential and tracing
// headers, and those the Anthropic SDK sends from a browser.
func DefaultCORSAllowedHeaders() []string {
	return []string{
		"Authorization", "Content-Type", "User-Agent", "Accept", "X-Requested-With",
		"X-API-Key", trace.HeaderCorrelationID, trace.HeaderRequestID, trace.HeaderTraceparent,
		"OpenAI-Beta", "OpenAI-Organization", "OpenAI-Project",
		"x-stainless-arch", "x-stainless-async", "x-stainless-custom-poll-interval", "x-stainless-helper-method",
		"x-stainless-lang", "x-stainless-os", "x-stainless-package-version", "x-stainless-poll-helper",
		"x-stainless-retry-count", "x-stainless-runtime", "x-stainless-runtime-version", "x-stainless-timeout",
		"anthropic-version", "anthropic-beta", "anthropic-dangerous-direct-browser-access",
	}
}

// DefaultCORSAllowedMethods returns gateway.cors.allowed_methods' default:
// every method an Ollama, OpenAI or Anthropic route takes.
func DefaultCORSAllowedMethods() []string {
	return []string{"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"}
}

// CORSConfig lets browser pages on other origins call the gateway (config
// keys gateway.cors.*). With no allowed origins (the default) the gateway
// does no CORS of its own: Ollama's headers are relayed, and a preflight
// needs a key like any request.
type CORSConfig struct {
	// AllowedOrigins are the page origins allowed, exactly as a browser
	// sends them ("https://app.example.com", "http://localhost:5173"), or
	// "*" for any. Preflights from them are answered by the gateway
	// without a key and never reach Ollama; their real requests still need
	// a key, and get the CORS response headers. Env
	// VEGA_GATEWAY_CORS_ALLOWED_ORIGINS, comma-separated. Default none.
	AllowedOrigins []string `mapstructure:"allowed_origins"`
	// AllowedHeaders are the request headers a page may send ("*": any it
	// asks for). Default DefaultCORSAllowedHeaders.
	AllowedHeaders []string `mapstructure:"allowed_headers"`
	// AllowedMethods are the methods a page may use. Default
	// DefaultCORSAllowedMethods.
	AllowedMethods []string `mapstructure:"allowed_methods"`
	// MaxAge is how long a browser may cache a preflight's answer. Default
	// DefaultCORSMaxAge.
	MaxAge time.Duration `mapstructure:"max_age"`
}

func (c CORSConfig) withDefaults() CORSConfig {
	if len(c.AllowedHeaders) == 0 {
		c.AllowedHeaders = DefaultCORSAllowedHeaders()
	}
	if len(c.AllowedMethods) == 0 {
		c.AllowedMethods = DefaultCORSAllowedMethods()
	}
	if c.MaxAge == 0 {
		c.MaxAge = DefaultCORSMaxAge
	}
	return c
}

// corsPolicy is CORSConfig made ready for requests; nil when CORS is off.
type corsPolicy struct {
	anyOrigin  bool
	origins    map[string]bool
	methods    map[string]bool
	anyHeader  bool
	headers    map[string]bool // lower case
	allowMeths string
	allowHdrs  string
	maxAge     string
}

// newCORSPolicy checks c (with defaults) and builds its policy; no allowed
// origins gives nil.
func newCORSPolicy(c CORSConfig) (*corsPolicy, error) {
	if len(c.AllowedOrigins) == 0 {
		return nil, nil
	}
	if c.MaxAge < 0 {
		return nil, fmt.Errorf("gateway.cors.max_age: must not be negative, got %s", c.MaxAge)
	}
	p := &corsPolicy{origins: map[string]bool{}, methods: map[string]bool{}, headers: map[string]bool{},
		maxAge: strconv.FormatInt(int64(c.MaxAge/time.Second), 10)}
	for _, o := range c.AllowedOrigins {
		o = strings.TrimSpace(o)
		if o == "*" {
			p.anyOrigin = true
			continue
		}
		u, err := url.Parse(o)
		if err != nil || u.Scheme == "" || u.Host == "" || u.Path != "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
			return nil, fmt.Errorf("gateway.cors.allowed_origins: %q is not an origin (want scheme://host[:port], no path, or *)", o)
		}
		p.origins[strings.ToLower(o)] = true
	}
	var meths []string
	for _, m := range c.AllowedMethods {
		m = strings.ToUpper(strings.TrimSpace(m))
		if m == "" || strings.ContainsAny(m, " ,") {
			return nil, fmt.Errorf("gateway.cors.allowed_methods: %q is not a method", m)
		}
		p.methods[m] = true
		meths = append(meths, m)
	}
	var hdrs []string
	for _, h := range c.AllowedHeaders {
		h = strings.TrimSpace(h)
		if h == "*" {
			p.anyHeader = true
			continue
		}
		if h == "" || strings.ContainsAny(h, " ,:") {
			return nil, fmt.Errorf("gateway.cors.allowed_headers: %q is not a header name", h)
		}
		p.headers[strings.ToLower(h)] = true
		hdrs = append(hdrs, h)
	}
	p.allowMeths, p.allowHdrs = strings.Join(meths, ", "), strings.Join(hdrs, ", ")
	return p, nil
}

// allowed reports whether a page of origin may call.
func (p *corsPolicy) allowed(origin []byte) bool {
	if len(origin) == 0 {
		return false
	}
	return p.anyOrigin || p.origins[strings.ToLower(string(origin))]
}

// exposed are the response headers a page's script may read besides the
// CORS-safelisted ones: the correlation ID (to quote in a bug report) and
// Retry-After of a 429 or 503.
const exposed = trace.HeaderCorrelationID + ", Retry-After"

// decorate gives a response the gateway's CORS headers in place of any the
// upstream sent: Vary: Origin always (the answer depends on it), and for an
// allowed origin Access-Control-Allow-Origin and -Expose-Headers. It may be
// called again after the headers were replaced (relay copies the
// upstream's).
func (p *corsPolicy) decorate(ctx *fasthttp.RequestCtx) {
	h := &ctx.Response.Header
	stripCORS(h)
	h.Add("Vary", "Origin")
	origin := ctx.Request.Header.Peek("Origin")
	if !p.allowed(origin) {
		return
	}
	if p.anyOrigin {
		h.Set("Access-Control-Allow-Origin", "*")
	} else {
		h.SetBytesV("Access-Control-Allow-Origin", origin)
	}
	h.Set("Access-Control-Expose-Headers", exposed)
}

// isPreflight reports whether the request is a CORS preflight: OPTIONS
// with Origin and Access-Control-Request-Method (Fetch standard §4.8).
func isPreflight(h *fasthttp.RequestHeader) bool {
	return h.IsOptions() && len(h.Peek("Origin")) > 0 && len(h.Peek("Access-Control-Request-Method")) > 0
}

// preflight answers a CORS preflight without a key (a browser sends none
// on it by design) and without Ollama: 204 with the allowed methods and
// headers when the origin, the method and every requested header are
// allowed; else 403 without CORS headers, which the browser reports to the
// page as a failed fetch.
func (g *Gateway) preflight(ctx *fasthttp.RequestCtx, x *exchange) {
	p, req := g.cors, &ctx.Request.Header
	why := ""
	switch {
	case !p.allowed(req.Peek("Origin")):
		why = "this origin is not allowed (gateway.cors.allowed_origins)"
	case !p.methods[string(req.Peek("Access-Control-Request-Method"))]:
		why = "this method is not allowed (gateway.cors.allowed_methods)"
	case !p.anyHeader && !p.headersAllowed(req.Peek("Access-Control-Request-Headers")):
		why = "a requested header is not allowed (gateway.cors.allowed_headers)"
	}
	if why != "" {
		stripCORS(&ctx.Response.Header)
		g.reject(ctx, x, apiError{403, "cors_not_allowed", why, outcomeClientError, ""})
		return
	}
	h := &ctx.Response.Header
	h.Set("Access-Control-Allow-Methods", p.allowMeths)
	if p.anyHeader {
		h.SetBytesV("Access-Control-Allow-Headers", req.Peek("Access-Control-Request-Headers"))
	} else {
		h.Set("Access-Control-Allow-Headers", p.allowHdrs)
	}
	h.Set("Access-Control-Max-Age", p.maxAge)
	h.Add("Vary", "Access-Control-Request-Method")
	h.Add("Vary", "Access-Control-Request-Headers")
	ctx.SetStatusCode(fasthttp.StatusNoContent)
	x.status = fasthttp.StatusNoContent
}

// headersAllowed reports whether every name of an
// Access-Control-Request-Headers list is allowed.
func (p *corsPolicy) headersAllowed(list []byte) bool {
	var buf [64]byte
	for name := range bytes.SplitSeq(list, []byte{','}) {
		name = bytes.TrimSpace(name)
		if len(name) == 0 {
			continue
		}
		lk, ok := lower(&buf, name)
		if !ok || !p.headers[string(lk)] {
			return false
		}
	}
	return true
}

var accessControlPrefix = []byte("access-control-")

// stripCORS deletes every Access-Control-* response header: when the
// gateway does CORS, an upstream's own (Ollama's, or a proxy's before it)
// must not widen what the gateway allows.
func stripCORS(h *fasthttp.ResponseHeader) {
	var drop [][]byte
	for k := range h.All() {
		if len(k) > len(accessControlPrefix) && bytes.EqualFold(k[:len(accessControlPrefix)], accessControlPrefix) {
			drop = append(drop, append([]byte(nil), k...)) // k is h's own storage, which Del moves
		}
	}
	for _, k := range drop {
		h.DelBytes(k)
	}
}
