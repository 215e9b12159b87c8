package gateway_test

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vega-gateway/vega-gateway/gateway"
	"github.com/vega-gateway/vega-gateway/ollamatest"
	"github.com/vega-gateway/vega-gateway/pool"
)

// streamRequest is a raw HTTP/1.1 streaming /api/chat request; extra
// header lines (each ending in \r\n) go before the blank line.
func streamRequest(proto, extra string) string {
	return "POST /api/chat " + proto + "\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Length: " +
		strconv.Itoa(len(rowsChatBody)) + "\r\n" + extra + "\r\n" + rowsChatBody
}

const tagsRequest = "GET /api/tags HTTP/1.1\r\nHost: gw\r\n\r\n"

// readStream reads one streamed response from br and checks it is a whole
// Ollama stream: every line JSON, the last with "done":true.
func readStream(t *testing.T, br *bufio.Reader) *http.Response {
	t.Helper()
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatalf("read body: %v (%q)", err, tail(string(body), 200))
	}
	lines := strings.Split(strings.TrimSpace(string(body)), "\n")
	if resp.StatusCode != 200 || len(lines) < 2 || !strings.Contains(lines[len(lines)-1], `"done":true`) {
		t.Fatalf("stream: %d, %d lines, ends %q", resp.StatusCode, len(lines), tail(string(body), 200))
	}
	for _, l := range lines {
		decodeJSON(t, []byte(l))
	}
	if resp.Header.Get("X-Correlation-ID") == "" {
		t.Fatal("stream response without X-Correlation-ID")
	}
	return resp
}

// TestStreamConnectionReuse: a stream runs on a connection taken off
// fasthttp's workers, and the connection then serves the client's next
// requests — sent after the stream, or pipelined behind it — and another
// stream after that.
func TestStreamConnectionReuse(t *testing.T) {
	for _, tc := range []struct {
		name      string
		pipelined bool
	}{
		{"sequential", false},
		{"pipelined", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := startEnv(t, envOptions{fake: ollamatest.Config{Tokens: 5, TokenDelay: 5 * time.Millisecond}})
			c, err := net.Dial("tcp", strings.TrimPrefix(e.url, "http://"))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			br := bufio.NewReader(c)
			send := func(raw string) {
				if _, err := io.WriteString(c, raw); err != nil {
					t.Fatal(err)
				}
			}
			if tc.pipelined {
				send(streamRequest("HTTP/1.1", "") + tagsRequest + streamRequest("HTTP/1.1", ""))
			} else {
				send(streamRequest("HTTP/1.1", ""))
			}
			resp := readStream(t, br)
			if len(resp.TransferEncoding) != 1 || resp.TransferEncoding[0] != "chunked" || resp.Close {
				t.Fatalf("stream framing: TE %v, close %v", resp.TransferEncoding, resp.Close)
			}
			if !tc.pipelined {
				send(tagsRequest)
			}
			tags, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("request after the stream: %v", err)
			}
			b, _ := io.ReadAll(tags.Body)
			if tags.StatusCode != 200 || !strings.Contains(string(b), `"models"`) {
				t.Fatalf("request after the stream: %d %q", tags.StatusCode, b)
			}
			// The stream writes its own head: it carries what fasthttp's do.
			if got, want := resp.Header.Get("Server"), tags.Header.Get("Server"); got == "" || got != want {
				t.Errorf("stream Server header %q, other responses %q", got, want)
			}
			if resp.Header.Get("Date") == "" {
				t.Error("stream response without Date")
			}
			if !tc.pipelined {
				send(streamRequest("HTTP/1.1", ""))
			}
			readStream(t, br)
			if got := e.fake.Stats().Requests; got != 3 {
				t.Fatalf("fake saw %d requests, want 3", got)
			}
		})
	}
}

// TestStreamConnectionEnd: a client that asks for Connection: close gets
// it after its stream; an HTTP/1.0 client, which cannot read chunks, gets
// the stream unchunked, ended by the close.
func TestStreamConnectionEnd(t *testing.T) {
	for _, tc := range []struct {
		name, proto, extra string
		chunked            bool
	}{
		{"connection close", "HTTP/1.1", "Connection: close\r\n", true},
		{"HTTP/1.0", "HTTP/1.0", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := startEnv(t, envOptions{fake: ollamatest.Config{Tokens: 5, TokenDelay: 5 * time.Millisecond}})
			c := dialAndWrite(t, strings.TrimPrefix(e.url, "http://"), streamRequest(tc.proto, tc.extra), 10*time.Second)
			defer c.Close()
			br := bufio.NewReader(c)
			resp := readStream(t, br)
			if chunked := len(resp.TransferEncoding) > 0; chunked != tc.chunked || !resp.Close {
				t.Fatalf("chunked %v (want %v), close %v (want true)", chunked, tc.chunked, resp.Close)
			}
			if n, err := br.Read(make([]byte, 1)); n != 0 || err == nil {
				t.Fatalf("connection left open after the stream: %d %v", n, err)
			}
		})
	}
}

