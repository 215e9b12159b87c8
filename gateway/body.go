package gateway

import (
	"io"

	"github.com/valyala/fasthttp"
)

// The server streams request bodies (Server.StreamRequestBody) so that a
// blob upload can go upstream as it arrives (upload.go). Every other
// request's body is read whole here, under the route's limit, before
// anything looks at it: fasthttp's own Request.Body() would read a stream
// without a limit and turn a read error into the body's text.

// retainedBodyBytes is the largest body buffer an exchange keeps for the
// next request; a bigger one (a long chat history) goes to the collector.
const retainedBodyBytes = 64 << 10

var (
	errBodyTooLarge   = apiError{413, "body_too_large", "request body too large", outcomeClientError, ""}
	errBodyTimeout    = apiError{408, "request_timeout", "request not received in time", outcomeClientError, ""}
	errBodyMalformed  = apiError{400, "bad_request", "malformed request body", outcomeClientError, ""}
	errBodyClientGone = apiError{statusClientClosedNoBytes, "client_closed", "the client left while sending its request", outcomeClientClosed, ""}
)

// streamsBody reports whether a request's body goes upstream as a stream
// rather than being read whole first: POST /api/blobs/:digest, the one
// route that carries model weights.
func streamsBody(ctx *fasthttp.RequestCtx, r route) bool {
	return r.name == "/api/blobs/:digest" && ctx.IsPost()
}

// readBody reads the request body whole into the exchange's buffer, up to
// limit bytes (413 over it), and makes it the request's body. A body that
// stops arriving (gateway.read_timeout, armed by the server when the
// request began) is a 408, a broken one a 400; after any of them the
// connection is closed, since the rest of the body is still on the wire.
func (g *Gateway) readBody(ctx *fasthttp.RequestCtx, x *exchange, limit int) (apiError, bool) {
	src := ctx.RequestBodyStream()
	if src == nil {
		return apiError{}, true // nothing to read (an HTTP/1.0 request without a length)
	}
	cl := ctx.Request.Header.ContentLength()
	if cl > limit {
		return errBodyTooLarge, false
	}
	buf := x.body[:0]
	if cl > 0 && cap(buf) < cl {
		buf = make([]byte, 0, cl)
	}
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := src.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if len(buf) > limit {
			x.body = buf
			return errBodyTooLarge, false
		}
		if err == io.EOF {
			if cl >= 0 && len(buf) < cl {
				// fasthttp ends a request body stream at the connection's
				// end without checking its length: the client left.
				x.body = buf
				return errBodyClientGone, false
			}
			break
		}
		if err != nil {
			x.body = buf
			switch {
			case isTimeoutErr(err):
				return errBodyTimeout, false
			case clientLeft(err):
				return errBodyClientGone, false
			}
			return errBodyMalformed, false
		}
	}
	x.body = buf
	ctx.Request.SetBodyRaw(buf)
	x.bytesIn = len(ctx.Request.Header.RawHeaders()) + len(buf)
	return apiError{}, true
}

// releaseBody lets the exchange keep its body buffer for the next request
// unless it grew big.
func (x *exchange) releaseBody() {
	if cap(x.body) > retainedBodyBytes {
		x.body = nil
	}
	x.body = x.body[:0]
}
