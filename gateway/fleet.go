package gateway

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/vega-gateway/vega-gateway/access"
	"github.com/vega-gateway/vega-gateway/fleet"
	"github.com/vega-gateway/vega-gateway/limits"
	"github.com/vega-gateway/vega-gateway/pool"
)

// HeaderBackend pins a request to one backend by name (keys with the
// models:manage scope only). It is never forwarded.
const HeaderBackend = "X-Vega-Backend"

var (
	// errAllBusy: every backend tried answered Ollama's busy 503.
	errAllBusy = errors.New("every backend tried is busy")
	// errNotInstalled: the backend the catalogue chose answered 404 model
	// not found, and no other backend has the model.
	errNotInstalled = errors.New("model not found on the backend tried")
	busyText        = []byte("server busy")
	notFoundText    = []byte("not found")
)

// target is where a request goes: the fleet's choice, or a pinned backend.
type target struct {
	fleet.Request
	pinned *fleet.Backend
}

// pinnedBackend reads X-Vega-Backend: nil without it (or with a Single
// fleet); an error for a key without models:manage (403) or an unknown
// name (400).
func (g *Gateway) pinnedBackend(ctx *fasthttp.RequestCtx, x *exchange) (*fleet.Backend, apiError, bool) {
	if g.fleet.Single() {
		return nil, apiError{}, true // nothing to choose: the header is dropped
	}
	name := ctx.Request.Header.Peek(HeaderBackend)
	if len(name) == 0 {
		return nil, apiError{}, true
	}
	if x.key == nil && !(g.access.Open() && g.auth.AllowModelManagement) {
		return nil, apiError{403, "route_forbidden", "X-Vega-Backend needs a key with the models:manage scope", outcomeClientError, ""}, false
	}
	if x.key != nil && !x.key.Scopes.Has(access.ModelsManage) {
		return nil, apiError{403, "route_forbidden", "X-Vega-Backend needs a key with the models:manage scope", outcomeClientError, ""}, false
	}
	b := g.fleet.Pin(string(name))
	if b == nil {
		return nil, apiError{400, "unknown_backend", fmt.Sprintf("X-Vega-Backend: no backend named %q", name), outcomeClientError, ""}, false
	}
	return b, apiError{}, true
}

// send sends req to a backend and reads the response headers into resp.
// An attempt that fails before any response byte — connect refused or
// reset, the backend's pool wait expired or its queue full, the backend
// marked down, Ollama's busy 503, or a 404 for a model the catalogue said
// was there — goes to the next-best backend, up to routing.max_attempts;
// the body is in memory, so it can be sent again. On success the returned
// release gives the connection slot back, and x holds the backend's ticket
// until finish. With one backend this is the pool's own behaviour.
func (g *Gateway) send(x *exchange, t target, req *fasthttp.Request, resp *fasthttp.Response) (release func(), err error) {
	maxAttempts := g.fleet.Config().MaxAttempts
	if g.fleet.Single() || t.pinned != nil {
		maxAttempts = 1
	}
	var last error
	for {
		b, reason := t.pinned, fleet.ReasonPinned
		if b == nil {
			b, reason, err = g.fleet.Pick(t.Request)
			if err != nil {
				if last != nil {
					return nil, last
				}
				return nil, err
			}
		}
		x.attempts++
		x.backend, x.up, x.reason = b, b.Pool, reason
		t.Tried |= b.Bit()
		more := x.attempts < maxAttempts
		// A backend at its fleet-wide bound (limits.backend_max_in_flight)
		// is passed over like a busy one.
		// Held on the exchange from the start, so finish gives it back
		// even if something between here and the reply panics.
		var d limits.Decision
		x.backendLease, d = g.limits.AcquireBackend(b.Name)
		if !d.OK() {
			err := errLimitsUnavailable
			if d.Reason == limits.BackendBusy {
				err = errBackendsAtLimit
			}
			if more && err == errBackendsAtLimit {
				last = err
				continue
			}
			return nil, err
		}
		if g.faultHook != nil {
			g.faultHook("send")
		}
		x.startAttempt(b, reason, req)
		rel, waited, err := b.Pool.AcquireWhile(g.closing, x.goneFn)
		x.queueWait += waited
		x.traceWait(b, waited, err)
		if err != nil {
			x.endAttempt(upstreamError(err).outcome, 0)
			g.limits.ReleaseBackend(&x.backendLease)
			if more && retryableAdmission(err) {
				last = err
				continue
			}
			return nil, err
		}
		var ticket fleet.Ticket
		if !g.fleet.Single() && !x.route.manage {
			// Model management is not load: a pull would count as one
			// request for minutes and skew the service-time estimate.
			model := ""
			if t.Inference {
				model = t.Model // counted per model, and marked loaded when answered
			}
			ticket = b.Start(model)
		}
		retries, err := b.Pool.DoWhile(req, resp, x.goneFn)
		x.retries += retries
		if err != nil {
			x.endAttempt(upstreamError(err).outcome, 0)
			rel()
			g.limits.ReleaseBackend(&x.backendLease)
			if errors.Is(err, pool.ErrClientGone) {
				ticket.End(fleet.Neutral, 0)
				return nil, err
			}
			ticket.End(fleet.Failure, 0)
			if more && retryableUpstream(err) {
				last = err
				continue
			}
			return nil, err
		}
		if more {
			st := resp.StatusCode()
			if res := refusal(resp, t.NeedModel); res != fleet.Neutral {
				// Refused before any work: the body is Ollama's short error,
				// read whole so the connection goes back to the pool.
				_ = resp.CloseBodyStream()
				resp.Reset()
				rel()
				g.limits.ReleaseBackend(&x.backendLease)
				ticket.End(res, 0)
				x.endAttempt(refusalOutcome(res), st)
				switch res {
				case fleet.Busy:
					last = errAllBusy
				case fleet.NotInstalled:
					last = errNotInstalled
				default: // the short body could not be read
					last = pool.ErrReset
				}
				continue
			}
		}
		x.ticket = ticket
		return rel, nil
	}
}

