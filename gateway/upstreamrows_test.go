package gateway_test

// Upstream and lifecycle rows of RELIABILITY.md §2 (F-02 … F-45): each test
// asserts what the client sees (status and code, or the terminal record),
// the access line's outcome, and the invariant of the row read from the
// pool's counters or the fake's.

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vega-gateway/vega-gateway/access"
	"github.com/vega-gateway/vega-gateway/gateway"
	"github.com/vega-gateway/vega-gateway/metrics"
	"github.com/vega-gateway/vega-gateway/ollamatest"
	"github.com/vega-gateway/vega-gateway/pool"
)

const rowsChatBody = `{"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}`

func chatWith(model string) string {
	return `{"model":"` + model + `","messages":[{"role":"user","content":"hi"}]}`
}

// wantAPIError checks a gateway-made native error: status, code and the
// correlation ID in the body.
func wantAPIError(t *testing.T, st int, body []byte, status int, code, id string) {
	t.Helper()
	m := decodeJSON(t, body)
	if st != status || m["code"] != code || m["correlation_id"] != id {
		t.Fatalf("got %d %s, want %d %s with correlation_id %s", st, body, status, code, id)
	}
}

// accessLine waits for the one access line of id and returns it.
func (e *env) accessLine(t *testing.T, id string) map[string]any {
	t.Helper()
	var lines []map[string]any
	waitFor(t, 2*time.Second, "access line "+id, func() bool {
		lines = e.logs.accessLines(t, id)
		return len(lines) > 0
	})
	if len(lines) != 1 {
		t.Fatalf("%d access lines for %s: %v", len(lines), id, lines)
	}
	return lines[0]
}

// ndjsonLines splits a body into decoded lines; every line must be JSON.
func ndjsonLines(t *testing.T, body []byte) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSuffix(string(body), "\n"), "\n") {
		if l != "" {
			out = append(out, decodeJSON(t, []byte(l)))
		}
	}
	return out
}

// TestUpstreamResetBeforeRequest is F-02: an upstream that accepts and then
// closes (FIN) or resets (RST) before reading is 502 upstream_reset. A fresh
// connection is never retried; a reused keep-alive one is retried once.
func TestUpstreamResetBeforeRequest(t *testing.T) {
	t.Run("close_on_accept on a fresh connection", func(t *testing.T) {
		e := startEnv(t, envOptions{})
		if err := e.fake.SetConnFault(ollamatest.ConnFaultCloseOnAccept); err != nil {
			t.Fatal(err)
		}
		const id = "f02-fresh-fin"
		st, _, body := e.do("POST", "/api/chat", rowsChatBody, map[string]string{"X-Correlation-ID": id})
		wantAPIError(t, st, body, 502, "upstream_reset", id)
		e.wantOutcome(t, id, "upstream_reset")
		if s := e.pool.Snapshot(); s.Retries != 0 || s.RequestsMade != 1 {
			t.Fatalf("fresh connection retried: retries=%d requests_made=%d", s.Retries, s.RequestsMade)
		}
		if got := e.fake.Stats().ConnsOpened; got != 1 {
			t.Fatalf("fake accepted %d connections, want 1 (no retry)", got)
		}
	})
	// An RST can land before Go's non-blocking connect has completed: the
	// dial then fails ("connect: connection reset by peer"), nothing was
	// sent, and the one retry for a failed dial applies. After the connect,
	// it is a reset of a fresh connection: not retried.
	t.Run("rst_on_accept on a fresh connection", func(t *testing.T) {
		for i := range 5 {
			e := startEnv(t, envOptions{})
			if err := e.fake.SetConnFault(ollamatest.ConnFaultRSTOnAccept); err != nil {
				t.Fatal(err)
			}
			id := fmt.Sprintf("f02-fresh-rst-%d", i)
			st, _, body := e.do("POST", "/api/chat", rowsChatBody, map[string]string{"X-Correlation-ID": id})
			line := e.accessLine(t, id)
			s := e.pool.Snapshot()
			want := map[any]string{"upstream_reset": "upstream_reset", "upstream_unavailable": "upstream_connect_failed"}
			code := decodeJSON(t, body)["code"]
			if want[code] == "" || line["outcome"] != want[code] {
				t.Fatalf("%d %s, outcome %v", st, body, line["outcome"])
			}
			wantAPIError(t, st, body, 502, code.(string), id)
			// At most one retry, and only after a failed dial: never after
			// a connection that was made (ConnectionsOpened counts those).
			if s.Retries > 1 || s.RequestsMade != 1+s.Retries || s.ConnectionsOpened > 1 {
				t.Fatalf("retries=%d requests_made=%d connections_opened=%d", s.Retries, s.RequestsMade, s.ConnectionsOpened)
			}
			if got := e.fake.Stats().Requests; got != 0 {
				t.Fatalf("the fake read %d requests", got)
			}
		}
	})
	t.Run("reused connection is retried once", func(t *testing.T) {
		e := startEnv(t, envOptions{
			fake: ollamatest.Config{IdleTimeout: 100 * time.Millisecond},
			pool: pool.Config{MaxIdleConnDuration: time.Minute},
		})
		if st, _, body := e.do("POST", "/api/chat", chatWith("llama3.2"), nil); st != 200 {
			t.Fatalf("warm-up: %d %s", st, body)
		}
		// The fake closes the pooled connection; the gateway does not know.
		waitFor(t, 2*time.Second, "fake closed the idle connection", func() bool { return e.fake.Stats().ConnsOpen == 0 })
		if err := e.fake.SetConnFault(ollamatest.ConnFaultCloseOnAccept); err != nil {
			t.Fatal(err)
		}
		const id = "f02-reused"
		st, _, body := e.do("POST", "/api/chat", rowsChatBody, map[string]string{"X-Correlation-ID": id})
		wantAPIError(t, st, body, 502, "upstream_reset", id)
		line := e.accessLine(t, id)
		if line["outcome"] != "upstream_reset" || line["retries"] != float64(1) {
			t.Fatalf("access line %v, want outcome upstream_reset with retries 1", line)
		}
		if s := e.pool.Snapshot(); s.Retries != 1 || s.RequestsMade != 3 {
			t.Fatalf("retries=%d requests_made=%d, want 1 and 3 (warm-up, stale, one retry)", s.Retries, s.RequestsMade)
		}
		if got := e.fake.Stats().ConnsOpened; got != 2 {
			t.Fatalf("fake accepted %d connections, want 2 (the pooled one, the retry)", got)
		}
	})
}

