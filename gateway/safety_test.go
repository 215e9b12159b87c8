package gateway_test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vega-gateway/vega-gateway/access"
	"github.com/vega-gateway/vega-gateway/gateway"
	"github.com/vega-gateway/vega-gateway/ollamatest"
	"github.com/vega-gateway/vega-gateway/pool"
)

// rawExchange writes raw bytes to the gateway and reads until the server
// closes or 2 s pass. It reports the response text and whether the
// connection was closed by the server.
func rawExchange(t *testing.T, addr, raw string) (string, bool) {
	t.Helper()
	c := dialAndWrite(t, addr, raw, 2*time.Second)
	defer c.Close()
	b, err := io.ReadAll(c)
	// EOF or a reset (the server closed with our unread bytes pending):
	// either way the server closed; a timeout means it kept it open.
	closed := err == nil || errors.Is(err, syscall.ECONNRESET)
	return string(b), closed
}

// dialAndWrite opens a connection to addr, writes raw in one write and
// sets a read deadline d from now; the caller closes the connection.
func dialAndWrite(t testing.TB, addr, raw string, d time.Duration) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(c, raw); err != nil {
		c.Close()
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(d))
	return c
}

func statusOf(resp string) string {
	line, _, _ := strings.Cut(resp, "\r\n")
	if f := strings.Fields(line); len(f) > 1 {
		return f[1]
	}
	return ""
}

func TestFramingAndSmuggling(t *testing.T) {
	e := startEnv(t, envOptions{})
	addr := strings.TrimPrefix(e.url, "http://")
	body := `{"model":"llama3.2","stream":false,"messages":[{"role":"user","content":"hi"}]}`
	for _, tc := range []struct {
		name, raw, status string
	}{
		{"CL and TE", "POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", "411"},
		{"TE and CL", "POST /api/chat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n5\r\nhello\r\n0\r\n\r\n", "411"},
		{"CL and TE on the blob route", "POST /api/blobs/sha256:x HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", "400"},
		{"TE and CL on the blob route", "POST /api/blobs/sha256:x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n5\r\nhello\r\n0\r\n\r\n", "400"},
		{"chunked body on inference route", "POST /chat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", "411"},
		{"two content lengths", "POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nhello", "400"},
		{"bad content length", "POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 21000000000000000000\r\n\r\n", "400"},
		// A blob body streams: it is authorised before its framing is read
		// (TestRequestFraming's B-25 rows read it with a key).
		{"bad chunk size", "POST /api/blobs/sha256:x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", "403"},
		{"space before colon", "POST /api/chat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n", "400"},
		{"unknown transfer encoding", "POST /api/chat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "400"},
		{"header with control byte", "GET /api/tags HTTP/1.1\r\nHost: x\r\nX-Correlation-ID: a\x00b\r\n\r\n", "400"},
		{"two hosts", "GET /api/tags HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", "400"},
		{"request line over the header buffer", "GET /api/tags?" + strings.Repeat("a", 20000) + " HTTP/1.1\r\nHost: x\r\n\r\n", "431"},
		{"headers over the buffer", "GET /api/tags HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", 20000) + "\r\n\r\n", "431"},
		{"backslash path", "GET /api\\tags HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "400"},
		{"NUL in path", "GET /api/tags%00 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "400"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := e.fake.Stats().Requests
			resp, closed := rawExchange(t, addr, tc.raw)
			if got := statusOf(resp); got != tc.status {
				t.Fatalf("status %q, want %s: %q", got, tc.status, resp)
			}
			if !closed && !strings.Contains(tc.name, "path") {
				t.Fatalf("connection left open after a framing error: %q", resp)
			}
			if !strings.Contains(resp, "X-Correlation-Id") && !strings.Contains(resp, "X-Correlation-ID") {
				t.Fatalf("no correlation ID: %q", resp)
			}
			if e.fake.Stats().Requests != before {
				t.Fatal("the bad request reached the upstream")
			}
		})
	}
	t.Run("pipelined request authenticates on its own", func(t *testing.T) {
		k := startEnv(t, envOptions{auth: access.Config{APIKeys: []string{"pipe-key-0123456789abcdef0123456789"}}})
		raw := "GET /api/tags HTTP/1.1\r\nHost: x\r\nX-API-Key: pipe-key-0123456789abcdef0123456789\r\n\r\n" +
			"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: " + itoa(len(body)) + "\r\nConnection: close\r\n\r\n" + body
		resp, _ := rawExchange(t, strings.TrimPrefix(k.url, "http://"), raw)
		if strings.Count(resp, "HTTP/1.1 200") != 1 || strings.Count(resp, "HTTP/1.1 401") != 1 {
			t.Fatalf("want one 200 and one 401: %q", resp)
		}
		if k.fake.Stats().Requests != 1 {
			t.Fatalf("fake saw %d requests", k.fake.Stats().Requests)
		}
	})
}

