package gateway

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"strings"

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
	"x-vega-backend": true,
}

// hopHeaders are never relayed back to the client.
var hopHeaders = [...]string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
	"TE", "Trailer", "Transfer-Encoding", "Upgrade",
}

// hopIndex maps a lower-case hop-by-hop name to its place in hopHeaders.
var hopIndex = func() map[string]int {
	m := make(map[string]int, len(hopHeaders))
	for i, k := range hopHeaders {
		m[strings.ToLower(k)] = i
	}
	return m
}()

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
// Connection names (each is hop-by-hop by declaration), Authorization
// when it carried a gateway key, and Origin when dropOrigin is set. The gateway's own headers are set after,
// so `Connection: X-Correlation-ID` cannot remove them (CVE-2021-33197).
func copyRequestHeaders(in, out *fasthttp.RequestHeader, dropAuthorization, dropOrigin bool) {
	out.SetMethodBytes(in.Method())
	var buf [64]byte
	sawConnection := false
	for k, v := range in.All() {
		lk, ok := lower(&buf, k)
		if ok && (dropOnRequest[string(lk)] || dropAuthorization && string(lk) == "authorization" || dropOrigin && string(lk) == "origin") {
			sawConnection = sawConnection || string(lk) == "connection"
			continue
		}
		out.AddBytesKV(k, v)
	}
	if sawConnection {
		// Rare enough (most clients send none, or "keep-alive", which
		// names a header dropped anyway) to be undone afterwards rather
		// than looked up before every request.
		dropNamed(out, in.PeekAll("Connection"))
	}
}

