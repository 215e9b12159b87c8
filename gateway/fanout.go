package gateway

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/vega-gateway/vega-gateway/fleet"
	"github.com/vega-gateway/vega-gateway/pool"
)

// listDeadline bounds a fleet-wide list (/api/tags, /api/ps, /v1/models):
// a backend that has not answered in full by then is left out, so one
// stuck backend cannot hold up the list.
const listDeadline = 10 * time.Second

// errListDeadline: a backend did not answer a fleet-wide list within
// listDeadline; it is left out of the list.
var errListDeadline = fmt.Errorf("no answer within the fleet-wide list deadline (%s): %w", listDeadline, pool.ErrFirstByteTimeout)

// serveFleetWide answers a request for the fleet as a whole, so that the
// fleet answers as one Ollama. The same upstream request (with the
// correlation ID and traceparent, never the client's gateway credentials)
// goes to the backends at once, each through its own pool. It reports
// whether a progress stream now owns the exchange (and will finish it).
//
// Lists — GET (and HEAD) /api/tags, /api/ps, /v1/models — go to every
// usable backend (not marked down, closed or circuit-broken), each bounded
// by listDeadline. The
// answer is the union in Ollama's own format: {"models":[...]} for the
// native lists (application/json; charset=utf-8), and
// {"object":"list","data":[...]} plus a newline for /v1/models
// (application/json; "data" is null when empty, as Ollama sends it). Each
// model appears once, keyed by its normalised name (native) or id
// (OpenAI): the entry of the first backend in configuration order that
// lists it, verbatim. The list is sorted as Ollama sorts it: tags by
// modified_at and /v1/models by created, newest first; ps by expires_at,
// latest first. A backend that fails, times out or answers other than 200
// is left out (a warning names it); if none answers 200, the answer is the
// backends' own when they all gave the same status, else 502 in the
// route's error shape (503 no_backend when no backend is usable at all).
//
// Model management — POST /api/pull, /api/create, /api/copy,
// /api/blobs/:digest, DELETE /api/delete, HEAD /api/blobs/:digest — goes
// to every configured backend (a backend marked down fails at once, and
// counts as failed), and each backend's catalogue is refreshed after. When
// every backend answered with the same non-2xx status (a bad name, say),
// that answer is relayed as it came. Otherwise:
//
//   - pull and create, streamed ("stream" absent or true): 200,
//     application/x-ndjson, one JSON object per line, flushed line by line,
//     from the moment the first backend's stream begins:
//     {"status":"gpu-a: pulling manifest"} — each backend's status lines,
//     prefixed by its name;
//     {"status":"pulling 1a2b3c4d5e6f","digest":"sha256:…","total":T,"completed":C}
//     — a layer's progress summed over the backends: T is the layer's size
//     times the backends still working when it first appeared, C the sum
//     of their completed bytes (the digest is kept, so the ollama CLI
//     draws one bar per layer for the whole fleet);
//     {"status":"gpu-a: success"} or {"status":"gpu-b: error: <message>"}
//     — once per backend, when it is done (a backend that could not be
//     reached, answered an error status or broke off its stream has
//     failed);
//     and exactly one final line: {"status":"success"} when every backend
//     succeeded, else {"error":"pull failed on gpu-b: <message> (succeeded
//     on gpu-a, gpu-c)","code":"backend_failed","correlation_id":"…"},
//     which makes the ollama CLI and client libraries fail with that
//     message. A client that leaves ends the pulls on every backend. If
//     every backend fails before its stream begins, the answer is not a
//     stream but the error below, with status 502.
//   - pull, not streamed ("stream": false): 200 {"status":"success"} when
//     every backend succeeded, else 502 {"error":"pull failed on gpu-b:
//     <message> (succeeded on gpu-a)",...}.
//   - delete: 200 with an empty body, as Ollama answers, when the model was
//     deleted on at least one backend and every other answered 404; 404
//     {"error":"model 'x' not found"} (Ollama's own answer) when no backend
//     had it; else 502 {"error":"delete failed on gpu-b: <message>
//     (deleted on gpu-a; not found on gpu-c)",...}.
//   - copy, create not streamed, POST blobs: the first backend's answer
//     (status and body) when every backend answered 2xx; else the worst
//     status among the failures, with {"error":"copy failed on gpu-b:
//     <message> (succeeded on gpu-a, gpu-c)",...}.
//   - HEAD blobs: 200 only when every backend has the blob; 404 when the
//     others answered 404 (the client then uploads it, and the upload goes
//     to every backend); else the worst status. No body.
//
// A backend's <message> is its own {"error"} text, or the gateway's for a
// transport failure ("cannot connect to the upstream"); the detail goes to
// the log with the backend's name. Gateway-made errors carry "code" and
// "correlation_id" beside "error", as every gateway error does.
//
// The access log line has attempts = the number of backends addressed and
// no backend or route_reason; upstream_status is the status relayed, or
// the worst one seen.
func (g *Gateway) serveFleetWide(ctx *fasthttp.RequestCtx, x *exchange, _ routeTarget, keyInAuthorization bool) bool {
	f := &fanOut{g: g, x: x, head: ctx.IsHead(), body: ctx.Request.Body(), start: time.Now()}
	f.goneFn = f.gone
	name := x.route.name
	if name == "/api/tags" || name == "/api/ps" || name == "/v1/models" {
		f.serveList(ctx, keyInAuthorization)
		return false
	}
	f.op = operationName(name, f.head)
	for _, b := range g.fleet.Backends() {
		f.calls = append(f.calls, &backendCall{b: b})
	}
	if len(f.calls) == 0 { // discovery has found none yet
		e, _ := fleetError(fleet.ErrNoBackend, "")
		g.reject(ctx, x, e)
		return false
	}
	f.buildRequests(ctx, keyInAuthorization)
	if (name == "/api/pull" || name == "/api/create") && streamed(f.body) {
		return f.serveProgress(ctx)
	}
	f.collect(true)
	f.answer(ctx)
	return false
}

