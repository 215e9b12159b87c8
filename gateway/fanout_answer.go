package gateway

import (
	"encoding/json"
	"errors"
	"strings"

	"github.com/valyala/fasthttp"
)

// failure is how c failed: the status it stands for and a message for the
// client; status 0 if it succeeded.
func (c *backendCall) failure() (int, string) {
	switch {
	case c.err != nil:
		if errors.Is(c.err, errCallPanicked) {
			return errInternal.status, errInternal.message
		}
		e := upstreamError(c.err)
		return e.status, e.message
	case c.msg != "":
		return fasthttp.StatusBadGateway, c.msg
	case c.status >= 200 && c.status < 300:
		return 0, ""
	}
	if m := errorMessage(c.body); m != "" {
		return c.status, m
	}
	return c.status, strings.ToLower(fasthttp.StatusMessage(c.status))
}

// errorMessage reads the message of an error body: Ollama's
// {"error":"..."} or OpenAI's {"error":{"message":"..."}}.
func errorMessage(body []byte) string {
	var e struct {
		Error json.RawMessage `json:"error"`
	}
	if json.Unmarshal(body, &e) != nil || len(e.Error) == 0 {
		return ""
	}
	var s string
	if json.Unmarshal(e.Error, &s) == nil {
		return s
	}
	var o struct {
		Message string `json:"message"`
	}
	_ = json.Unmarshal(e.Error, &o)
	return o.Message
}

// sameStatus returns the first call when every backend answered with one
// and the same non-2xx status: an answer to relay as it came.
func (f *fanOut) sameStatus() *backendCall {
	first := f.calls[0]
	if first.err != nil || first.status < 300 {
		return nil
	}
	for _, c := range f.calls[1:] {
		if c.err != nil || c.status != first.status {
			return nil
		}
	}
	return first
}

// relayCall answers with c's status, Content-Type and body.
func (f *fanOut) relayCall(ctx *fasthttp.RequestCtx, c *backendCall) {
	x := f.x
	ctx.SetStatusCode(c.status)
	if c.ctype != "" {
		ctx.Response.Header.SetContentType(c.ctype)
	}
	ctx.SetBody(c.body)
	ctx.Response.SkipBody = f.head
	x.status, x.upstreamStatus = c.status, c.status
	if c.status >= 400 {
		x.outcome = outcomeUpstreamHTTPError
	}
}

// answer answers a management request whose calls are all done.
func (f *fanOut) answer(ctx *fasthttp.RequestCtx) {
	x := f.x
	if f.clientLeft.Load() {
		f.g.reject(ctx, x, errClientLeftFanOut)
		return
	}
	if c := f.sameStatus(); c != nil {
		f.relayCall(ctx, c)
		return
	}
	var ok, notFound, failed []*backendCall
	for _, c := range f.calls {
		switch st, _ := c.failure(); {
		case st == 0:
			ok = append(ok, c)
		case st == fasthttp.StatusNotFound && c.err == nil:
			notFound = append(notFound, c)
			failed = append(failed, c)
		default:
			failed = append(failed, c)
		}
	}
	if len(failed) == 0 {
		f.relayCall(ctx, ok[0])
		return
	}
	status := worstStatus(failed)
	switch x.route.name {
	case "/api/delete":
		if len(failed) == len(notFound) && len(ok) > 0 {
			f.relayCall(ctx, ok[0])
			return
		}
		f.fail(ctx, fasthttp.StatusBadGateway, ok, notFound, exclude(failed, notFound))
		return
	case "/api/pull":
		status = fasthttp.StatusBadGateway
	case "/api/create":
		if f.progress {
			status = fasthttp.StatusBadGateway
		}
	case "/api/blobs/:digest":
		if f.head && len(failed) == len(notFound) {
			// Some backends lack the blob: the client uploads it to all.
			f.relayCall(ctx, notFound[0])
			return
		}
	}
	f.fail(ctx, status, ok, nil, failed)
}

// fail answers with a gateway error naming the backends that failed.
func (f *fanOut) fail(ctx *fasthttp.RequestCtx, status int, ok, notFound, failed []*backendCall) {
	x := f.x
	outcome := outcomeUpstreamHTTPError
	for _, c := range failed {
		if c.err != nil {
			outcome = upstreamError(c.err).outcome
			break
		}
	}
	x.upstreamStatus = worstUpstream(f.calls)
	f.g.reject(ctx, x, apiError{status, "backend_failed", failureMessage(f.op, x.route.name == "/api/delete", ok, notFound, failed), outcome, ""})
	ctx.Response.SkipBody = f.head
}

// failureMessage says where an operation failed and where it did not:
// "pull failed on gpu-b: <message>; gpu-c: <message> (succeeded on gpu-a)".
func failureMessage(op string, deleted bool, ok, notFound, failed []*backendCall) string {
	var sb strings.Builder
	sb.WriteString(op)
	sb.WriteString(" failed on ")
	for i, c := range failed {
		if i > 0 {
			sb.WriteString("; ")
		}
		_, msg := c.failure()
		sb.WriteString(c.b.Name)
		sb.WriteString(": ")
		sb.WriteString(msg)
	}
	var notes []string
	if len(ok) > 0 {
		verb := "succeeded on "
		if deleted {
			verb = "deleted on "
		}
		notes = append(notes, verb+names(ok))
	}
	if len(notFound) > 0 {
		notes = append(notes, "not found on "+names(notFound))
	}
	if len(notes) > 0 {
		sb.WriteString(" (")
		sb.WriteString(strings.Join(notes, "; "))
		sb.WriteString(")")
	}
	return sb.String()
}

func names(cs []*backendCall) string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = c.b.Name
	}
	return strings.Join(out, ", ")
}

// worstStatus is the highest status the failures stand for.
func worstStatus(failed []*backendCall) int {
	worst := 0
	for _, c := range failed {
		st, _ := c.failure()
		worst = max(worst, st)
	}
	return worst
}

// worstUpstream is the highest status a backend answered (0 if none did).
func worstUpstream(calls []*backendCall) int {
	worst := 0
	for _, c := range calls {
		worst = max(worst, c.status)
	}
	return worst
}

// exclude returns a without the elements of b.
func exclude(a, b []*backendCall) []*backendCall {
	var out []*backendCall
outer:
	for _, c := range a {
		for _, d := range b {
			if c == d {
				continue outer
			}
		}
		out = append(out, c)
	}
	return out
}
