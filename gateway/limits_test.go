package gateway_test

import (
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vega-gateway/vega-gateway/gateway"
	"github.com/vega-gateway/vega-gateway/ollamatest"
)

// TestMaxStreamBytes is F-11's last part: a stream that would relay more
// than gateway.max_stream_bytes ends, before the frame that would pass the
// cap, with a terminal upstream_too_large record; the upstream connection
// is closed so Ollama stops generating.
func TestMaxStreamBytes(t *testing.T) {
	e := startEnv(t, envOptions{fake: ollamatest.Config{Tokens: 200}, gateway: gateway.Config{MaxStreamBytes: 2000}})
	st, _, body := e.do("POST", "/api/chat", `{"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}`,
		map[string]string{"X-Correlation-ID": "f11-stream-bytes"})
	lines := ndjsonLines(t, body)
	last := lines[len(lines)-1]
	if st != 200 || last["code"] != "upstream_too_large" || last["correlation_id"] != "f11-stream-bytes" {
		t.Fatalf("status %d, last line %v", st, last)
	}
	if strings.Contains(string(body), `"done":true`) {
		t.Fatal("a cut stream reported done:true")
	}
	trimmed := strings.TrimSuffix(string(body), "\n")
	frames := trimmed[:strings.LastIndexByte(trimmed, '\n')+1] // all but the terminal record
	if len(frames) > 2000 || len(frames) < 1000 {
		t.Fatalf("%d bytes of frames relayed, want up to the cap of 2000", len(frames))
	}
	e.wantOutcome(t, "f11-stream-bytes", "upstream_too_large")
	waitFor(t, 2*time.Second, "upstream connection closed", func() bool { return e.fake.Stats().ConnsOpen == 0 })
}

// TestShedHoldsNoMemory is F-27's bound: with gateway.max_in_flight
// reached, refused requests are answered at once and keep nothing, so the
// gateway's memory is set by the watermark (each admitted stream costs
// about 16 KiB, docs/BENCHMARKS.md scale), not by how many more arrive.
func TestShedHoldsNoMemory(t *testing.T) {
	const admitted, refused = 40, 400
	e := startEnv(t, envOptions{fake: fakeTokens(3), gateway: gateway.Config{MaxInFlight: admitted}})
	streams := openGatedStreams(t, e, admitted)
	if n := e.gw.InFlight(); n != admitted {
		t.Fatalf("in flight %d, want %d", n, admitted)
	}
	inUse := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapInuse + ms.StackInuse
	}
	before, goroutines := inUse(), runtime.NumGoroutine()
	requestsBefore := e.fake.Stats().Requests
	for i := range refused {
		st, _, body := e.do("POST", "/api/chat", `{"model":"llama3.2","messages":[]}`, nil)
		if st != 503 || errorCode(t, body) != "shed" {
			t.Fatalf("request %d over the watermark: %d %s", i, st, body)
		}
	}
	after := inUse()
	if grew := int64(after) - int64(before); grew > 1<<20 {
		t.Fatalf("heap+stacks grew %d KiB over %d refused requests: shedding must hold nothing", grew>>10, refused)
	}
	if g := runtime.NumGoroutine(); g > goroutines+5 {
		t.Fatalf("goroutines %d -> %d over the refused requests", goroutines, g)
	}
	if n := e.fake.Stats().Requests; n != requestsBefore {
		t.Fatalf("refused requests reached the upstream: %d", n-requestsBefore)
	}
	e.releaseAll(t, streams, 10*time.Second)
	waitFor(t, 2*time.Second, "in-flight count back to 0", func() bool { return e.gw.InFlight() == 0 })
}