// operationName names a management route in error messages.
func operationName(route string, head bool) string {
	switch {
	case route == "/api/blobs/:digest" && head:
		return "blob check"
	case route == "/api/blobs/:digest":
		return "blob upload"
	}
	return strings.TrimPrefix(route, "/api/")
}

// streamed reads a pull or create body's "stream": absent or true means a
// progress stream, as in Ollama.
func streamed(body []byte) bool {
	var b struct {
		Stream *bool `json:"stream"`
	}
	_ = json.Unmarshal(body, &b) // a bad body is the backends' to refuse
	return b.Stream == nil || *b.Stream
}

// fanOut is one fleet-wide request: the same upstream request sent to
// several backends at once.
type fanOut struct {
	g     *Gateway
	x     *exchange
	op    string
	head  bool
	body  []byte
	calls []*backendCall
	start time.Time
	// progress: a streamed pull or create, answered whole because every
	// backend failed before its stream began.
	progress bool
	// deadline bounds each call of a list (zero: the pools' own timeouts).
	deadline time.Time
	// stopped: give up on every backend (the client left, or the progress
	// writer is done with them); expired: the deadline passed; clientLeft:
	// the client is gone.
	stopped, expired, clientLeft atomic.Bool
	// goneFn is f.gone, bound once; the pools poll it while a call waits
	// for a slot or for its first response byte.
	goneFn func() bool
}

// backendCall is one backend's share of a fleet-wide request. Its fields
// are written by the call's goroutine and read by the fan-out's owner only
// after that goroutine is done (WaitGroup, or its done event); resp is
// guarded by mu, because stop interrupts it from another goroutine.
type backendCall struct {
	b       *fleet.Backend
	req     *fasthttp.Request
	status  int    // the backend's status; 0 if no response came
	ctype   string // its Content-Type
	body    []byte // its whole body (calls not streamed, and error answers)
	err     error  // a transport failure (wraps a pool error)
	retries int
	waited  time.Duration
	ttfb    time.Duration
	// Progress streams: ok when the backend reported success; msg its
	// in-band error.
	ok  bool
	msg string

	mu     sync.Mutex
	resp   *fasthttp.Response
	closed bool
}

// gone tells the pools to give up on a call: the fan-out was stopped, the
// list deadline passed, or the client left.
func (f *fanOut) gone() bool {
	switch {
	case f.stopped.Load():
		return true
	case !f.deadline.IsZero() && !time.Now().Before(f.deadline):
		f.expired.Store(true)
		return true
	case f.x.clientGone():
		f.clientLeft.Store(true)
		f.stopped.Store(true)
		return true
	}
	return false
}

// stop gives up on every backend: calls still waiting end at the pools'
// next poll, and bodies being read fail at once.
func (f *fanOut) stop() {
	f.stopped.Store(true)
	for _, c := range f.calls {
		c.mu.Lock()
		if c.resp != nil && !c.closed {
			pool.Interrupt(c.resp)
		}
		c.mu.Unlock()
	}
}

// buildRequests makes each call's upstream request. It runs in the
// handler: the requests are built from the RequestCtx, which the calls'
// goroutines never touch.
func (f *fanOut) buildRequests(ctx *fasthttp.RequestCtx, keyInAuthorization bool) {
	for _, c := range f.calls {
		c.req = acquireOutbound()
		f.g.outboundRequest(ctx, f.x, c.req, keyInAuthorization)
		c.req.SetBodyRaw(f.body)
	}
}

