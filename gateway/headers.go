package gateway

import (
	"bytes"

	"github.com/valyala/fasthttp"

	"github.com/vega-gateway/vega-gateway/trace"
)

// dropOnRequest are the request headers never forwarded, lower-cased:
// hop-by-hop headers (RFC 9110 §7.6.1); framing, which the outbound request
// sets itself; the gateway's own credential; cookies meant for nobody
// upstream; Expect (the gateway already has the body); forwarding headers
// from an untrusted peer (the gateway sets its own X-Forwarded-For); and the
// IDs the gateway sets (a client's copies would duplicate them).
var dropOnRequest = map[string]bool{
	"connection": true, "proxy-connection": true, "keep-alive": true, "proxy-authenticate": true,
	"proxy-authorization": true, "te": true, "trailer": true, "transfer-encoding": true, "upgrade": true,
	"host": true, "content-length": true, "x-api-key": true, "cookie": true, "expect": true,
	"forwarded": true, "x-forwarded-for": true, "x-forwarded-host": true, "x-forwarded-proto": true,
	"x-real-ip": true, "x-request-id": true, "x-correlation-id": true, "traceparent": true,
}

// hopHeaders are never relayed back to the client.
var hopHeaders = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
	"TE", "Trailer", "Transfer-Encoding", "Upgrade",
}

// lower writes the lower-cased key into buf (no allocation for keys up to
// its size; longer keys are never on a drop list).
func lower(buf *[64]byte, k []byte) ([]byte, bool) {
	if len(k) > len(buf) {
		return nil, false
	}
	for i, c := range k {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		buf[i] = c
	}
	return buf[:len(k)], true
}

// copyRequestHeaders copies the client's headers onto the outbound request
// in one pass, leaving out dropOnRequest, every header the client's
// Connection names (each is hop-by-hop by declaration), and Authorization
// when it carried a gateway key. The gateway's own headers are set after,
// so `Connection: X-Correlation-ID` cannot remove them (CVE-2021-33197).
func copyRequestHeaders(in, out *fasthttp.RequestHeader, dropAuthorization bool) {
	out.SetMethodBytes(in.Method())
	named := in.PeekAll("Connection")
	var buf [64]byte
	for k, v := range in.All() {
		lk, ok := lower(&buf, k)
		if ok && (dropOnRequest[string(lk)] || dropAuthorization && string(lk) == "authorization") {
			continue
		}
		if len(named) > 0 && connectionNames(named, k) {
			continue
		}
		out.AddBytesKV(k, v)
	}
}

// connectionNames reports whether key is one of the Connection tokens.
func connectionNames(values [][]byte, key []byte) bool {
	for _, v := range values {
		for tok := range bytes.SplitSeq(v, []byte{','}) {
			if bytes.EqualFold(bytes.TrimSpace(tok), key) {
				return true
			}
		}
	}
	return false
}

// stripResponseHop removes the hop-by-hop headers, and those the
// upstream's Connection names, from a response relayed to the client.
func stripResponseHop(h *fasthttp.ResponseHeader) {
	if v := h.Peek("Connection"); len(v) > 0 {
		for tok := range bytes.SplitSeq(append([]byte(nil), v...), []byte{','}) {
			if tok = bytes.TrimSpace(tok); len(tok) > 0 && !bytes.EqualFold(tok, []byte(trace.HeaderCorrelationID)) {
				h.DelBytes(tok)
			}
		}
	}
	for _, k := range hopHeaders {
		h.Del(k)
	}
}
