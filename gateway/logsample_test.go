package gateway_test

import (
	"sync"
	"testing"
	"time"

	"github.com/vega-gateway/vega-gateway/access"
)

// TestAuthFailureLogSampling is F-43: a burst of wrong keys is answered
// 401 every time, but at most auth.failure_log_lines_per_second access
// lines are written per second; the rest are counted, and every other line
// (a good key's) is still written.
func TestAuthFailureLogSampling(t *testing.T) {
	const key = "sample-key-0123456789abcdef0123456789"
	for _, tc := range []struct {
		name         string
		limit, burst int
	}{
		{"sampled", 5, 60},
		{"zero logs every line", 0, 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := startEnv(t, envOptions{auth: access.Config{APIKeys: []string{key}, FailureLogLinesPerSecond: tc.limit}})
			bad := map[string]string{"X-API-Key": "guess"}
			statuses := make(chan int, tc.burst)
			start := time.Now()
			var wg sync.WaitGroup
			const workers = 4
			for w := range workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := w; i < tc.burst; i += workers {
						st, _, _ := e.do("GET", "/api/tags", "", bad)
						statuses <- st
					}
				}()
			}
			wg.Wait()
			end := time.Now()
			close(statuses)
			for st := range statuses {
				if st != 401 {
					t.Fatalf("status %d, want every answer 401", st)
				}
			}
			if st, _, _ := e.do("GET", "/api/tags", "", map[string]string{"X-API-Key": key, "X-Correlation-ID": "good-1"}); st != 200 {
				t.Fatalf("good key: status %d", st)
			}
			e.wantOutcome(t, "good-1", "ok")

			logged := 0
			for _, m := range e.logs.lines(t) {
				if m["message"] == "request" && m["outcome"] == "auth_failed" {
					logged++
				}
			}
			suppressed := e.gw.SuppressedLogLines()
			if int64(logged)+suppressed != int64(tc.burst) {
				t.Fatalf("logged %d + suppressed %d, want %d", logged, suppressed, tc.burst)
			}
			if tc.limit == 0 {
				if suppressed != 0 {
					t.Fatalf("suppressed %d with sampling off", suppressed)
				}
				return
			}
			// Fixed one-second windows: the burst may straddle a boundary.
			windows := int(end.Unix()-start.Unix()) + 1
			if logged < tc.limit || logged > tc.limit*windows {
				t.Fatalf("logged %d lines over %d second(s), want %d..%d", logged, windows, tc.limit, tc.limit*windows)
			}
		})
	}
}