// hangingListener returns a loopback address whose connects hang: a
// listening socket with a backlog of 0 that never accepts, filled until the
// kernel drops SYNs (the accept queue overflows), which a client sees as an
// unanswered SYN. It skips the test if the kernel does not behave so.
func hangingListener(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Skipf("raw socket: %v", err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(sa.(*syscall.SockaddrInet4).Port))
	for i := 0; i < 16; i++ {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err != nil {
			var ne net.Error
			if errorsAs(err, &ne) && ne.Timeout() {
				return addr // the queue is full: connects now hang
			}
			t.Fatalf("filling the backlog: %v", err)
		}
		t.Cleanup(func() { c.Close() })
	}
	t.Skip("the kernel kept completing connects to a full accept queue (tcp_abort_on_overflow or a large minimum backlog); cannot produce a hanging connect on loopback")
	return ""
}

// TestConnectHangs is F-03: a connect that is never answered ends at
// upstream.connect_timeout with 502 upstream_unavailable, is not retried,
// and gives back its pool slot.
func TestConnectHangs(t *testing.T) {
	addr := hangingListener(t)
	e := startEnv(t, envOptions{noFake: true, upURL: "http://" + addr,
		upstream: pool.UpstreamConfig{ConnectTimeout: 100 * time.Millisecond},
		pool:     pool.Config{MaxConnections: 1, MaxWait: 5 * time.Second}})
	for i := range 2 { // the second one proves the single slot came back
		id := fmt.Sprintf("f03-%d", i)
		start := time.Now()
		st, _, body := e.do("POST", "/api/chat", rowsChatBody, map[string]string{"X-Correlation-ID": id})
		took := time.Since(start)
		wantAPIError(t, st, body, 502, "upstream_unavailable", id)
		e.wantOutcome(t, id, "upstream_connect_failed")
		if took < 90*time.Millisecond || took > 2*time.Second {
			t.Fatalf("answered after %s; want about connect_timeout (100ms)", took)
		}
	}
	if s := e.pool.Snapshot(); s.Retries != 0 || s.RequestsInFlight != 0 || s.RequestsWaiting != 0 {
		t.Fatalf("retries=%d in_flight=%d waiting=%d, want 0 (a connect timeout is not retried; slot released)", s.Retries, s.RequestsInFlight, s.RequestsWaiting)
	}
}