// refusalOutcome names an attempt's refusal in its span.
func refusalOutcome(res fleet.Result) string {
	switch res {
	case fleet.Busy:
		return "upstream_busy"
	case fleet.NotInstalled:
		return "model_not_installed"
	}
	return outcomeUpstreamReset
}

// retryableAdmission: the pool refused the request before sending it. A
// closed pool is a backend that left the fleet (discovery) between the
// choice and the send, or a gateway shutting down, where the next choice
// finds no backend.
func retryableAdmission(err error) bool {
	return errors.Is(err, pool.ErrPoolExhausted) || errors.Is(err, pool.ErrQueueFull) || errors.Is(err, pool.ErrUnhealthy) ||
		errors.Is(err, pool.ErrClosed)
}

// retryableUpstream: the request reached no backend, or the backend went
// away before answering; nothing reached the client.
func retryableUpstream(err error) bool {
	return errors.Is(err, pool.ErrConnect) || errors.Is(err, pool.ErrReset)
}

// refusal reports an answer that says the backend did no work: Ollama's
// busy 503, or (for a route that needs the model) its 404 model not found.
// It peeks at the body only for those statuses.
func refusal(resp *fasthttp.Response, needModel bool) fleet.Result {
	st := resp.StatusCode()
	if st != fasthttp.StatusServiceUnavailable && !(needModel && st == fasthttp.StatusNotFound) {
		return fleet.Neutral
	}
	if cl := resp.Header.ContentLength(); cl < 0 || cl > 4096 {
		return fleet.Neutral
	}
	body, err := io.ReadAll(io.LimitReader(resp.BodyStream(), 4096))
	if err != nil {
		return fleet.Failure
	}
	// Put what was read back, so a response that is relayed after all is
	// relayed whole.
	resp.SetBodyStream(bytes.NewReader(body), len(body))
	switch {
	case st == fasthttp.StatusServiceUnavailable && bytes.Contains(body, busyText):
		return fleet.Busy
	case st == fasthttp.StatusNotFound && bytes.Contains(body, notFoundText):
		return fleet.NotInstalled
	}
	return fleet.Neutral
}

// fleetError maps the fleet's own refusals to the route's error.
func fleetError(err error, model string) (apiError, bool) {
	switch {
	case errors.Is(err, fleet.ErrModelNotFound), errors.Is(err, errNotInstalled):
		return apiError{404, "model_not_found", fmt.Sprintf("model %q not found, try pulling it first", model), outcomeClientError, ""}, true
	case errors.Is(err, fleet.ErrNoBackend):
		return apiError{503, "no_backend", "no backend is available: every one is down, circuit-broken or already tried", outcomeUpstreamUnhealthy, retryAfterUnhealthySeconds}, true
	case errors.Is(err, errAllBusy):
		return apiError{503, "upstream_busy", "server busy, please try again.  maximum pending requests exceeded", outcomeUpstreamHTTPError, retryAfterSeconds}, true
	case errors.Is(err, errBackendsAtLimit):
		return errBackendBusy, true
	case errors.Is(err, errLimitsUnavailable):
		return limitError(limits.Decision{Reason: limits.Unavailable, RetryAfter: 1}, time.Time{}), true
	}
	return apiError{}, false
}

