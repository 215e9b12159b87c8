package gateway

import (
	"bytes"

	"github.com/valyala/fasthttp"

	"github.com/vega-gateway/vega-gateway/trace"
)

// hopHeaders are never forwarded in either direction (RFC 9110 §7.6.1),
// with the proxy-specific and forwarding headers a client must not forge.
var hopHeaders = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
	"TE", "Trailer", "Transfer-Encoding", "Upgrade",
}

// clientOnlyHeaders are request headers dropped before forwarding: the
// gateway's own credential, cookies meant for nobody upstream, Expect
// (the gateway already has the body) and forwarding headers from an
// untrusted peer (the gateway sets its own X-Forwarded-For).
var clientOnlyHeaders = []string{
	HeaderAPIKey, "Cookie", "Expect", "Forwarded", "X-Forwarded-For", "X-Forwarded-Host",
	"X-Forwarded-Proto", "X-Real-IP", trace.HeaderRequestID,
}

// stripConnectionTokens removes the headers named in Connection (each
// token is a hop-by-hop header by declaration), then the fixed hop list.
// It must run before the gateway adds its own headers, so that
// `Connection: X-Correlation-ID` cannot remove the gateway's ID
// (CVE-2021-33197 class).
func stripRequestHop(h *fasthttp.RequestHeader) {
	for _, v := range h.PeekAll("Connection") {
		for tok := range bytes.SplitSeq(v, []byte{','}) {
			if tok = bytes.TrimSpace(tok); len(tok) > 0 {
				h.DelBytes(tok)
			}
		}
	}
	for _, k := range hopHeaders {
		h.Del(k)
	}
	for _, k := range clientOnlyHeaders {
		h.Del(k)
	}
}

func stripResponseHop(h *fasthttp.ResponseHeader) {
	if v := h.Peek("Connection"); len(v) > 0 {
		for tok := range bytes.SplitSeq(append([]byte(nil), v...), []byte{','}) {
			if tok = bytes.TrimSpace(tok); len(tok) > 0 {
				h.DelBytes(tok)
			}
		}
	}
	for _, k := range hopHeaders {
		h.Del(k)
	}
}