// TestStallEndsAndClosesUpstream is F-05: N frames arrive whole and in
// order, then the idle clock ends the stream with a terminal
// upstream_idle_timeout record, and the upstream connection is closed.
func TestStallEndsAndClosesUpstream(t *testing.T) {
	const n = 3
	e := startEnv(t, envOptions{upstream: pool.UpstreamConfig{IdleTimeout: 300 * time.Millisecond}})
	const id = "f05-stall"
	st, _, body := e.do("POST", "/api/chat", chatWith(fmt.Sprintf("fault:stall_after=%d", n)), map[string]string{"X-Correlation-ID": id})
	lines := ndjsonLines(t, body)
	if st != 200 || len(lines) != n+1 {
		t.Fatalf("status %d, %d lines, want 200 and %d frames + 1 terminal: %q", st, len(lines), n, body)
	}
	var text strings.Builder
	for _, l := range lines[:n] {
		if l["done"] == true || l["error"] != nil {
			t.Fatalf("frame %v", l)
		}
		text.WriteString(l["message"].(map[string]any)["content"].(string))
	}
	if got, want := text.String(), ollamatest.ReplyText(n); got != want {
		t.Fatalf("frames carry %q, want %q (intact, in order)", got, want)
	}
	if last := lines[n]; last["code"] != "upstream_idle_timeout" || last["correlation_id"] != id {
		t.Fatalf("terminal line %v", last)
	}
	line := e.accessLine(t, id)
	if line["outcome"] != "upstream_idle_timeout" || line["frames_out"] != float64(n) {
		t.Fatalf("access line %v", line)
	}
	waitFor(t, 2*time.Second, "upstream connection closed", func() bool {
		f := e.fake.Stats()
		return f.ConnsOpen == 0 && f.ClientCancelled == 1 && f.InFlight == 0
	})
	if s := e.pool.Snapshot(); s.ConnectionsOpen != 0 || s.RequestsInFlight != 0 {
		t.Fatalf("pool: %d connections open, %d in flight", s.ConnectionsOpen, s.RequestsInFlight)
	}
}

