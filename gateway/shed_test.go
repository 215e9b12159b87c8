package gateway_test

import (
	"bufio"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vega-gateway/vega-gateway/gateway"
)

// TestInFlightWatermark is F-27: with gateway.max_in_flight 2 and two
// streams open, the next request gets 503 shed with Retry-After and never
// reaches the upstream; /healthz still answers; once the streams end the
// gateway serves again.
func TestInFlightWatermark(t *testing.T) {
	e := startEnv(t, envOptions{fake: fakeTokens(3), gateway: gateway.Config{MaxInFlight: 2}})
	gated := `{"model":"fault:gated","messages":[{"role":"user","content":"hi"}]}`
	var streams sync.WaitGroup
	for range 2 {
		resp, err := http.Post(e.url+"/api/chat", "application/json", strings.NewReader(gated))
		if err != nil {
			t.Fatal(err)
		}
		r := bufio.NewReader(resp.Body)
		if _, err := r.ReadString('\n'); err != nil { // frame 1: the stream is under way
			t.Fatalf("first frame: %v", err)
		}
		streams.Add(1)
		go func() {
			defer streams.Done()
			defer resp.Body.Close()
			_, _ = io.Copy(io.Discard, r)
		}()
	}
	if n := e.gw.InFlight(); n != 2 {
		t.Fatalf("in flight %d, want 2", n)
	}

	before := e.fake.Stats().Requests
	for _, tc := range []struct{ name, path, body, id string }{
		{"native", "/api/chat", `{"model":"llama3.2","messages":[]}`, "shed-native"},
		{"openai", "/v1/chat/completions", `{"model":"llama3.2","messages":[]}`, "shed-openai"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, h, body := e.do("POST", tc.path, tc.body, map[string]string{"X-Correlation-ID": tc.id})
			if st != 503 || errorCode(t, body) != "shed" || h.Get("Retry-After") == "" {
				t.Fatalf("status %d Retry-After %q body %s, want 503 shed with Retry-After", st, h.Get("Retry-After"), body)
			}
			e.wantOutcome(t, tc.id, "shed")
		})
	}
	if n := e.fake.Stats().Requests; n != before {
		t.Fatalf("shed requests reached the upstream: %d requests, want %d", n, before)
	}
	if st, _, body := e.do("GET", "/healthz", "", nil); st != 200 {
		t.Fatalf("/healthz while shedding: %d %s", st, body)
	}

	done := make(chan struct{})
	go func() { streams.Wait(); close(done) }()
	deadline := time.After(5 * time.Second)
release:
	for {
		e.fake.ReleaseFrame()
		select {
		case <-done:
			break release
		case <-deadline:
			t.Fatal("streams did not finish")
		case <-time.After(5 * time.Millisecond):
		}
	}
	waitFor(t, 2*time.Second, "in-flight count back to 0", func() bool { return e.gw.InFlight() == 0 })
	if st, _, body := e.do("POST", "/api/chat", `{"model":"llama3.2","stream":false,"messages":[]}`, nil); st != 200 {
		t.Fatalf("after the streams ended: %d %s", st, body)
	}
}