// roundTrip sends c's request through its backend's pool and returns the
// response with its headers read and its body still a stream, and the
// release of the pool slot.
func (f *fanOut) roundTrip(c *backendCall) (*fasthttp.Response, func(), error) {
	req := c.req
	c.req = nil
	defer fasthttp.ReleaseRequest(req)
	rel, waited, err := c.b.Pool.AcquireWhile(f.g.closing, f.goneFn)
	c.waited = waited
	if err != nil {
		return nil, nil, f.stopError(err)
	}
	resp := fasthttp.AcquireResponse()
	start := time.Now()
	retries, err := c.b.Pool.DoWhile(req, resp, f.goneFn)
	c.retries, c.ttfb = retries, time.Since(start)
	if err != nil {
		fasthttp.ReleaseResponse(resp)
		rel()
		return nil, nil, f.stopError(err)
	}
	if resp.StatusCode() < 200 {
		// A 1xx is never relayed; the connection is unusable after it.
		resp.SetConnectionClose()
		_ = resp.CloseBodyStream()
		fasthttp.ReleaseResponse(resp)
		rel()
		c.b.Pool.NoteError()
		return nil, nil, pool.ErrProtocol
	}
	c.status = resp.StatusCode()
	c.ctype = string(resp.Header.ContentType())
	if !f.deadline.IsZero() {
		pool.LimitBody(resp, f.deadline)
	}
	c.mu.Lock()
	c.resp = resp
	c.mu.Unlock()
	return resp, rel, nil
}

// stopError turns the pools' "client gone" into what it stands for when
// the list deadline, not the client, ended the wait.
func (f *fanOut) stopError(err error) error {
	if (errors.Is(err, pool.ErrClientGone) || errors.Is(err, pool.ErrAbandoned)) && f.expired.Load() && !f.clientLeft.Load() {
		return errListDeadline
	}
	return err
}

// closeCall ends c's response: the body is closed (the connection is
// pooled only if it was read to the end) and the slot released.
func (f *fanOut) closeCall(c *backendCall, rel func()) {
	c.mu.Lock()
	resp := c.resp
	c.closed = true
	c.mu.Unlock()
	pool.ClearLimit(resp)
	_ = resp.CloseBodyStream()
	fasthttp.ReleaseResponse(resp)
	rel()
}

// callWhole runs c, reading the answer whole (up to the backend's
// upstream.max_response_bytes).
func (f *fanOut) callWhole(c *backendCall) {
	_, rel, err := f.roundTrip(c)
	if err != nil {
		c.err = err
		return
	}
	defer f.closeCall(c, rel)
	c.body, c.err = readWhole(c.resp, c.b.Pool.MaxResponseBytes())
	if c.err != nil {
		c.err = f.stopError(c.err)
		c.b.Pool.NoteError()
	}
}

// readWhole reads a response body, refusing one over max bytes.
func readWhole(resp *fasthttp.Response, max int) ([]byte, error) {
	if cl := resp.Header.ContentLength(); cl > max {
		return nil, pool.ErrTooLarge
	}
	src := resp.BodyStream()
	if src == nil {
		return append([]byte(nil), resp.Body()...), nil
	}
	b, err := io.ReadAll(io.LimitReader(src, int64(max)+1))
	if err != nil {
		return nil, classifyBody(err)
	}
	if len(b) > max {
		return nil, pool.ErrTooLarge
	}
	return b, nil
}

// collect runs every call at once, reading each answer whole, and returns
// when all are done. Every goroutine it starts has returned by then.
func (f *fanOut) collect(refresh bool) {
	var wg sync.WaitGroup
	for _, c := range f.calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer f.recoverCall(c)
			f.callWhole(c)
			if refresh {
				c.b.RefreshCatalogue()
			}
		}()
	}
	wg.Wait()
	f.note()
}

// errClientLeftFanOut: the client left while the backends were asked.
var errClientLeftFanOut = apiError{statusClientClosedNoBytes, "client_closed", "the client left before the backends answered", outcomeClientClosed, ""}

// errCallPanicked: a bug in the fan-out; the backend counts as failed.
var errCallPanicked = errors.New("gateway: fleet-wide call panicked")

// recoverCall keeps a panic in a call's goroutine from taking the process
// down (fasthttp recovers nothing, and this is not the handler's goroutine).
func (f *fanOut) recoverCall(c *backendCall) {
	if r := recover(); r != nil {
		f.g.recovered(f.x, r)
		c.err, c.ok = errCallPanicked, false
	}
}

// note records the calls in the exchange, and logs each failed backend.
// It runs once every call is done.
func (f *fanOut) note() {
	x := f.x
	x.attempts = len(f.calls)
	first := time.Duration(-1)
	for _, c := range f.calls {
		x.retries += c.retries
		x.queueWait = max(x.queueWait, c.waited)
		if c.status != 0 && (first < 0 || c.ttfb < first) {
			first = c.ttfb
		}
		if st, _ := c.failure(); st != 0 && !f.clientLeft.Load() {
			ev := f.g.log.Warn().Str("correlation_id", x.id).Str("route", x.route.name).Str("backend", c.b.Name)
			if c.status != 0 {
				ev = ev.Int("upstream_status", c.status)
			}
			if c.err != nil {
				ev = ev.Err(c.err)
			} else if c.msg != "" {
				ev = ev.Str("error", c.msg)
			}
			ev.Msg("fleet-wide request failed on a backend")
		}
	}
	if first >= 0 {
		x.ttfb = first
	}
}