// TestMalformedUpstream is F-10 and F-11: a malformed or oversized upstream
// response is 502 with a code before headers, a terminal record after; the
// connection it came on is never reused.
func TestMalformedUpstream(t *testing.T) {
	e := startEnv(t, envOptions{
		upstream: pool.UpstreamConfig{MaxResponseBytes: 1 << 20},
		gateway:  gateway.Config{MaxFrameBytes: 1 << 20},
	})
	for _, tc := range []struct {
		name, path, body string
		status           int // 200: the failure comes as a terminal record
		code, outcome    string
		pooled           bool // the connection went back to the idle pool
	}{
		{"garbage status line", "/api/chat", chatWith("fault:raw=garbage_status"), 502, "upstream_protocol_error", "upstream_protocol_error", false},
		// fasthttp hands a 101 connection back to its idle pool before relay
		// sees the status; pool.Do closes it right away.
		{"switching protocols", "/api/chat", chatWith("fault:raw=switching_protocols"), 502, "upstream_protocol_error", "upstream_protocol_error", false},
		{"header block over the buffer", "/api/chat", chatWith("fault:raw=huge_header"), 502, "upstream_protocol_error", "upstream_protocol_error", false},
		// A body shorter than its Content-Length, then FIN: the upstream hung
		// up early, which the gateway reports as a reset.
		{"short body", "/api/chat", `{"model":"fault:raw=short_body","stream":false}`, 502, "upstream_reset", "upstream_reset", false},
		{"non-JSON reply on /chat", "/chat", `{"prompt":"hi","model":"fault:raw=not_json"}`, 502, "upstream_protocol_error", "upstream_protocol_error", true},
		{"Content-Length over max_response_bytes", "/api/chat", chatWith("fault:raw=huge_content_length"), 502, "upstream_too_large", "upstream_too_large", false},
		{"bad chunk size", "/api/chat", chatWith("fault:raw=bad_chunk"), 200, "upstream_protocol_error", "upstream_protocol_error", false},
		{"non-JSON stream on /chat", "/chat", `{"prompt":"hi","stream":true,"model":"fault:raw=not_json"}`, 200, "upstream_protocol_error", "upstream_protocol_error", true},
		{"line over max_frame_bytes", "/api/chat", chatWith("fault:huge_line"), 200, "upstream_protocol_error", "upstream_protocol_error", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := "f10-" + strings.NewReplacer(" ", "-", "/", "").Replace(tc.name)
			st, h, body := e.do("POST", tc.path, tc.body, map[string]string{"X-Correlation-ID": id})
			if tc.status != 200 {
				wantAPIError(t, st, body, tc.status, tc.code, id)
				if h.Get("Upgrade") != "" || h.Get("X-Huge") != "" {
					t.Fatalf("upstream headers relayed: %v", h)
				}
			} else {
				lines := ndjsonLines(t, body) // never a partial frame
				last := lines[len(lines)-1]
				if st != 200 || last["code"] != tc.code || last["correlation_id"] != id || strings.Contains(string(body), `"done":true`) {
					t.Fatalf("status %d, last line %v; body %.300q", st, last, body)
				}
				if len(body) > 64<<10 {
					t.Fatalf("%d bytes relayed: part of an oversized frame was forwarded", len(body))
				}
			}
			e.wantOutcome(t, id, tc.outcome)
			if tc.pooled {
				// The HTTP framing was intact, so the connection went back
				// to the idle pool. The fake has
				// closed it; the next request's retry hides that.
				waitFor(t, 2*time.Second, "connection back in the pool", func() bool {
					s := e.pool.Snapshot()
					return s.ConnectionsOpen == 1 && s.ConnectionsIdle == 1
				})
				return
			}
			// Never reused: the gateway closed it (the fake closes after its
			// canned bytes, huge_line keeps sending until the gateway leaves).
			waitFor(t, 2*time.Second, "upstream connection closed", func() bool {
				return e.pool.Snapshot().ConnectionsOpen == 0 && e.fake.Stats().ConnsOpen == 0
			})
		})
	}
	// RFC 9112 §6.3 lets a recipient frame a response carrying both
	// Content-Length and Transfer-Encoding by the latter; fasthttp's
	// response parser does so and drops the length, and keeps no trace of
	// it the gateway could check. So the reply is relayed, framed by TE.
	t.Run("CL and TE together is framed by TE", func(t *testing.T) {
		const id = "f10-cl-and-te"
		st, _, body := e.do("POST", "/api/chat", chatWith("fault:raw=cl_and_te"), map[string]string{"X-Correlation-ID": id})
		if st != 200 || string(body) != "{}" {
			t.Fatalf("%d %q", st, body)
		}
		e.wantOutcome(t, id, "ok")
		// Relayed, but the connection is never reused: pool.Do marks such
		// a response for close.
		waitFor(t, 2*time.Second, "upstream connection closed", func() bool {
			s := e.pool.Snapshot()
			return s.ConnectionsOpen == 0 && s.ConnectionsIdle == 0
		})
	})
}

// TestHopHeadersInAnyCase: the response's hop-by-hop headers, and those its
// Connection header names, are stripped however the upstream spells them.
// The pool keeps upstream header names as sent, so a lower-case one must not
// slip past a comparison with the canonical spelling.
func TestHopHeadersInAnyCase(t *testing.T) {
	e := startEnv(t, envOptions{})
	const id = "hop-lower-case"
	st, h, body := e.do("POST", "/api/chat", chatWith("fault:raw=lowercase_hop"), map[string]string{"X-Correlation-ID": id})
	if st != 200 || string(body) != "{}" {
		t.Fatalf("%d %q", st, body)
	}
	for _, name := range []string{"Keep-Alive", "Proxy-Authenticate", "X-Private"} {
		if v := h.Get(name); v != "" {
			t.Errorf("%s: %q relayed", name, v)
		}
	}
	if h.Get("X-Kept") != "yes" || h.Get("X-Correlation-ID") != id {
		t.Fatalf("end-to-end headers lost: %v", h)
	}
}

