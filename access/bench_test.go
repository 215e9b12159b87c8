package access

import (
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// BenchmarkCheck is the cost of authenticating one request with ten keys
// configured: an API key as X-API-Key and as Bearer (a digest and ten
// constant-time compares), and an Ollama signed request (a map lookup and
// one ed25519 verification).
func BenchmarkCheck(b *testing.B) {
	var plain []string
	for i := range 10 {
		plain = append(plain, fmt.Sprintf("bench-key-%02d-0123456789abcdef0123456789", i))
	}
	line, sign := testOllamaKey(b)
	kr, err := newKeyring(plain, nil, []OllamaKeyConfig{{Name: "laptop", PublicKey: line}}, time.Minute)
	if err != nil {
		b.Fatal(err)
	}
	now := time.Now()
	ts := strconv.FormatInt(now.Unix(), 10)
	for _, tc := range []struct {
		name, header, value, uri string
	}{
		{"x-api-key", HeaderAPIKey, plain[7], "/api/chat"},
		{"bearer", HeaderAuthorization, "Bearer " + plain[7], "/api/chat"},
		{"ollama-signed", HeaderAuthorization, sign("POST,/api/chat?ts=" + ts), "/api/chat?ts=" + ts},
	} {
		b.Run(tc.name, func(b *testing.B) {
			var h fasthttp.RequestHeader
			h.SetMethod("POST")
			h.SetRequestURI(tc.uri)
			h.Set(tc.header, tc.value)
			b.ReportAllocs()
			for b.Loop() {
				if r, _ := kr.check(&h, now); r.Status != OK {
					b.Fatalf("status %v", r.Status)
				}
			}
		})
	}
}
