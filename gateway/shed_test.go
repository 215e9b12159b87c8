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
	streams := openGatedStreams(t, e, 2)
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

	e.releaseAll(t, streams, 5*time.Second)
	waitFor(t, 2*time.Second, "in-flight count back to 0", func() bool { return e.gw.InFlight() == 0 })
	if st, _, body := e.do("POST", "/api/chat", `{"model":"llama3.2","stream":false,"messages":[]}`, nil); st != 200 {
		t.Fatalf("after the streams ended: %d %s", st, body)
	}
}

// openGatedStreams opens n streams of the fake's gated model and reads each
// one's first frame, so all n are under way; they drain in the background
// as the fake is given frames (releaseAll).
func openGatedStreams(t *testing.T, e *env, n int) *sync.WaitGroup {
	t.Helper()
	var streams sync.WaitGroup
	for range n {
		resp, err := http.Post(e.url+"/api/chat", "application/json",
			strings.NewReader(`{"model":"fault:gated","messages":[{"role":"user","content":"hi"}]}`))
		if err != nil {
			t.Fatal(err)
		}
		r := bufio.NewReader(resp.Body)
		if _, err := r.ReadString('\n'); err != nil {
			t.Fatalf("first frame: %v", err)
		}
		streams.Add(1)
		go func() {
			defer streams.Done()
			defer resp.Body.Close()
			_, _ = io.Copy(io.Discard, r)
		}()
	}
	return &streams
}

// releaseAll gives the fake's gated streams frames until every one of
// streams has ended, for at most d.
func (e *env) releaseAll(t *testing.T, streams *sync.WaitGroup, d time.Duration) {
	t.Helper()
	done := make(chan struct{})
	go func() { streams.Wait(); close(done) }()
	deadline := time.After(d)
	for {
		e.fake.ReleaseFrame()
		select {
		case <-done:
			return
		case <-deadline:
			t.Fatal("gated streams did not finish")
		case <-time.After(time.Millisecond):
		}
	}
}
