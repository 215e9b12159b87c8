package trace

import (
	"crypto/rand"
	"encoding/hex"
)

// HeaderTraceparent and HeaderTracestate are the W3C Trace Context headers.
const (
	HeaderTraceparent = "traceparent"
	HeaderTracestate  = "tracestate"
)

// Context is a request's W3C trace context as the gateway forwards it.
type Context struct {
	// TraceID is the 32-hex trace ID, the client's or a new one.
	TraceID string
	// ParentID is the 16-hex span ID of the gateway's span: the parent of the
	// upstream call.
	ParentID string
	// Flags is the 2-hex trace-flags byte.
	Flags string
	// Started is true when the client sent no usable traceparent and the
	// gateway began the trace.
	Started bool
}

// Traceparent renders the header value the gateway sends upstream.
func (c Context) Traceparent() string {
	return "00-" + c.TraceID + "-" + c.ParentID + "-" + c.Flags
}

// ParseTraceparent reads a client's traceparent (version 00 layout; later
// versions are read by their 00 prefix as the spec asks) and returns the
// context for the gateway's own span: same trace ID, new span ID. An absent
// or malformed header starts a new sampled trace.
func ParseTraceparent(h []byte) Context {
	if tid, flags, ok := parseTraceparent(h); ok {
		return Context{TraceID: tid, ParentID: newHex(8), Flags: flags}
	}
	return Context{TraceID: newHex(16), ParentID: newHex(8), Flags: "01", Started: true}
}

func parseTraceparent(h []byte) (traceID, flags string, ok bool) {
	// 00-<32 hex>-<16 hex>-<2 hex>
	if len(h) < 55 || (len(h) > 55 && h[55] != '-') {
		return "", "", false
	}
	if h[2] != '-' || h[35] != '-' || h[52] != '-' {
		return "", "", false
	}
	version := h[0:2]
	if !isLowerHex(version) || string(version) == "ff" || (string(version) == "00" && len(h) != 55) {
		return "", "", false
	}
	tid, pid, fl := h[3:35], h[36:52], h[53:55]
	if !isLowerHex(tid) || !isLowerHex(pid) || !isLowerHex(fl) || allZero(tid) || allZero(pid) {
		return "", "", false
	}
	return string(tid), string(fl), true
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

func newHex(n int) string {
	var b [16]byte
	_, _ = rand.Read(b[:n]) // crypto/rand.Read never fails on Linux (Go ≥1.24 panics instead)
	return hex.EncodeToString(b[:n])
}