// dropNamed deletes the headers of h named by the Connection values, in the
// spelling h stores them in.
func dropNamed(h *fasthttp.RequestHeader, named [][]byte) {
	var drop [][]byte
	for k := range h.All() {
		if connectionNames(named, k) {
			drop = append(drop, append([]byte(nil), k...)) // k is h's own storage, which Del moves
		}
	}
	for _, k := range drop {
		h.DelBytes(k)
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
// upstream's Connection names, from a response relayed to the client. The
// pool keeps upstream header names as sent, and a copied header keeps that
// setting, so every name is matched without regard to case and deleted in
// the spelling it was stored in (a Del with the canonical name would miss
// "keep-alive").
func stripResponseHop(h *fasthttp.ResponseHeader) {
	// First find whether there is anything to remove, in one pass: a Del
	// scans every header, and Ollama's replies have none of them but a
	// stream's Transfer-Encoding.
	var buf [64]byte
	var named []byte // the Connection values, comma-joined
	hops := 0
	for k, v := range h.All() {
		lk, ok := lower(&buf, k)
		if !ok {
			continue
		}
		if _, hop := hopIndex[string(lk)]; hop {
			hops++
			if string(lk) == "connection" {
				named = append(append(named, v...), ',')
			}
		}
	}
	if hops == 0 {
		return
	}
	// The names to delete are copied (k is the header's own storage, which
	// Del moves), into a buffer on the stack for the usual one or two:
	// Transfer-Encoding of every chunked stream.
	var names [256]byte
	var spans [8][2]int
	drop, n := names[:0], 0
	var more [][]byte
	for k := range h.All() {
		lk, ok := lower(&buf, k)
		if _, hop := hopIndex[string(lk)]; ok && hop || len(named) > 0 && connectionNames([][]byte{named}, k) &&
			!bytes.EqualFold(k, []byte(trace.HeaderCorrelationID)) {
			if n < len(spans) && len(drop)+len(k) <= cap(drop) {
				spans[n] = [2]int{len(drop), len(drop) + len(k)}
				drop = append(drop, k...)
				n++
			} else {
				more = append(more, append([]byte(nil), k...))
			}
		}
	}
	for _, sp := range spans[:n] {
		h.DelBytes(drop[sp[0]:sp[1]])
	}
	for _, k := range more {
		h.DelBytes(k)
	}
}

// sentChunked reports whether the request came with Transfer-Encoding.
// fasthttp reports Content-Length -1 for a chunked body, but once it has
// read an empty one it reports 0 and drops the header, so the raw header
// block is checked then (only then: a body-less request costs one scan of
// its header block).
func sentChunked(h *fasthttp.RequestHeader) bool {
	switch h.ContentLength() {
	case -1:
		return true
	case 0:
		return hasField(h.RawHeaders(), "transfer-encoding")
	}
	return false
}

// hasField reports whether the raw header block has a field named name
// (lower case), compared case-insensitively.
func hasField(raw []byte, name string) bool {
	for len(raw) > 0 {
		line := raw
		if i := bytes.IndexByte(raw, '\n'); i >= 0 {
			line, raw = raw[:i], raw[i+1:]
		} else {
			raw = nil
		}
		if len(line) > len(name) && line[len(name)] == ':' && bytes.EqualFold(line[:len(name)], []byte(name)) {
			return true
		}
	}
	return false
}

// trustedProxies is gateway.trusted_proxies parsed: the peers whose
// X-Forwarded-For is believed.
type trustedProxies []netip.Prefix

// parseTrustedProxies reads CIDRs and bare addresses (a /32 or /128).
func parseTrustedProxies(list []string) (trustedProxies, error) {
	var tp trustedProxies
	for i, s := range list {
		s = strings.TrimSpace(s)
		p, err := netip.ParsePrefix(s)
		if err != nil {
			a, aerr := netip.ParseAddr(s)
			if aerr != nil {
				return nil, fmt.Errorf("entry #%d %q is not an IP address or CIDR", i+1, s)
			}
			a = a.Unmap()
			p = netip.PrefixFrom(a, a.BitLen())
		}
		if p.Addr().Is4In6() {
			p = netip.PrefixFrom(p.Addr().Unmap(), max(p.Bits()-96, 0))
		}
		tp = append(tp, p.Masked())
	}
	return tp, nil
}

func (tp trustedProxies) contains(a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range tp {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// parseForwardedAddr reads one X-Forwarded-For entry: an address, or an
// address with a port ("192.0.2.1:4711", "[2001:db8::1]:4711").
func parseForwardedAddr(b []byte) (netip.Addr, bool) {
	if a, err := netip.ParseAddr(string(b)); err == nil {
		return a.Unmap(), true
	}
	if ap, err := netip.ParseAddrPort(string(b)); err == nil {
		return ap.Addr().Unmap(), true
	}
	return netip.Addr{}, false
}

// clientAddr is the address a request is attributed to. From an untrusted
// peer it is the peer. From a trusted proxy it is the rightmost
// X-Forwarded-For entry that is not itself a trusted proxy: each trusted
// hop appended the address it received from, and everything left of the
// first untrusted one was written by the client and proves nothing. An
// entry that is not an address ends the walk at the last trusted hop. ok
// is false when the result is the peer itself.
func (tp trustedProxies) clientAddr(peer netip.Addr, h *fasthttp.RequestHeader) (netip.Addr, bool) {
	if len(tp) == 0 || !tp.contains(peer) {
		return peer, false
	}
	client := peer
	values := h.PeekAll("X-Forwarded-For")
	for i := len(values) - 1; i >= 0; i-- {
		v := values[i]
		for len(v) > 0 {
			j := bytes.LastIndexByte(v, ',')
			entry := bytes.TrimSpace(v[j+1:])
			v = v[:max(j, 0)]
			if len(entry) == 0 {
				continue
			}
			a, ok := parseForwardedAddr(entry)
			if !ok {
				return client, client != peer
			}
			client = a
			if !tp.contains(a) {
				return client, true
			}
		}
	}
	return client, client != peer
}

// appendForwardedFor appends the X-Forwarded-For value a trusted proxy's
// request is forwarded with: the proxy's own list (several header lines
// joined in order, RFC 9110 §5.3), then the proxy itself.
func appendForwardedFor(dst []byte, peer netip.Addr, h *fasthttp.RequestHeader) []byte {
	for _, v := range h.PeekAll("X-Forwarded-For") {
		if v = bytes.TrimSpace(v); len(v) > 0 {
			dst = append(dst, v...)
			dst = append(dst, ", "...)
		}
	}
	return peer.AppendTo(dst)
}

// clientIP returns the IP the access log and the per-IP failure budget use
// for a request, written over ip (the peer's): unchanged unless the peer is
// a trusted proxy. With no trusted proxies configured it does not allocate.
func (g *Gateway) clientIP(ip net.IP, h *fasthttp.RequestHeader) net.IP {
	if len(g.cfg.trusted) == 0 {
		return ip
	}
	peer, _ := netip.AddrFromSlice(ip)
	a, ok := g.cfg.trusted.clientAddr(peer.Unmap(), h)
	if !ok {
		return ip
	}
	if a.Is4() {
		b := a.As4()
		return append(ip[:0], b[:]...)
	}
	b := a.As16()
	return append(ip[:0], b[:]...)
}

// forwardedFor is the X-Forwarded-For value sent upstream, rendered into
// x's scratch buffer: the peer's address, or for a trusted proxy its list
// extended by the proxy. A client's own X-Forwarded-For is never passed on
// (copyRequestHeaders drops it). With no trusted proxies configured it does
// not allocate.
func (g *Gateway) forwardedFor(x *exchange, peer net.IP, h *fasthttp.RequestHeader) []byte {
	p, _ := netip.AddrFromSlice(peer)
	p = p.Unmap()
	if len(g.cfg.trusted) == 0 || !g.cfg.trusted.contains(p) {
		x.scratch = p.AppendTo(x.scratch[:0])
		return x.scratch
	}
	x.scratch = appendForwardedFor(x.scratch[:0], p, h)
	return x.scratch
}