// endTicket tells the fleet how the request ended on its backend; after
// model management on a pinned backend, its catalogue is fetched again.
func (x *exchange) endTicket() {
	if x.route.manage && x.backend != nil && !x.g.fleet.Single() {
		x.backend.RefreshCatalogue()
	}
	if x.ticket.Backend() == nil {
		return
	}
	res := fleet.Neutral
	switch {
	case x.outcome == outcomeClientClosed || x.outcome == outcomeClientWriteTimeout:
	case x.upstreamStatus >= 200 && x.upstreamStatus < 400 && (x.outcome == outcomeOK || x.outcome == outcomeClientError):
		res = fleet.Success
	case x.upstreamStatus == fasthttp.StatusServiceUnavailable:
		// Ollama's only 503 is "server busy": its queue is full, it is up.
		res = fleet.Busy
	case x.upstreamStatus >= 500:
		res = fleet.Failure
	case x.outcome == outcomeUpstreamReset || x.outcome == outcomeUpstreamIdleTimeout || x.outcome == outcomeUpstreamProtocol ||
		x.outcome == outcomeUpstreamStreamError:
		res = fleet.Failure
	}
	x.ticket.End(res, x.loadDuration)
	x.ticket = fleet.Ticket{}
}

// routeTarget is where the proxy sends a request: one backend (target), or
// every backend at once (fanOut: the fleet-wide lists and model management).
type routeTarget struct {
	target
	fanOut bool
}

// bodyKinds says where each inference route keeps its conversation.
var bodyKinds = map[string]fleet.BodyKind{
	"/api/chat": fleet.Messages, "/v1/chat/completions": fleet.Messages, "/v1/messages": fleet.Messages,
	"/api/generate": fleet.Prompt, "/v1/completions": fleet.Prompt,
	"/api/embed": fleet.NoConversation, "/api/embeddings": fleet.NoConversation, "/v1/embeddings": fleet.NoConversation,
}

// fanOutRoutes answer for the whole fleet: lists are merged, model
// management is applied on every backend (unless pinned).
var fanOutRoutes = map[string]bool{
	"/api/tags": true, "/api/ps": true, "/v1/models": true,
	"/api/pull": true, "/api/delete": true, "/api/create": true, "/api/copy": true, "/api/blobs/:digest": true,
}

// targetOf decides where a pass-through request goes. With one backend,
// always there; with several: a pinned backend (X-Vega-Backend), the whole
// fleet, a backend that has the request's model (inference, show, push), or
// any healthy one.
func (g *Gateway) targetOf(ctx *fasthttp.RequestCtx, x *exchange) (routeTarget, apiError, bool) {
	var t routeTarget
	pinned, e, ok := g.pinnedBackend(ctx, x)
	if !ok {
		return t, e, false
	}
	t.pinned = pinned
	if g.fleet.Single() || pinned != nil {
		return t, apiError{}, true
	}
	name := x.route.name
	if kind, inference := bodyKinds[name]; inference {
		t.Model, t.Conversation = fleet.Route(kind, ctx.Request.Body())
		t.NeedModel, t.Inference = t.Model != "", true
		return t, apiError{}, true
	}
	switch name {
	case "/api/show", "/api/push":
		var b struct {
			Model string `json:"model"`
			Name  string `json:"name"`
		}
		if json.Unmarshal(ctx.Request.Body(), &b) == nil {
			t.Model = cmp.Or(b.Model, b.Name)
			t.NeedModel = t.Model != ""
		}
	case "/v1/models/:model":
		t.Model = string(bytes.TrimPrefix(ctx.Path(), []byte("/v1/models/")))
		t.NeedModel = t.Model != ""
	default:
		t.fanOut = fanOutRoutes[name]
	}
	return t, apiError{}, true
}

// sendFailed answers a request no backend took.
func (g *Gateway) sendFailed(ctx *fasthttp.RequestCtx, x *exchange, model string, err error) {
	if e, ok := fleetError(err, model); ok {
		g.reject(ctx, x, e)
		if e.status >= 500 {
			g.log.Warn().Str("correlation_id", x.id).Str("outcome", e.outcome).Int("attempts", x.attempts).Err(err).Msg("no backend took the request")
		}
		return
	}
	switch {
	case errors.Is(err, pool.ErrConnect), errors.Is(err, pool.ErrReset), errors.Is(err, pool.ErrFirstByteTimeout),
		errors.Is(err, pool.ErrProtocol), errors.Is(err, pool.ErrClientGone), errors.Is(err, pool.ErrTooLarge):
		g.upstreamFailed(ctx, x, err)
	default: // admission: queue full, wait expired, unhealthy, closed, abandoned
		g.reject(ctx, x, upstreamError(err))
	}
}
