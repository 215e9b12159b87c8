package gateway_test

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vega-gateway/vega-gateway/access"
	"github.com/vega-gateway/vega-gateway/gateway"
	"github.com/vega-gateway/vega-gateway/pool"
)

// fuzzKey is planted in the gateway's key list; no response may echo it.
const fuzzKey = "fuzz-wire-key-9f8e7d6c5b4a39281706f5e4"

// wireExchange writes raw to addr, half-closes, and reads what comes back
// until the gateway closes or the deadline passes.
func wireExchange(t *testing.T, addr string, raw []byte) []byte {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(raw); err != nil {
		return nil // the gateway may close before taking everything
	}
	_ = c.(*net.TCPConn).CloseWrite()
	out, _ := io.ReadAll(c)
	return out
}

// checkResponses parses every HTTP response in out: each must be well
// framed, none may carry the planted key.
func checkResponses(t *testing.T, raw, out []byte) {
	t.Helper()
	if bytes.Contains(out, []byte(fuzzKey)) {
		t.Fatalf("the key came back for %q", raw)
	}
	br := bufio.NewReader(bytes.NewReader(out))
	for {
		if _, err := br.Peek(1); err != nil {
			return
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("unparseable response %q to %q: %v", out, raw, err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil && resp.StatusCode != 200 {
			t.Fatalf("error response %d with a broken body %q to %q: %v", resp.StatusCode, body, raw, err)
		}
		if resp.StatusCode >= 400 && resp.StatusCode != 404 && resp.Header.Get("Content-Type") != "" &&
			strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") && !bytes.HasPrefix(bytes.TrimSpace(body), []byte("{")) {
			t.Fatalf("JSON error %d that is not JSON: %q", resp.StatusCode, body)
		}
	}
}

// FuzzRawRequest sends arbitrary bytes to the gateway's data port (in
// front of the fake Ollama) — RELIABILITY's B-rows are the seeds. Whatever
// comes in, the gateway answers with well-framed HTTP or closes, never
// panics, never echoes the key, and keeps serving.
func FuzzRawRequest(f *testing.F) {
	for _, s := range []string{
		"GET /api/tags HTTP/1.1\r\nHost: x\r\nX-API-Key: " + fuzzKey + "\r\n\r\n",
		"POST /api/chat HTTP/1.1\r\nHost: x\r\nX-API-Key: " + fuzzKey + "\r\nContent-Length: 52\r\n\r\n{\"model\":\"llama3.2\",\"messages\":[],\"stream\":false}\r\n",
		"POST /chat HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + fuzzKey + "\r\nContent-Length: 15\r\n\r\n{\"prompt\":\"hi\"}",
		"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"POST /api/blobs/sha256:00 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
		"GET http://evil.example/api/tags HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET //evil.example/api/tags HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /api/tags HTTP/1.1\r\nHost: x\r\nX-Fold: a\r\n b\r\n\r\n",
		"GET /api/tags HTTP/1.1\nHost: x\n\n",
		"GET /%2e%2e/admin/resources/pools HTTP/1.1\r\nHost: x\r\n\r\n",
		"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example\r\n\r\n",
		"GET /api/tags HTTP/1.1\r\nHost: x\r\nX-Correlation-ID: \x00bad\r\n\r\nGET /api/version HTTP/1.1\r\nHost: x\r\n\r\n",
		"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
	} {
		f.Add([]byte(s))
	}
	// One gateway for the whole fuzz process (each fuzz worker has its own).
	e := startEnv(f, envOptions{
		gateway: gateway.Config{ReadTimeout: 100 * time.Millisecond, KeepAliveTimeout: 100 * time.Millisecond},
		auth:    access.Config{APIKeys: []string{fuzzKey}},
	})
	f.Fuzz(func(t *testing.T, raw []byte) {
		addr := strings.TrimPrefix(e.url, "http://")
		checkResponses(t, raw, wireExchange(t, addr, raw))
		if n := e.gw.Panics(); n != 0 {
			t.Fatalf("%d panics after %q", n, raw)
		}
		if logs := e.logs.String(); strings.Contains(logs, fuzzKey) {
			for _, l := range strings.Split(logs, "\n") {
				if strings.Contains(l, fuzzKey) {
					t.Fatalf("the key reached the log (input %q or one before it): %s", raw, l)
				}
			}
		}
	})
}

// rawUpstream is a TCP server that answers every request with the bytes
// of the current fuzz input, then closes the connection.
type rawUpstream struct {
	ln    net.Listener
	reply atomic.Pointer[[]byte]
}

func startRawUpstream(tb testing.TB) *rawUpstream {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	u := &rawUpstream{ln: ln}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go u.serve(c)
		}
	}()
	tb.Cleanup(func() { ln.Close(); <-done })
	return u
}

func (u *rawUpstream) serve(c net.Conn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(c)
	req, err := http.ReadRequest(br)
	if err != nil {
		return
	}
	_, _ = io.Copy(io.Discard, req.Body)
	if p := u.reply.Load(); p != nil {
		_, _ = c.Write(*p)
	}
}

// FuzzUpstreamResponse puts arbitrary bytes in the upstream's mouth (RELIABILITY F-10/F-11):
// garbage status lines, both framings, bad chunks, 1xx, huge headers,
// truncated streams. The client must get well-framed HTTP — the relayed
// response or a JSON 502/504 — and a streamed reply only whole lines; the
// gateway must not panic, and the pool must give its slot back.
func FuzzUpstreamResponse(f *testing.F) {
	for _, s := range []string{
		"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n12\r\n{\"done\":false}\n\r\n0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"done\":tr",
		"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
		"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
		"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\ndata: {\"x\":1}\n\ndata: [DONE]\n\n",
		"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
		"garbage\r\n\r\n",
		"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n{\"error\":\"boom\"}",
		"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n",
	} {
		f.Add([]byte(s), false)
		f.Add([]byte(s), true)
	}
	up := startRawUpstream(f)
	e := startEnv(f, envOptions{
		noFake: true, upURL: "http://" + up.ln.Addr().String(),
		upstream: pool.UpstreamConfig{FirstByteTimeout: 300 * time.Millisecond, IdleTimeout: 300 * time.Millisecond,
			MaxResponseBytes: 1 << 20},
		gateway: gateway.Config{MaxFrameBytes: 64 << 10},
		pool:    pool.Config{MaxConnections: 4},
	})
	f.Fuzz(func(t *testing.T, reply []byte, stream bool) {
		up.reply.Store(&reply)
		body := `{"model":"llama3.2","messages":[],"stream":false}`
		if stream {
			body = `{"model":"llama3.2","messages":[]}`
		}
		raw := "POST /api/chat HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: " +
			strconv.Itoa(len(body)) + "\r\n\r\n" + body
		out := wireExchange(t, strings.TrimPrefix(e.url, "http://"), []byte(raw))
		if len(out) == 0 {
			t.Fatalf("no answer at all to upstream reply %q; gateway log tail:\n%s", reply, tail(e.logs.String(), 2000))
		}
		resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(out)), nil)
		if err != nil {
			t.Fatalf("unparseable answer %q to upstream reply %q: %v", out, reply, err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode < 200 {
			t.Fatalf("informational status %d relayed for %q", resp.StatusCode, reply)
		}
		if strings.HasPrefix(resp.Header.Get("Content-Type"), "application/x-ndjson") {
			// A relayed stream: whole lines only, however it ended.
			if len(got) > 0 && got[len(got)-1] != '\n' {
				t.Fatalf("stream ends mid-line: %q (upstream %q)", got, reply)
			}
		}
		if n := e.gw.Panics(); n != 0 {
			t.Fatalf("%d panics after upstream reply %q", n, reply)
		}
		waitFor(t, 2*time.Second, "pool slot back", func() bool { return e.pool.Stats().InFlight.Load() == 0 })
	})
}