func itoa(n int) string { return strings.TrimSpace(strings.Repeat(" ", 0) + fmtInt(n)) }

func fmtInt(n int) string {
	if n == 0 {
		return "0"
	}
	var b []byte
	for ; n > 0; n /= 10 {
		b = append([]byte{byte('0' + n%10)}, b...)
	}
	return string(b)
}

func TestClocks(t *testing.T) {
	t.Run("slow-loris request read", func(t *testing.T) {
		e := startEnv(t, envOptions{gateway: gateway.Config{ReadTimeout: 200 * time.Millisecond}})
		c, err := net.Dial("tcp", strings.TrimPrefix(e.url, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		io.WriteString(c, "POST /chat HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"pro")
		start := time.Now()
		_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
		b, _ := io.ReadAll(c)
		if statusOf(string(b)) != "408" || time.Since(start) > 2*time.Second {
			t.Fatalf("after %s: %q", time.Since(start), b)
		}
	})
	t.Run("idle keep-alive connection", func(t *testing.T) {
		// keepalive_timeout closes a connection idle that long, not one in
		// use: the read deadline is re-armed lazily (readahead.go), so the
		// idle clock runs 7/8 of the setting to all of it from the last
		// request, never from the first.
		const keepAlive = 400 * time.Millisecond
		e := startEnv(t, envOptions{gateway: gateway.Config{KeepAliveTimeout: keepAlive}})
		c, err := net.Dial("tcp", strings.TrimPrefix(e.url, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		br := bufio.NewReader(c)
		ask := func() {
			t.Helper()
			if _, err := io.WriteString(c, tagsRequest); err != nil {
				t.Fatal(err)
			}
			_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("request on a kept-alive connection: %v", err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		// Busy for longer than the timeout, with requests close enough
		// together (20 ms, under an eighth of it) that most keep the
		// deadline already armed.
		for i := range 30 {
			if i > 0 {
				time.Sleep(20 * time.Millisecond)
			}
			ask()
		}
		idleFrom := time.Now()
		_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
		if _, err := br.ReadByte(); err != io.EOF {
			t.Fatalf("idle connection: %v, want it closed (EOF)", err)
		}
		idle := time.Since(idleFrom)
		t.Logf("closed after %v idle", idle.Round(time.Millisecond))
		if idle < keepAlive*7/8-20*time.Millisecond || idle > 2*time.Second {
			t.Fatalf("closed after %v idle, want 7/8 of %v to about all of it", idle, keepAlive)
		}
	})
	t.Run("max stream duration", func(t *testing.T) {
		e := startEnv(t, envOptions{
			fake:    ollamatest.Config{TokenDelay: 20 * time.Millisecond},
			gateway: gateway.Config{MaxStreamDuration: 300 * time.Millisecond},
		})
		st, _, body := e.do("POST", "/api/chat", `{"model":"fault:infinite","messages":[{"role":"user","content":"hi"}]}`, nil)
		lines := strings.Split(strings.TrimSpace(string(body)), "\n")
		last := decodeJSON(t, []byte(lines[len(lines)-1]))
		if st != 200 || len(lines) < 3 || last["code"] != "max_duration" {
			t.Fatalf("status %d, %d lines, last %v", st, len(lines), last)
		}
		waitFor(t, 2*time.Second, "upstream closed", func() bool { return e.fake.Stats().ConnsOpen == 0 })
	})
	t.Run("trickle is not cut by the idle clock", func(t *testing.T) {
		e := startEnv(t, envOptions{
			fake:     ollamatest.Config{TokenDelay: 50 * time.Millisecond},
			upstream: pool.UpstreamConfig{IdleTimeout: 200 * time.Millisecond},
			gateway:  gateway.Config{MaxStreamDuration: 600 * time.Millisecond},
		})
		_, _, body := e.do("POST", "/api/chat", `{"model":"fault:trickle","messages":[{"role":"user","content":"hi"}]}`, nil)
		if !strings.Contains(string(body), `"code":"max_duration"`) {
			t.Fatalf("want max_duration (not idle timeout): %q", body)
		}
	})
	t.Run("client that stops reading", func(t *testing.T) {
		e := startEnv(t, envOptions{
			fake:    ollamatest.Config{Tokens: 1 << 20},
			gateway: gateway.Config{WriteIdleTimeout: 200 * time.Millisecond},
		})
		c, err := net.Dial("tcp", strings.TrimPrefix(e.url, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.(*net.TCPConn).SetReadBuffer(4096)
		b := `{"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}`
		io.WriteString(c, "POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: "+itoa(len(b))+"\r\n\r\n"+b)
		// Never read: the gateway must give up and free the upstream.
		waitFor(t, 10*time.Second, "upstream freed", func() bool {
			s := e.pool.Snapshot()
			return s.RequestsInFlight == 0 && e.fake.Stats().ConnsOpen == 0
		})
	})
}

func TestStaleKeepAliveIsRetriedOnce(t *testing.T) {
	e := startEnv(t, envOptions{
		fake: ollamatest.Config{IdleTimeout: 100 * time.Millisecond},
		pool: pool.Config{MaxIdleConnDuration: time.Minute},
	})
	for i := 0; i < 3; i++ {
		st, _, body := e.do("POST", "/api/chat", `{"model":"llama3.2","stream":false,"messages":[{"role":"user","content":"hi"}]}`, nil)
		if st != 200 {
			t.Fatalf("request %d: %d %s", i, st, body)
		}
		time.Sleep(250 * time.Millisecond) // the fake closes the idle connection
	}
	if s := e.pool.Snapshot(); s.Errors != 0 {
		t.Fatalf("pool errors %d (retries %d)", s.Errors, s.Retries)
	}
}

func TestPanicsAreContained(t *testing.T) {
	e := startEnv(t, envOptions{})
	where := make(chan string, 1)
	gateway.SetFaultHook(e.gw, func(w string) {
		select {
		case target := <-where:
			if target == w {
				panic("injected fault in " + w)
			}
			where <- target
		default:
		}
	})
	where <- "handler"
	st, _, body := e.do("GET", "/api/tags", "", nil)
	if st != 500 || decodeJSON(t, body)["code"] != "internal_error" || strings.Contains(string(body), "injected") {
		t.Fatalf("handler panic: %d %s", st, body)
	}
	where <- "stream"
	st, _, body = e.do("POST", "/api/chat", `{"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}`, nil)
	if st != 200 || !strings.Contains(string(body), `"code":"internal_error"`) || strings.Contains(string(body), `"done":true`) {
		t.Fatalf("stream panic: %d %q", st, body)
	}
	if st, _, _ := e.do("GET", "/api/tags", "", nil); st != 200 {
		t.Fatalf("still serving? %d", st)
	}
	if e.gw.Panics() != 2 || !strings.Contains(e.logs.String(), "goroutine") {
		t.Fatalf("panics=%d; stack logged=%v", e.gw.Panics(), strings.Contains(e.logs.String(), "goroutine"))
	}
}

func TestDrain(t *testing.T) {
	e := startEnv(t, envOptions{fake: ollamatest.Config{Tokens: 1000, TokenDelay: 20 * time.Millisecond}})
	resp, r := e.openStream(t, "/v1/chat/completions", `{"model":"llama3.2","stream":true,"messages":[{"role":"user","content":"hi"}]}`)
	defer resp.Body.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- e.gw.Shutdown(ctx) }()
	rest, _ := io.ReadAll(r)
	if strings.Contains(string(rest), "[DONE]") || !strings.Contains(string(rest), `"code":"shutting_down"`) {
		t.Fatalf("drained stream did not end with shutting_down: ...%q", tail(string(rest), 300))
	}
	if err := <-done; err == nil {
		t.Fatal("Shutdown reported a clean drain although a stream was aborted")
	}
	waitFor(t, 2*time.Second, "upstream closed", func() bool { return e.fake.Stats().ConnsOpen == 0 })
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// TestSecretsNeverLeak plants a distinctive key and prompt, drives error
// paths, and fails if either shows up in any log line or response.
func TestSecretsNeverLeak(t *testing.T) {
	key := "canary-key-" + ollamatest.ReplyText(1) + "-9f8e7d6c5b4a39281706f5e4d3c2b1a0"
	key = strings.ReplaceAll(key, " ", "")
	const prompt = "canary-prompt-5b2c9e1f7a"
	e := startEnv(t, envOptions{auth: access.Config{APIKeys: []string{key}}, upstream: pool.UpstreamConfig{FirstByteTimeout: 200 * time.Millisecond}})
	var bodies strings.Builder
	add := func(_ int, h http.Header, b []byte) {
		bodies.Write(b)
		for k, v := range h {
			bodies.WriteString(k + ": " + strings.Join(v, ",") + "\n")
		}
	}
	good := map[string]string{"X-API-Key": key}
	add(e.do("POST", "/chat", `{"prompt":"`+prompt+`"}`, good))
	add(e.do("POST", "/chat", `{"prompt":"`+prompt+`","bogus":1}`, good))
	add(e.do("POST", "/chat", `{"prompt":"`+prompt+`"`, good))
	add(e.do("POST", "/chat", `{"prompt":"`+prompt+`","model":"fault:hang"}`, good))
	add(e.do("POST", "/chat", `{"prompt":"`+prompt+`","model":"fault:fail_status=500"}`, good))
	add(e.do("POST", "/api/chat", `{"model":"fault:die_after=1","messages":[{"role":"user","content":"`+prompt+`"}]}`, good))
	add(e.do("GET", "/api/tags", "", map[string]string{"X-API-Key": key + "x"}))
	add(e.do("GET", "/api/tags", "", map[string]string{"Authorization": "Bearer " + key, "X-API-Key": "other"}))
	add(e.do("GET", "/api/tags?api_key="+url.QueryEscape(key), "", nil))
	resp, _ := rawExchange(t, strings.TrimPrefix(e.url, "http://"), "GET /api/tags HTTP/1.1\r\nHost: x\r\nX-API-Key: "+key+"\r\nX-Bad: a\x01b\r\n\r\n")
	bodies.WriteString(resp)
	resp, _ = rawExchange(t, strings.TrimPrefix(e.url, "http://"), "GET /api/tags HTTP/1.1\r\nHost: x\r\nX-API-Key: "+key+"\r\nX-Big: "+strings.Repeat("b", 20000)+"\r\n\r\n")
	bodies.WriteString(resp)
	time.Sleep(100 * time.Millisecond)
	all := e.logs.String() + bodies.String()
	for _, secret := range []string{key, base64.StdEncoding.EncodeToString([]byte(key)), url.QueryEscape(key), prompt} {
		if strings.Contains(all, secret) {
			i := strings.Index(all, secret)
			t.Fatalf("secret %q leaked near: %q", secret[:12], all[max(0, i-100):i])
		}
	}
}

func TestKeysFileReload(t *testing.T) {
	dir := t.TempDir()
	path := dir + "/keys.yaml"
	const oldKey, newKey = "old-key-0123456789abcdef0123456789ab", "new-key-0123456789abcdef0123456789ab"
	write := func(s string) {
		if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("- name: alice\n  key: " + oldKey + "\n")
	e := startEnv(t, envOptions{auth: access.Config{KeysFile: path}, fake: ollamatest.Config{Tokens: 50, TokenDelay: 10 * time.Millisecond}})
	auth := func(k string) map[string]string { return map[string]string{"X-API-Key": k} }
	if st, _, _ := e.do("GET", "/api/tags", "", auth(oldKey)); st != 200 {
		t.Fatalf("old key before reload: %d", st)
	}
	// A stream opened before the reload finishes after it.
	resp, err := http.DefaultClient.Do(mustRequest(t, "POST", e.url+"/api/chat", `{"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}`, oldKey))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()

	write(`[{"name":"bob","sha256":"` + sha256Hex(newKey) + `","scopes":["inference","models:read"]}]`)
	if err := e.gw.ReloadKeys(); err != nil {
		t.Fatal(err)
	}
	if st, _, _ := e.do("GET", "/api/tags", "", auth(oldKey)); st != 401 {
		t.Fatalf("removed key after reload: %d", st)
	}
	if st, _, _ := e.do("GET", "/api/tags", "", auth(newKey)); st != 200 {
		t.Fatalf("new key after reload: %d", st)
	}
	body, _ := io.ReadAll(resp.Body)
	if !strings.Contains(string(body), `"done":true`) {
		t.Fatalf("open stream cut by the reload: %q", tail(string(body), 200))
	}
	write("- name: broken\n  scopes: [everything]\n")
	if err := e.gw.ReloadKeys(); err == nil || strings.Contains(err.Error(), newKey) {
		t.Fatalf("bad file: %v", err)
	}
	if st, _, _ := e.do("GET", "/api/tags", "", auth(newKey)); st != 200 {
		t.Fatalf("a failed reload must keep the previous keys: %d", st)
	}
}

func sha256Hex(s string) string {
	d := sha256.Sum256([]byte(s))
	return hex.EncodeToString(d[:])
}

func TestExpectContinue(t *testing.T) {
	e := startEnv(t, envOptions{})
	addr := strings.TrimPrefix(e.url, "http://")
	resp, _ := rawExchange(t, addr, "POST /chat HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\nExpect: 100-continue\r\n\r\n")
	if strings.Contains(resp, "100 Continue") || statusOf(resp) != "413" {
		t.Fatalf("oversized Expect: %q", resp)
	}
	body := `{"prompt":"hi"}`
	resp, _ = rawExchange(t, addr, "POST /chat HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: "+itoa(len(body))+"\r\n\r\n"+body)
	if !strings.Contains(resp, "200 OK") {
		t.Fatalf("small /chat: %q", resp)
	}
}

func TestModelAllowlist(t *testing.T) {
	e := startEnv(t, envOptions{gateway: gateway.Config{ModelAllowlist: []string{"llama3.2"}}})
	for _, tc := range []struct {
		name, path, body string
		status           int
	}{
		{"allowed", "/api/chat", `{"model":"llama3.2:latest","stream":false,"messages":[{"role":"user","content":"hi"}]}`, 200},
		{"other model", "/api/chat", `{"model":"qwen2.5:0.5b","stream":false,"messages":[]}`, 403},
		{"cloud model", "/v1/chat/completions", `{"model":"gpt-oss:120b-cloud","messages":[]}`, 403},
		{"duplicate key trick", "/api/chat", `{"model":"llama3.2","model":"qwen2.5:0.5b","messages":[]}`, 403},
		{"case trick", "/api/generate", `{"model":"llama3.2","MODEL":"qwen2.5:0.5b","prompt":"x"}`, 403},
		{"chat default model", "/chat", `{"prompt":"hi"}`, 200},
		{"chat other model", "/chat", `{"prompt":"hi","model":"qwen2.5:0.5b"}`, 403},
		{"reads are not limited", "/api/show", `{"model":"qwen2.5:0.5b"}`, 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, _, body := e.do("POST", tc.path, tc.body, nil)
			if st != tc.status {
				t.Fatalf("status %d, want %d: %s", st, tc.status, body)
			}
			if st == 403 && !strings.Contains(string(body), "model_not_allowed") {
				t.Fatalf("body %s", body)
			}
		})
	}
}

func TestUpstreamFaultsPassThrough(t *testing.T) {
	e := startEnv(t, envOptions{upstream: pool.UpstreamConfig{MaxResponseBytes: 1 << 20}})
	chat := func(model string) string {
		return `{"model":"` + model + `","messages":[{"role":"user","content":"hi"}]}`
	}
	t.Run("503 busy passes through on native, maps on /chat", func(t *testing.T) {
		st, h, body := e.do("POST", "/api/chat", chat("fault:fail_status=503"), nil)
		if st != 503 || !strings.Contains(string(body), "server busy") || h.Get("X-Correlation-ID") == "" {
			t.Fatalf("native: %d %s", st, body)
		}
		st, h, body = e.do("POST", "/chat", `{"prompt":"hi","model":"fault:fail_status=503"}`, nil)
		if st != 503 || decodeJSON(t, body)["code"] != "upstream_busy" || h.Get("Retry-After") == "" {
			t.Fatalf("/chat: %d %s", st, body)
		}
		st, _, body = e.do("POST", "/chat", `{"prompt":"hi","model":"fault:fail_status=500"}`, nil)
		if st != 502 || decodeJSON(t, body)["code"] != "upstream_error" {
			t.Fatalf("/chat 500: %d %s", st, body)
		}
	})
	t.Run("Ollama's own mid-stream error line is forwarded once", func(t *testing.T) {
		_, _, body := e.do("POST", "/api/chat", chat("fault:error_after=2"), nil)
		lines := strings.Split(strings.TrimSpace(string(body)), "\n")
		last := decodeJSON(t, []byte(lines[len(lines)-1]))
		if last["error"] == nil || strings.Count(string(body), `"error"`) != 1 || strings.Contains(string(body), `"done":true`) {
			t.Fatalf("body %q", body)
		}
	})
	// (cl_and_te is not here: fasthttp's client frames such a response by
	// Transfer-Encoding, as RFC 9112 §6.3 allows, and closes the connection.)
	for _, raw := range []string{"garbage_status", "switching_protocols", "short_body"} {
		t.Run("malformed upstream "+raw, func(t *testing.T) {
			st, _, body := e.do("POST", "/api/chat", chat("fault:raw="+raw), nil)
			if st != 502 {
				t.Fatalf("status %d: %q", st, body)
			}
		})
	}
	t.Run("connection reset on accept", func(t *testing.T) {
		e.fake.SetConnFault("rst_on_accept")
		defer e.fake.SetConnFault("")
		e.pool.Stats() // fresh connections only: nothing is retried
		st, _, body := e.do("POST", "/api/chat", chat("llama3.2"), nil)
		if st != 502 || !strings.Contains(string(body), "upstream_") {
			t.Fatalf("status %d: %s", st, body)
		}
	})
	t.Run("non-streamed body over the cap", func(t *testing.T) {
		req, _ := http.NewRequest("POST", e.url+"/api/chat", strings.NewReader(chat("fault:big_body")))
		resp, err := testClient.Do(req)
		if err == nil {
			_, err = io.ReadAll(resp.Body)
			resp.Body.Close()
		}
		if err == nil {
			t.Fatal("a body over upstream.max_response_bytes was delivered whole")
		}
	})
	t.Run("CONNECT refused", func(t *testing.T) {
		resp, _ := rawExchange(t, strings.TrimPrefix(e.url, "http://"), "CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n")
		if statusOf(resp) != "405" {
			t.Fatalf("%q", resp)
		}
	})
	t.Run("normalised path is what is forwarded", func(t *testing.T) {
		if st, _, _ := e.do("GET", "/api/./tags?x=1", "", nil); st != 200 {
			t.Fatalf("status %d", st)
		}
		reqs := e.fake.Requests()
		if last := reqs[len(reqs)-1]; last.Path != "/api/tags" || last.RawQuery != "x=1" {
			t.Fatalf("fake got %q ? %q", last.Path, last.RawQuery)
		}
	})
}

func TestChatCaps(t *testing.T) {
	e := startEnv(t, envOptions{chat: gateway.ChatConfig{MaxTokens: 5, MaxContext: 2048}})
	for _, tc := range []struct{ name, options, want string }{
		{"absent", ``, `{"num_ctx":2048,"num_predict":5}`},
		{"unlimited", `,"options":{"num_predict":-1,"temperature":0.5}`, `{"num_ctx":2048,"num_predict":5,"temperature":0.5}`},
		{"under the cap", `,"options":{"num_predict":3,"num_ctx":1024}`, `{"num_ctx":1024,"num_predict":3}`},
		{"over the cap", `,"options":{"num_predict":100000,"num_ctx":1000000}`, `{"num_ctx":2048,"num_predict":5}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if st, _, body := e.do("POST", "/chat", `{"prompt":"hi"`+tc.options+`}`, nil); st != 200 {
				t.Fatalf("%d %s", st, body)
			}
			reqs := e.fake.Requests()
			var sent struct{ Options json.RawMessage }
			_ = json.Unmarshal(reqs[len(reqs)-1].Body, &sent)
			if string(sent.Options) != tc.want {
				t.Fatalf("upstream options %s, want %s", sent.Options, tc.want)
			}
		})
	}
}

// TestQueuedClientLeaves: a client that gives up while its request waits
// for a pool slot never takes an upstream slot (F-19).
func TestQueuedClientLeaves(t *testing.T) {
	e := startEnv(t, envOptions{pool: pool.Config{MaxConnections: 1, MaxWait: 5 * time.Second}})
	go func() {
		c := &http.Client{Timeout: 3 * time.Second}
		if resp, err := c.Post(e.url+"/api/chat", "application/json", strings.NewReader(`{"model":"fault:hang","messages":[{"role":"user","content":"hi"}]}`)); err == nil {
			resp.Body.Close()
		}
	}()
	waitFor(t, 2*time.Second, "slot taken", func() bool { return e.pool.Snapshot().RequestsInFlight == 1 })
	c, err := net.Dial("tcp", strings.TrimPrefix(e.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	body := `{"model":"llama3.2","stream":false,"messages":[{"role":"user","content":"hi"}]}`
	io.WriteString(c, "POST /api/chat HTTP/1.1\r\nHost: x\r\nX-Correlation-ID: queued-then-gone\r\nContent-Length: "+itoa(len(body))+"\r\n\r\n"+body)
	waitFor(t, 2*time.Second, "request queued", func() bool { return e.pool.Snapshot().RequestsWaiting == 1 })
	c.Close()
	waitFor(t, 2*time.Second, "queued request dropped", func() bool {
		s := e.pool.Snapshot()
		return s.RequestsWaiting == 0 && s.Abandoned == 1
	})
	if s := e.pool.Snapshot(); s.WaitTimeouts != 0 || s.RequestsMade != 1 {
		t.Fatalf("abandoned request went on: %+v", s)
	}
	waitFor(t, 2*time.Second, "access line", func() bool {
		l := e.logs.accessLines(t, "queued-then-gone")
		return len(l) == 1 && l[0]["outcome"] == "client_closed" && l[0]["status"] == float64(499)
	})
}

func TestAuthFailureBudget(t *testing.T) {
	const key = "budget-key-0123456789abcdef012345678"
	e := startEnv(t, envOptions{auth: access.Config{APIKeys: []string{key}, MaxFailuresPerIP: 3}})
	if s := time.Now().Second(); s >= 57 {
		time.Sleep(time.Duration(61-s) * time.Second) // the budget counts in minute windows
	}
	for i := 0; i < 3; i++ {
		if st, _, _ := e.do("GET", "/api/tags", "", map[string]string{"X-API-Key": "guess"}); st != 401 {
			t.Fatalf("guess %d: %d", i, st)
		}
	}
	st, h, body := e.do("GET", "/api/tags", "", map[string]string{"X-API-Key": key})
	if st != 429 || decodeJSON(t, body)["code"] != "rate_limited" || h.Get("Retry-After") == "" {
		t.Fatalf("after the budget: %d %s", st, body)
	}
}

// TestOversizedReplyRefusedBeforeHeaders: a non-streamed upstream body
// whose Content-Length exceeds upstream.max_response_bytes gets 502 before
// any byte is relayed.
func TestOversizedReplyRefusedBeforeHeaders(t *testing.T) {
	big := strings.Repeat("x", 2<<20)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", itoa(len(big)))
		io.WriteString(w, big)
	}))
	defer up.Close()
	e := startEnv(t, envOptions{noFake: true, upURL: up.URL, upstream: pool.UpstreamConfig{MaxResponseBytes: 1 << 20}})
	st, _, body := e.do("POST", "/api/chat", `{"model":"llama3.2","stream":false}`, nil)
	if st != 502 || decodeJSON(t, body)["code"] != "upstream_too_large" {
		t.Fatalf("%d %.200s", st, body)
	}
}
