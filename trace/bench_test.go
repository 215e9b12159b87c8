package trace_test

import (
	"strings"
	"testing"

	"github.com/vega-gateway/vega-gateway/trace"
)

// BenchmarkResolve covers the paths of correlation ID handling, each as
// the gateway calls it (Pick over the header's values, then Resolve): a
// valid client ID (kept, one string copy), no ID (a fresh UUIDv4), an
// invalid one (replaced by a UUIDv4), and the header sent twice with an
// invalid first value (the second kept).
func BenchmarkResolve(b *testing.B) {
	valid := []byte("req-2f6c1a0e-7b1d-4c55-9a0b-3f7e2d1c9b8a")
	invalid := []byte("bad id\r\n" + strings.Repeat("x", 32))
	for _, tc := range []struct {
		name               string
		correlation, reqID [][]byte
	}{
		{"valid", [][]byte{valid}, nil},
		{"absent", nil, nil},
		{"invalid", [][]byte{invalid}, nil},
		{"repeated", [][]byte{invalid, valid}, nil},
	} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for range b.N {
				res := trace.Resolve(trace.Pick(tc.correlation), trace.Pick(tc.reqID))
				if res.ID == "" {
					b.Fatal("empty ID")
				}
			}
		})
	}
}

// BenchmarkParseTraceparent is the traceparent half of the correlation
// work: a valid incoming header, and none (fresh IDs are generated).
func BenchmarkParseTraceparent(b *testing.B) {
	for _, tc := range []struct {
		name string
		h    []byte
	}{
		{"valid", []byte("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")},
		{"absent", nil},
	} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for range b.N {
				c := trace.ParseTraceparent(tc.h)
				if c.TraceID[0] == 0 {
					b.Fatal("empty trace ID")
				}
			}
		})
	}
}
