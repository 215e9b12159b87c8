package gateway_test

import (
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/vega-gateway/vega-gateway/gateway"
	"github.com/vega-gateway/vega-gateway/ollamatest"
	"github.com/vega-gateway/vega-gateway/pool"
)

// TestClientGoneBeforeFirstByte is RELIABILITY F-18: a client that leaves
// while the model loads (no upstream byte yet) gets its upstream
// connection closed within a poll interval or two — long before the load
// ends — so Ollama stops, the slot comes back, and the access line says
// client_closed.
func TestClientGoneBeforeFirstByte(t *testing.T) {
	for _, tc := range []struct{ name, path, body string }{
		{"native stream", "/api/chat", `{"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}`},
		{"native reply", "/api/generate", `{"model":"llama3.2","prompt":"hi","stream":false}`},
		{"openai", "/v1/chat/completions", `{"model":"llama3.2","messages":[{"role":"user","content":"hi"}],"stream":true}`},
		{"vega chat", "/chat", `{"prompt":"hi"}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := startEnv(t, envOptions{
				fake:     ollamatest.Config{LoadDelay: 5 * time.Second},
				upstream: pool.UpstreamConfig{FirstByteTimeout: 30 * time.Second},
			})
			// A first call leaves an idle keep-alive connection, so the
			// watched request goes out on a reused one: the case in which
			// Do may retry a silent failure — which this must never be.
			if status, _, body := e.do("GET", "/api/tags", "", nil); status != 200 {
				t.Fatalf("warm-up: %d %s", status, body)
			}
			c, err := net.Dial("tcp", e.url[len("http://"):])
			if err != nil {
				t.Fatal(err)
			}
			id := "gone-" + tc.name[:3]
			fmt.Fprintf(c, "POST %s HTTP/1.1\r\nHost: x\r\nX-Correlation-ID: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
				tc.path, id, len(tc.body), tc.body)
			waitFor(t, 2*time.Second, "upstream call in flight", func() bool { return e.pool.Stats().InFlight.Load() == 1 })
			time.Sleep(30 * time.Millisecond) // the request is now waiting on the load
			left := time.Now()
			c.Close()
			waitFor(t, 2*time.Second, "upstream connection closed", func() bool { return e.fake.Stats().ClientCancelled == 1 })
			if d := time.Since(left); d > time.Second {
				t.Errorf("upstream closed %v after the client left; want well before the 5 s load ends", d)
			} else {
				t.Logf("upstream closed %v after the client left", d.Round(time.Millisecond))
			}
			waitFor(t, time.Second, "slot released", func() bool { return e.pool.Stats().InFlight.Load() == 0 })
			e.wantOutcome(t, id, "client_closed")
			if n := e.pool.Stats().ClientDisconnects.Load(); n != 1 {
				t.Errorf("pool client disconnects = %d, want 1", n)
			}
			if n := e.pool.Stats().Retries.Load(); n != 0 {
				t.Errorf("pool retries = %d, want 0: a request whose client left is never sent again", n)
			}
			if n := e.pool.Stats().RequestsMade.Load(); n != 2 {
				t.Errorf("upstream requests = %d, want 2 (warm-up and the one the client left)", n)
			}
			if n := e.pool.Stats().Errors.Load(); n != 0 {
				t.Errorf("pool errors = %d, want 0: a client leaving is not an upstream error", n)
			}
		})
	}
}

// TestSlowFirstByteStillServed checks the other side of F-18's polling: a
// client that stays through a long wait for the first byte is served, and
// the first-byte clock still runs from when the request was sent, however
// many polls happen meanwhile.
func TestSlowFirstByteStillServed(t *testing.T) {
	e := startEnv(t, envOptions{
		fake:     ollamatest.Config{LoadDelay: 300 * time.Millisecond},
		upstream: pool.UpstreamConfig{FirstByteTimeout: 5 * time.Second},
	})
	status, _, body := e.do("POST", "/api/generate", `{"model":"llama3.2","prompt":"hi","stream":false}`, nil)
	if status != 200 {
		t.Fatalf("status %d: %s", status, body)
	}
	if m := decodeJSON(t, body); m["done"] != true {
		t.Fatalf("reply not done: %s", body)
	}

	e = startEnv(t, envOptions{
		fake:     ollamatest.Config{LoadDelay: 5 * time.Second},
		upstream: pool.UpstreamConfig{FirstByteTimeout: 250 * time.Millisecond},
	})
	start := time.Now()
	status, _, body = e.do("POST", "/api/generate", `{"model":"llama3.2","prompt":"hi","stream":false}`, map[string]string{"X-Correlation-ID": "slow-first-byte"})
	if status != 504 || decodeJSON(t, body)["code"] == nil {
		t.Fatalf("status %d body %s, want 504 upstream_timeout", status, body)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("first-byte timeout of 250 ms took %v: polling must not restart the clock", d)
	}
	e.wantOutcome(t, "slow-first-byte", "upstream_timeout")
}

// TestClientGoneAfterReadTimeout is F-18 for a wait longer than
// gateway.read_timeout: the read deadline fasthttp armed for the request
// has passed by then, which must not blind the check (a poll of a socket
// whose read deadline has passed fails before it looks).
func TestClientGoneAfterReadTimeout(t *testing.T) {
	e := startEnv(t, envOptions{
		gateway:  gateway.Config{ReadTimeout: 200 * time.Millisecond},
		fake:     ollamatest.Config{LoadDelay: 5 * time.Second},
		upstream: pool.UpstreamConfig{FirstByteTimeout: 30 * time.Second},
	})
	c, err := net.Dial("tcp", e.url[len("http://"):])
	if err != nil {
		t.Fatal(err)
	}
	body := `{"model":"llama3.2","prompt":"hi","stream":false}`
	fmt.Fprintf(c, "POST /api/generate HTTP/1.1\r\nHost: x\r\nX-Correlation-ID: gone-late\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	waitFor(t, 2*time.Second, "upstream call in flight", func() bool { return e.pool.Stats().InFlight.Load() == 1 })
	time.Sleep(500 * time.Millisecond) // past read_timeout, still loading
	left := time.Now()
	c.Close()
	waitFor(t, 2*time.Second, "upstream connection closed", func() bool { return e.fake.Stats().ClientCancelled == 1 })
	t.Logf("upstream closed %v after the client left", time.Since(left).Round(time.Millisecond))
	e.wantOutcome(t, "gone-late", "client_closed")
}