// TestDrainWaitsForStreams: streams run on connections fasthttp no longer
// tracks, yet Shutdown waits for them and they end whole.
func TestDrainWaitsForStreams(t *testing.T) {
	e := startEnv(t, envOptions{fake: ollamatest.Config{Tokens: 20, TokenDelay: 20 * time.Millisecond}})
	resp, r := e.openStream(t, "/api/chat", rowsChatBody)
	defer resp.Body.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- e.gw.Shutdown(ctx) }()
	rest, err := io.ReadAll(r)
	if err != nil || !strings.Contains(string(rest), `"done":true`) {
		t.Fatalf("stream cut by the drain: %v ...%q", err, tail(string(rest), 200))
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown still waiting after the stream ended")
	}
	if e.gw.Streams() != 0 {
		t.Fatalf("%d streams left", e.gw.Streams())
	}
}

// TestConnectionLimitCountsStreams: gateway.max_client_connections counts
// the connections streams hold, though fasthttp no longer serves them: with
// every allowed connection streaming, a new one gets 503 and is closed, and
// once the streams end the gateway serves again.
func TestConnectionLimitCountsStreams(t *testing.T) {
	const limit = 3
	e := startEnv(t, envOptions{
		// Streams of 2 s: all three must still be running when the fourth
		// connection comes, however slowly a loaded machine starts them.
		fake:    ollamatest.Config{Tokens: 20, TokenDelay: 100 * time.Millisecond},
		gateway: gateway.Config{MaxClientConnections: limit},
	})
	addr := strings.TrimPrefix(e.url, "http://")
	var streams []*bufio.Reader
	for range limit {
		c := dialAndWrite(t, addr, streamRequest("HTTP/1.1", ""), 10*time.Second)
		defer c.Close()
		br := bufio.NewReader(c)
		if _, err := br.Peek(1); err != nil { // the stream has started
			t.Fatal(err)
		}
		streams = append(streams, br)
	}
	waitFor(t, 2*time.Second, "streams running", func() bool { return e.gw.Streams() == limit })
	got, closed := rawExchange(t, addr, tagsRequest)
	if statusOf(got) != "503" || !closed {
		t.Fatalf("connection over the limit: closed %v, %q", closed, got)
	}
	for _, br := range streams {
		readStream(t, br)
	}
	waitFor(t, 5*time.Second, "serving again", func() bool {
		got, _ := rawExchange(t, addr, "GET /healthz HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
		return statusOf(got) == "200"
	})
}

// TestClientGoneAfterStream is F-18 on a connection that already carried a
// stream: the server serves it through the stream's wrapper now, and a
// client that leaves while its next request waits for the first byte is
// still noticed, its upstream call ended.
func TestClientGoneAfterStream(t *testing.T) {
	e := startEnv(t, envOptions{
		fake:     ollamatest.Config{Tokens: 3},
		upstream: pool.UpstreamConfig{FirstByteTimeout: 30 * time.Second},
	})
	c := dialAndWrite(t, strings.TrimPrefix(e.url, "http://"), streamRequest("HTTP/1.1", ""), 10*time.Second)
	defer c.Close()
	readStream(t, bufio.NewReader(c))
	body := chatWith("fault:ttft=5s")
	if _, err := io.WriteString(c, "POST /api/chat HTTP/1.1\r\nHost: gw\r\nX-Correlation-ID: gone-after-stream\r\nContent-Length: "+
		strconv.Itoa(len(body))+"\r\n\r\n"+body); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 2*time.Second, "upstream call in flight", func() bool { return e.pool.Stats().InFlight.Load() == 1 })
	time.Sleep(30 * time.Millisecond)
	c.Close()
	waitFor(t, 2*time.Second, "upstream connection closed", func() bool { return e.fake.Stats().ClientCancelled == 1 })
	e.wantOutcome(t, "gone-after-stream", "client_closed")
}

// TestStreamKeepAliveIdle: after a stream, the connection waits for the
// client's next request gateway.keepalive_timeout, like any keep-alive
// connection — not read_timeout, which fasthttp would apply to a
// connection handed back to it as if it were new.
func TestStreamKeepAliveIdle(t *testing.T) {
	e := startEnv(t, envOptions{
		fake:    ollamatest.Config{Tokens: 3},
		gateway: gateway.Config{ReadTimeout: 150 * time.Millisecond, KeepAliveTimeout: 5 * time.Second},
	})
	c := dialAndWrite(t, strings.TrimPrefix(e.url, "http://"), streamRequest("HTTP/1.1", ""), 10*time.Second)
	defer c.Close()
	br := bufio.NewReader(c)
	readStream(t, br)
	time.Sleep(600 * time.Millisecond) // four read timeouts, idle
	if _, err := io.WriteString(c, tagsRequest); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("the connection did not outlive read_timeout while idle after a stream: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("request after an idle wait: %d", resp.StatusCode)
	}
}