// TestSlowReader is F-15: a client reading a few KiB at a time still gets
// the whole stream; the gateway buffers nothing beyond a frame (its heap
// does not grow with what the upstream has to send), so back-pressure
// reaches the upstream, which is still writing while the client dawdles.
func TestSlowReader(t *testing.T) {
	const tokens = 100000 // about 13 MB of NDJSON: more than the socket buffers on the way hold
	e := startEnv(t, envOptions{fake: ollamatest.Config{Tokens: tokens}})
	c, err := net.Dial("tcp", strings.TrimPrefix(e.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	const id = "f15-slow"
	io.WriteString(c, "POST /api/chat HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Correlation-ID: "+id+"\r\nContent-Length: "+itoa(len(rowsChatBody))+"\r\n\r\n"+rowsChatBody)
	// Slow phase: 4 KiB every 10 ms for a second (about 400 KiB/s).
	buf := make([]byte, 4<<10)
	var got strings.Builder
	for range 100 {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := c.Read(buf)
		if err != nil {
			t.Fatalf("slow read: %v", err)
		}
		got.Write(buf[:n])
		time.Sleep(10 * time.Millisecond)
	}
	runtime.GC()
	var during runtime.MemStats
	runtime.ReadMemStats(&during)
	if f := e.fake.Stats(); f.InFlight != 1 {
		t.Fatalf("the fake finished writing while the client had read %d bytes: the gateway buffered the stream", got.Len())
	}
	if grew := int64(during.HeapInuse) - int64(before.HeapInuse); grew > 4<<20 {
		t.Fatalf("heap in use grew by %d bytes during a slow read", grew)
	}
	t.Logf("slow phase: %d bytes read, heap in use %d -> %d", got.Len(), before.HeapInuse, during.HeapInuse)
	// Then read the rest at full speed: the stream went on, complete.
	fast := time.Now()
	defer func() { t.Logf("rest read in %s", time.Since(fast)) }()
	_ = c.SetReadDeadline(time.Now().Add(60 * time.Second))
	rest, err := io.ReadAll(io.LimitReader(c, 64<<20))
	if err != nil && !strings.Contains(string(rest), "0\r\n\r\n") {
		t.Fatalf("rest: %v", err)
	}
	all := got.String() + string(rest)
	t.Logf("%d bytes in all", len(all))
	if !strings.Contains(all, `"done":true`) || !strings.HasSuffix(all, "0\r\n\r\n") {
		t.Fatalf("stream incomplete: ...%q", tail(all, 200))
	}
	line := e.accessLine(t, id)
	if line["outcome"] != "ok" || line["frames_out"] != float64(tokens+1) {
		t.Fatalf("access line %v", line)
	}
}

// TestManyClientsDropAtOnce is F-20: N streaming clients close together;
// every upstream connection is closed and the pool is back to its baseline
// within a second, with exactly one client_closed access line each, and
// the goroutines return to their baseline.
func TestManyClientsDropAtOnce(t *testing.T) {
	const n = 100 // sized for two shared cores
	e := startEnv(t, envOptions{
		fake: ollamatest.Config{TokenDelay: 20 * time.Millisecond},
		pool: pool.Config{MaxConnections: n},
	})
	addr := strings.TrimPrefix(e.url, "http://")
	body := chatWith("fault:infinite")
	baseline := runtime.NumGoroutine()
	conns := make([]net.Conn, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("tcp", addr)
			if err != nil {
				errs <- err
				return
			}
			conns[i] = c
			io.WriteString(c, fmt.Sprintf("POST /api/chat HTTP/1.1\r\nHost: x\r\nX-Correlation-ID: f20-%d\r\nContent-Length: %d\r\n\r\n%s", i, len(body), body))
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
			r := bufio.NewReader(c)
			for { // up to the first frame
				l, err := r.ReadString('\n')
				if err != nil {
					errs <- fmt.Errorf("client %d: %w", i, err)
					return
				}
				if strings.Contains(l, `"message"`) {
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if s := e.pool.Snapshot(); s.RequestsInFlight != n {
		t.Fatalf("%d requests in flight, want %d", s.RequestsInFlight, n)
	}
	for _, c := range conns {
		c.Close()
	}
	start := time.Now()
	waitFor(t, time.Second, "pool and fake back to baseline", func() bool {
		s, f := e.pool.Snapshot(), e.fake.Stats()
		return s.RequestsInFlight == 0 && s.ConnectionsActive == 0 && f.InFlight == 0
	})
	t.Logf("pool at baseline %s after the last close", time.Since(start))
	waitFor(t, 2*time.Second, "every upstream connection closed", func() bool {
		f := e.fake.Stats()
		return f.ConnsOpen == 0 && f.ClientCancelled == n
	})
	if s := e.pool.Snapshot(); s.ClientDisconnects != n {
		t.Fatalf("client_disconnects = %d, want %d", s.ClientDisconnects, n)
	}
	lines := 0
	for _, m := range e.logs.lines(t) {
		if m["message"] != "request" {
			continue
		}
		lines++
		if !strings.HasPrefix(fmt.Sprint(m["correlation_id"]), "f20-") || m["outcome"] != "client_closed" || m["status"] != float64(200) {
			t.Fatalf("access line %v", m)
		}
	}
	if lines != n {
		t.Fatalf("%d access lines, want %d", lines, n)
	}
	// No goroutine left behind (fasthttp's idle workers go after
	// MaxIdleWorkerDuration, 3 s).
	waitFor(t, 10*time.Second, "goroutines back to baseline", func() bool { return runtime.NumGoroutine() <= baseline+10 })
}

// TestPipelinedBehindStream is F-21: a second request pipelined behind a
// running stream is served after the stream ends, authenticated on its own
// (here it carries no key: 401, never forwarded), and logged on its own.
func TestPipelinedBehindStream(t *testing.T) {
	const key = "pipe-key-0123456789abcdef0123456789ab"
	e := startEnv(t, envOptions{
		fake: ollamatest.Config{Tokens: 10, TokenDelay: 20 * time.Millisecond},
		auth: access.Config{APIKeys: []string{key}},
	})
	raw := "POST /api/chat HTTP/1.1\r\nHost: x\r\nX-API-Key: " + key + "\r\nX-Correlation-ID: f21-stream\r\nContent-Length: " + itoa(len(rowsChatBody)) + "\r\n\r\n" + rowsChatBody +
		"GET /api/tags HTTP/1.1\r\nHost: x\r\nX-Correlation-ID: f21-no-key\r\n\r\n" +
		"GET /api/tags HTTP/1.1\r\nHost: x\r\nX-API-Key: " + key + "\r\nX-Correlation-ID: f21-keyed\r\nConnection: close\r\n\r\n"
	resp, closed := rawExchange(t, strings.TrimPrefix(e.url, "http://"), raw)
	done := strings.Index(resp, `"done":true`)
	unauthorized := strings.Index(resp, "HTTP/1.1 401")
	third := strings.LastIndex(resp, "HTTP/1.1 200")
	if !closed || !strings.HasPrefix(resp, "HTTP/1.1 200") || done < 0 || unauthorized < done || third < unauthorized || !strings.Contains(resp[third:], `"models"`) {
		t.Fatalf("want the whole stream, then 401, then 200: %q", resp)
	}
	reqs := e.fake.Requests()
	if len(reqs) != 2 || reqs[1].Path != "/api/tags" || reqs[1].Received.Before(reqs[0].Finished) {
		t.Fatalf("the fake saw %d requests (want the stream and the keyed one, in order): %+v", len(reqs), reqs)
	}
	e.wantOutcome(t, "f21-stream", "ok")
	e.wantOutcome(t, "f21-no-key", "auth_failed")
	e.wantOutcome(t, "f21-keyed", "ok")
}

// hold starts a request that holds a pool slot (the fake never answers)
// and waits until it does.
func hold(t *testing.T, e *env, slots int64) {
	t.Helper()
	go func() {
		c := &http.Client{Timeout: 10 * time.Second}
		if resp, err := c.Post(e.url+"/api/chat", "application/json", strings.NewReader(chatWith("fault:hang"))); err == nil {
			resp.Body.Close()
		}
	}()
	waitFor(t, 2*time.Second, "slot taken", func() bool { return e.pool.Snapshot().RequestsInFlight == slots })
}

// TestAdmissionRefusals is F-22, F-23 and F-35 end to end: a full pool, a
// full queue and a drain each answer 503 with their code and Retry-After,
// log pool_overflow or shutdown_aborted, and never reach the upstream.
func TestAdmissionRefusals(t *testing.T) {
	t.Run("pool exhausted after max_wait", func(t *testing.T) {
		e := startEnv(t, envOptions{pool: pool.Config{MaxConnections: 2, MaxWait: 100 * time.Millisecond}})
		defer e.fake.Close() // ends the held requests
		hold(t, e, 1)
		hold(t, e, 2)
		const id = "f22-exhausted"
		st, h, body := e.do("POST", "/api/chat", rowsChatBody, map[string]string{"X-Correlation-ID": id})
		wantAPIError(t, st, body, 503, "upstream_pool_exhausted", id)
		if h.Get("Retry-After") == "" {
			t.Fatal("no Retry-After")
		}
		line := e.accessLine(t, id)
		if line["outcome"] != "pool_overflow" || line["queue_wait_ms"].(float64) < 90 {
			t.Fatalf("access line %v, want pool_overflow after about 100 ms in the queue", line)
		}
		if f := e.fake.Stats(); f.Requests != 2 || f.PeakInFlight > 2 {
			t.Fatalf("fake saw %d requests, %d at once; pool size is 2", f.Requests, f.PeakInFlight)
		}
	})
	t.Run("queue full is immediate", func(t *testing.T) {
		e := startEnv(t, envOptions{pool: pool.Config{MaxConnections: 1, MaxQueue: -1, MaxWait: 5 * time.Second}})
		defer e.fake.Close()
		hold(t, e, 1)
		const id = "f23-queue-full"
		start := time.Now()
		st, h, body := e.do("POST", "/api/chat", rowsChatBody, map[string]string{"X-Correlation-ID": id})
		wantAPIError(t, st, body, 503, "upstream_queue_full", id)
		if h.Get("Retry-After") == "" || time.Since(start) > 2*time.Second {
			t.Fatalf("Retry-After %q after %s", h.Get("Retry-After"), time.Since(start))
		}
		e.wantOutcome(t, id, "pool_overflow")
		if s, f := e.pool.Snapshot(), e.fake.Stats(); s.QueueRejections != 1 || f.Requests != 1 || f.PeakInFlight > 1 {
			t.Fatalf("queue_rejections=%d, fake requests=%d peak=%d", s.QueueRejections, f.Requests, f.PeakInFlight)
		}
	})
	t.Run("queued request at shutdown", func(t *testing.T) {
		e := startEnv(t, envOptions{pool: pool.Config{MaxConnections: 1, MaxWait: 5 * time.Second}})
		defer e.fake.Close()
		hold(t, e, 1)
		const id = "f35-queued"
		type result struct {
			st   int
			h    http.Header
			body []byte
		}
		res := make(chan result, 1)
		go func() {
			req, _ := http.NewRequest("POST", e.url+"/api/chat", strings.NewReader(rowsChatBody))
			req.Header.Set("X-Correlation-ID", id)
			resp, err := testClient.Do(req)
			if err != nil {
				res <- result{}
				return
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			res <- result{resp.StatusCode, resp.Header, b}
		}()
		waitFor(t, 2*time.Second, "request queued", func() bool { return e.pool.Snapshot().RequestsWaiting == 1 })
		// serve.go's order on SIGTERM: the pool first, then the listener.
		e.pool.Close()
		var r result
		select {
		case r = <-res:
		case <-time.After(2 * time.Second):
			t.Fatal("queued request not answered at once on shutdown")
		}
		wantAPIError(t, r.st, r.body, 503, "shutting_down", id)
		if r.h.Get("Retry-After") == "" {
			t.Fatal("no Retry-After")
		}
		e.wantOutcome(t, id, "shutdown_aborted")
		const late = "f35-new"
		st, _, body := e.do("POST", "/api/chat", rowsChatBody, map[string]string{"X-Correlation-ID": late})
		wantAPIError(t, st, body, 503, "shutting_down", late)
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		go e.gw.Shutdown(ctx)
		waitFor(t, time.Second, "listener closed", func() bool {
			c, err := net.DialTimeout("tcp", strings.TrimPrefix(e.url, "http://"), 100*time.Millisecond)
			if err == nil {
				c.Close()
			}
			return err != nil
		})
		if got := e.fake.Stats().Requests; got != 1 {
			t.Fatalf("fake saw %d requests, want only the held one", got)
		}
	})
}

// TestConnectionFlood is F-25: over gateway.max_client_connections, fasthttp
// answers a new connection with its own 503 and closes it; the stream
// already running is unaffected and the gateway serves again once the
// flood leaves.
func TestConnectionFlood(t *testing.T) {
	const limit, idle = 20, 40
	e := startEnv(t, envOptions{
		fake:    ollamatest.Config{Tokens: 30, TokenDelay: 20 * time.Millisecond},
		gateway: gateway.Config{MaxClientConnections: limit},
	})
	addr := strings.TrimPrefix(e.url, "http://")
	resp, r := e.openStream(t, "/api/chat", rowsChatBody)
	defer resp.Body.Close()
	conns := make([]net.Conn, 0, idle)
	for range idle {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	// Each connection is read at once, for half a second: a refused one
	// gets fasthttp's 503 and EOF, a served one stays silent.
	refusedCh := make(chan bool, idle)
	for _, c := range conns {
		go func() {
			_ = c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
			b, err := io.ReadAll(c)
			if len(b) > 0 && statusOf(string(b)) != "503" {
				t.Errorf("an over-limit connection got %q", b)
			}
			refusedCh <- err == nil || !isTimeout(err)
		}()
	}
	refused := 0
	for range idle {
		if <-refusedCh {
			refused++
		}
	}
	t.Logf("%d of %d idle connections refused", refused, idle)
	if want := idle - (limit - 1); refused < want {
		t.Fatalf("%d of %d idle connections refused, want at least %d", refused, idle, want)
	}
	rest, err := io.ReadAll(r)
	if err != nil || !strings.Contains(string(rest), `"done":true`) {
		t.Fatalf("the running stream was disturbed: %v %q", err, tail(string(rest), 200))
	}
	for _, c := range conns {
		c.Close()
	}
	waitFor(t, 5*time.Second, "serving again", func() bool {
		r, err := http.Get(e.url + "/healthz")
		if err != nil {
			return false
		}
		r.Body.Close()
		return r.StatusCode == 200
	})
}

func isTimeout(err error) bool {
	var ne net.Error
	return errorsAs(err, &ne) && ne.Timeout()
}

// TestHealthyButInferenceFails is F-31: /api/version answers while every
// inference request fails with 500. The upstream stays ready (passive
// failures never eject the only upstream); the failures are visible as
// upstream_http_error outcomes and 5xx counts.
func TestHealthyButInferenceFails(t *testing.T) {
	e := startEnv(t, envOptions{upstream: pool.UpstreamConfig{HealthInterval: 20 * time.Millisecond, UnhealthyAfter: 1}})
	m, err := metrics.New(metrics.Config{}, "test", func() []pool.Snapshot { return []pool.Snapshot{e.pool.Snapshot()} })
	if err != nil {
		t.Fatal(err)
	}
	e.gw.SetObserver(m.Observe) // before any request: the observer is read unlocked
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() { defer close(stopped); e.pool.RunHealth(ctx, nil) }()
	defer func() { cancel(); <-stopped }()
	waitFor(t, 2*time.Second, "ready", e.pool.Ready)
	const failures = 5
	for i := range failures {
		id := fmt.Sprintf("f31-%d", i)
		st, _, body := e.do("POST", "/api/chat", chatWith("fault:fail_status=500"), map[string]string{"X-Correlation-ID": id})
		if st != 500 || !strings.Contains(string(body), "llama runner process has terminated") {
			t.Fatalf("%d %s", st, body)
		}
		e.wantOutcome(t, id, "upstream_http_error")
	}
	probes := e.fake.Stats().Requests
	waitFor(t, 2*time.Second, "more probes", func() bool { return e.fake.Stats().Requests > probes+3 })
	if s := e.pool.Snapshot(); !e.pool.Ready() || s.Health.Down || s.Health.ConsecutiveFailures != 0 {
		t.Fatalf("health after inference failures: %+v", s.Health)
	}
	if got := m.Stats().RequestsByClass["5xx"]; got != failures {
		t.Fatalf("5xx counted %d, want %d", got, failures)
	}
	if st, _, _ := e.do("POST", "/api/chat", rowsChatBody, nil); st != 200 {
		t.Fatalf("a good request after the failures: %d (no fail-fast)", st)
	}
}

// TestUnresolvableUpstream is F-45: an upstream name that does not resolve
// is 502 upstream_unavailable at once. The name has a 64-byte label, which
// Go's resolver refuses before asking any DNS server, so the test stays on
// the machine. A failed lookup is a dial error and is retried once.
func TestUnresolvableUpstream(t *testing.T) {
	host := strings.Repeat("a", 64) + ".invalid"
	if _, err := net.DefaultResolver.LookupHost(context.Background(), host); err == nil {
		t.Skip("the resolver accepted an over-long label")
	}
	e := startEnv(t, envOptions{noFake: true, upURL: "http://" + host + ":11434"})
	const id = "f45-nxdomain"
	start := time.Now()
	st, _, body := e.do("POST", "/api/chat", rowsChatBody, map[string]string{"X-Correlation-ID": id})
	wantAPIError(t, st, body, 502, "upstream_unavailable", id)
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("answered after %s", took)
	}
	line := e.accessLine(t, id)
	if line["outcome"] != "upstream_connect_failed" || line["retries"] != float64(1) {
		t.Fatalf("access line %v", line)
	}
	if s := e.pool.Snapshot(); s.RequestsMade != 2 || s.ConnectionsOpened != 0 {
		t.Fatalf("requests_made=%d connections_opened=%d", s.RequestsMade, s.ConnectionsOpened)
	}
}
