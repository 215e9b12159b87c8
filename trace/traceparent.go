package trace

import (
	"encoding/binary"
	"encoding/hex"
	"math/rand/v2"
)

// fillRandom fills b (a multiple of 8 bytes) from math/rand/v2's global
// source: ChaCha8 seeded by the OS, per thread, with no syscall or lock on
// the request path. IDs need uniqueness and unpredictability, not keys.
func fillRandom(b []byte) {
	for i := 0; i+8 <= len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], rand.Uint64())
	}
}

// HeaderTraceparent and HeaderTracestate are the W3C Trace Context headers.
const (
	HeaderTraceparent = "traceparent"
	HeaderTracestate  = "tracestate"
)

// Context is a request's W3C trace context as the gateway forwards it. It
// is plain arrays, so resolving and forwarding it allocates nothing.
type Context struct {
	// TraceID is the 32 lower-hex digits of the trace: the client's, or new.
	TraceID [32]byte
	// ParentID is the 16 hex digits of the gateway's own span: the parent
	// of the upstream call.
	ParentID [16]byte
	// ClientSpanID is the 16 hex digits of the client's span (the parent
	// of the gateway's), zero when the gateway began the trace.
	ClientSpanID [16]byte
	// Flags is the 2-hex trace-flags byte.
	Flags [2]byte
	// Started is true when the client sent no usable traceparent and the
	// gateway began the trace.
	Started bool
}

// AppendTraceparent appends the header value the gateway sends upstream.
func (c *Context) AppendTraceparent(dst []byte) []byte {
	dst = append(dst, "00-"...)
	dst = append(dst, c.TraceID[:]...)
	dst = append(dst, '-')
	dst = append(dst, c.ParentID[:]...)
	dst = append(dst, '-')
	return append(dst, c.Flags[:]...)
}

// Traceparent renders the header value the gateway sends upstream.
func (c *Context) Traceparent() string { return string(c.AppendTraceparent(nil)) }

// ParseTraceparent reads a client's traceparent (version 00 layout; later
// versions are read by their 00 prefix as the spec asks) into c, giving the
// gateway's own span a new ID under the same trace. An absent or malformed
// header starts a new sampled trace.
func (c *Context) ParseTraceparent(h []byte) {
	var rnd [24]byte
	fillRandom(rnd[:])
	hex.Encode(c.ParentID[:], rnd[:8])
	if validTraceparent(h) {
		copy(c.TraceID[:], h[3:35])
		copy(c.ClientSpanID[:], h[36:52])
		copy(c.Flags[:], h[53:55])
		c.Started = false
		return
	}
	hex.Encode(c.TraceID[:], rnd[8:24])
	c.ClientSpanID = [16]byte{}
	c.Flags = [2]byte{'0', '1'}
	c.Started = true
}

// ParseTraceparent returns the context for a client's traceparent header.
func ParseTraceparent(h []byte) Context {
	var c Context
	c.ParseTraceparent(h)
	return c
}

func validTraceparent(h []byte) bool {
	// 00-<32 hex>-<16 hex>-<2 hex>
	if len(h) < 55 || (len(h) > 55 && h[55] != '-') {
		return false
	}
	if h[2] != '-' || h[35] != '-' || h[52] != '-' {
		return false
	}
	version := h[0:2]
	if !isLowerHex(version) || string(version) == "ff" || (string(version) == "00" && len(h) != 55) {
		return false
	}
	tid, pid, fl := h[3:35], h[36:52], h[53:55]
	return isLowerHex(tid) && isLowerHex(pid) && isLowerHex(fl) && !allZero(tid) && !allZero(pid)
}

func isLowerHex(b []byte) bool {
	for _, c := range b {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != '0' {
			return false
		}
	}
	return true
}
