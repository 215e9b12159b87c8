package gateway_test

// Request-side rows of the reliability checklist (B-08…B-61): raw bytes over
// a socket, or HTTP, to the gateway in front of the recording fake. Each case
// asserts the status, the error code, whether the connection survives, and
// what the fake received.

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vega-gateway/vega-gateway/access"
	"github.com/vega-gateway/vega-gateway/gateway"
	"github.com/vega-gateway/vega-gateway/ollamatest"
)

// rowsKey holds every scope, so blob uploads reach the framing code.
const rowsKey = "rows-key-5e0c3a1f9b7d2e4c6a8f0b1d3e5c7a9f"

var rowsAuth = access.Config{Keys: []access.KeyConfig{{
	Name: "rows", Key: rowsKey,
	Scopes: []string{access.ScopeInference, access.ScopeModelsRead, access.ScopeModelsManage},
}}}

// probe is pipelined after every raw case: it is answered (200, without
// touching the upstream) only if the connection survived the case.
const probe = "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"

type rawResp struct {
	status int
	header http.Header
	body   []byte
	close  bool // the response carried Connection: close
}

// code is the "code" of a gateway error body ("" if there is none).
func (r rawResp) code() string {
	var m struct{ Code string }
	_ = json.Unmarshal(r.body, &m)
	return m.Code
}

// rawResponses writes raw on a fresh connection in one write and parses
// responses until the server closes (or 5 s pass, which fails the test:
// every case ends with a closed connection).
func rawResponses(t *testing.T, addr, raw string) []rawResp {
	t.Helper()
	c := dialAndWrite(t, addr, raw, 5*time.Second)
	defer c.Close()
	return readResponses(t, c)
}

func readResponses(t *testing.T, c net.Conn) []rawResp {
	t.Helper()
	br := bufio.NewReader(c)
	var out []rawResp
	for {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("connection neither answered nor closed within 5 s (after %d responses)", len(out))
			}
			return out // EOF or reset: the server closed
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatalf("response %d body: %v", len(out), err)
		}
		out = append(out, rawResp{resp.StatusCode, resp.Header, b, resp.Close})
	}
}

// rowID is a valid correlation ID naming a case, to find its access line.
func rowID(row, name string) string {
	b := []byte("rows-" + row + "-" + name)
	for i, c := range b {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-') {
			b[i] = '-'
		}
	}
	return string(b)
}

// blob is a chunked upload of body to its own digest (the fake answers 201
// only when the digest matches what it received).
func blob(te, body, chunked string) string {
	d := sha256.Sum256([]byte(body))
	return "POST /api/blobs/sha256:" + hex.EncodeToString(d[:]) + " HTTP/1.1\r\nHost: x\r\nX-API-Key: " + rowsKey +
		"\r\n" + te + "\r\n\r\n" + chunked
}

// framingCase is one raw request. want lists the answers to the request (and
// to what its framing makes of the bytes after it), not counting the probe;
// open says the probe is answered on the same connection, otherwise the last
// answer must carry Connection: close and end the connection.
type framingCase struct {
	row, name, raw string
	want           []int
	code           string // the code of the first gateway-made error
	open           bool
	forwarded      int // requests the fake receives
	// brokenOff: further requests the fake receives and sees broken off
	// (a blob body streams upstream until its framing fails).
	brokenOff int
}

// wantBrokenOff waits for the fake's request i to end, and checks that its
// body was broken off (the upstream upload aborted), not completed.
func wantBrokenOff(t *testing.T, e *env, i int) {
	t.Helper()
	waitFor(t, 5*time.Second, "the upstream upload to end", func() bool { return !forwarded(e)[i].Finished.IsZero() })
	if r := forwarded(e)[i]; !r.Cancelled {
		t.Fatalf("upstream request %+v, want its body broken off", r)
	}
}

// forwarded is what the fake received but for the HEAD a blob upload asks
// first (upload.go's headRequest).
func forwarded(e *env) []ollamatest.Request {
	var out []ollamatest.Request
	for _, r := range e.fake.Requests() {
		if r.Method != "HEAD" {
			out = append(out, r)
		}
	}
	return out
}

func (tc framingCase) run(t *testing.T, e *env) []rawResp {
	t.Helper()
	before := len(forwarded(e))
	resps := rawResponses(t, strings.TrimPrefix(e.url, "http://"), tc.raw+probe)
	got := make([]int, len(resps))
	for i, r := range resps {
		got[i] = r.status
	}
	want := tc.want
	if tc.open {
		want = append(append([]int(nil), want...), 200)
	}
	if len(got) != len(want) {
		t.Fatalf("statuses %v, want %v (open=%v)", got, want, tc.open)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("statuses %v, want %v", got, want)
		}
	}
	last := resps[len(resps)-1]
	if !tc.open && !last.close {
		t.Fatalf("connection closed without Connection: close: %v", last.header)
	}
	if tc.code != "" {
		for _, r := range resps {
			if r.status >= 400 {
				if r.code() != tc.code || r.header.Get("X-Correlation-ID") == "" {
					t.Fatalf("error %d %s, want code %q with a correlation ID", r.status, r.body, tc.code)
				}
				break
			}
		}
	}
	if tc.brokenOff > 0 {
		// The broken-off upload reaches the fake as the gateway's
		// answer reaches the client: wait for it.
		waitFor(t, 5*time.Second, "the broken-off upload to reach the fake", func() bool {
			return len(forwarded(e))-before == tc.forwarded+tc.brokenOff
		})
		wantBrokenOff(t, e, len(forwarded(e))-1)
	}
	if n := len(forwarded(e)) - before; n != tc.forwarded+tc.brokenOff {
		t.Fatalf("the fake received %d requests, want %d", n, tc.forwarded+tc.brokenOff)
	}
	return resps
}

func TestRequestFraming(t *testing.T) {
	e := startEnv(t, envOptions{auth: rowsAuth})
	k := "X-API-Key: " + rowsKey + "\r\n"
	chat := `{"model":"llama3.2","stream":false,"messages":[{"role":"user","content":"hi"}]}`
	post := func(headers, body string) string {
		return "POST /api/chat HTTP/1.1\r\nHost: x\r\n" + k + headers + "\r\n" + body
	}
	get := func(headers string) string { return "GET /api/tags HTTP/1.1\r\nHost: x\r\n" + k + headers + "\r\n" }
	for _, tc := range []framingCase{
		// B-19: bytes past a short Content-Length are the next request.
		{row: "B-19", name: "leftover without a key is refused on its own",
			raw:  post("Content-Length: "+itoa(len(chat))+"\r\n", chat+"GET /api/tags HTTP/1.1\r\nHost: x\r\n\r\n"),
			want: []int{200, 401}, code: "unauthorized", open: true, forwarded: 1},
		{row: "B-19", name: "leftover with a key is served on its own",
			raw:  post("Content-Length: "+itoa(len(chat))+"\r\n", chat+"GET /api/tags HTTP/1.1\r\nHost: x\r\n"+k+"\r\n"),
			want: []int{200, 200}, open: true, forwarded: 2},
		{row: "B-19", name: "leftover garbage",
			raw:  post("Content-Length: "+itoa(len(chat))+"\r\n", chat+"xyz\r\n\r\n"),
			want: []int{200, 400}, code: "bad_request", forwarded: 1},
		// B-21: Content-Length spellings.
		{row: "B-21", name: "equal duplicate content lengths", raw: post("Content-Length: 5\r\nContent-Length: 5\r\n", "hello"), want: []int{400}, code: "bad_request"},
		{row: "B-21", name: "plus sign", raw: post("Content-Length: +5\r\n", "hello"), want: []int{400}, code: "bad_request"},
		{row: "B-21", name: "hex", raw: post("Content-Length: 0x5\r\n", "hello"), want: []int{400}, code: "bad_request"},
		{row: "B-21", name: "negative", raw: post("Content-Length: -1\r\n", "hello"), want: []int{400}, code: "bad_request"},
		// Trailing whitespace is OWS around the field value (RFC 9110 §5.5),
		// not part of it: the length is 5 to every conforming parser.
		{row: "B-21", name: "trailing space is whitespace", raw: post("Content-Length: "+itoa(len(chat))+" \r\n", chat), want: []int{200}, open: true, forwarded: 1},
		// B-22: Transfer-Encoding variants (chunked is allowed on blobs only).
		{row: "B-22", name: "Chunked is chunked", raw: blob("Transfer-Encoding: Chunked", "b22-a", "5\r\nb22-a\r\n0\r\n\r\n"), want: []int{201}, open: true, forwarded: 1},
		{row: "B-22", name: "leading whitespace", raw: blob("Transfer-Encoding:   chunked", "b22-b", "5\r\nb22-b\r\n0\r\n\r\n"), want: []int{201}, open: true, forwarded: 1},
		{row: "B-22", name: "chunked then identity", raw: blob("Transfer-Encoding: chunked, identity", "b22-c", "5\r\nb22-c\r\n0\r\n\r\n"), want: []int{400}, code: "bad_request"},
		{row: "B-22", name: "xchunked", raw: blob("Transfer-Encoding: xchunked", "b22-d", "5\r\nb22-d\r\n0\r\n\r\n"), want: []int{400}, code: "bad_request"},
		{row: "B-22", name: "two TE headers", raw: blob("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked", "b22-e", "5\r\nb22-e\r\n0\r\n\r\n"), want: []int{400}, code: "bad_request"},
		{row: "B-22", name: "identity then chunked", raw: blob("Transfer-Encoding: identity\r\nTransfer-Encoding: chunked", "b22-f", "5\r\nb22-f\r\n0\r\n\r\n"), want: []int{400}, code: "bad_request"},
		{row: "B-22", name: "TE on HTTP 1.0", raw: strings.Replace(blob("Transfer-Encoding: chunked", "b22-g", "5\r\nb22-g\r\n0\r\n\r\n"), "HTTP/1.1", "HTTP/1.0", 1), want: []int{400}, code: "bad_request"},
		{row: "B-22", name: "Chunked on an inference route", raw: post("Transfer-Encoding: Chunked\r\n", "5\r\nhello\r\n0\r\n\r\n"), want: []int{411}, code: "length_required"},
		// B-23: header syntax.
		{row: "B-23", name: "control byte in a name", raw: get("X-Fo\x01o: a\r\n"), want: []int{400}, code: "bad_request"},
		{row: "B-23", name: "NUL in a name", raw: get("X-Fo\x00o: a\r\n"), want: []int{400}, code: "bad_request"},
		{row: "B-23", name: "bare CR ends the request line", raw: "GET /api/tags HTTP/1.1\rHost: x\r\n" + k + "\r\n", want: []int{400}, code: "bad_request"},
		{row: "B-23", name: "bare CR in a value", raw: get("X-Foo: a\rb\r\n"), want: []int{400}, code: "bad_request"},
		// obs-fold: fasthttp replaces each fold with a space before anyone
		// reads the value, which RFC 9112 §5.2 allows instead of a 400.
		{row: "B-23", name: "obs-fold is unfolded", raw: get("X-Foo: a\r\n b\r\n\tc\r\n"), want: []int{200}, open: true, forwarded: 1},
		{row: "B-23", name: "folded Transfer-Encoding on a blob is chunked", raw: blob("Transfer-Encoding:\r\n chunked", "b23-a", "5\r\nb23-a\r\n0\r\n\r\n"), want: []int{201}, open: true, forwarded: 1},
		{row: "B-23", name: "folded Transfer-Encoding with Content-Length", raw: post("Content-Length: 16\r\nTransfer-Encoding:\r\n chunked\r\n", "5\r\nhello\r\n0\r\n\r\n"), want: []int{411}, code: "length_required"},
		// B-25: chunk syntax on /api/blobs, the one route that takes chunked.
		{row: "B-25", name: "chunk size overflow", raw: blob("Transfer-Encoding: chunked", "b25-a", "10000000000000005\r\nb25-a\r\n0\r\n\r\n"), want: []int{400}, code: "bad_request"},
		{row: "B-25", name: "chunk size ffffffffffffffff0", raw: blob("Transfer-Encoding: chunked", "b25-b", "ffffffffffffffff0\r\nb25-b\r\n0\r\n\r\n"), want: []int{400}, code: "bad_request"},
		{row: "B-25", name: "chunk extension is ignored", raw: blob("Transfer-Encoding: chunked", "b25-c", "5;ext=\"1\"\r\nb25-c\r\n0;x\r\n\r\n"), want: []int{201}, open: true, forwarded: 1},
		{row: "B-25", name: "bare LF in an extension", raw: blob("Transfer-Encoding: chunked", "b25-d", "5;ext\n\r\nb25-d\r\n0\r\n\r\n"), want: []int{400}, code: "bad_request"},
		{row: "B-25", name: "bare CR in an extension", raw: blob("Transfer-Encoding: chunked", "b25-e", "5;e\rxt\r\nb25-e\r\n0\r\n\r\n"), want: []int{400}, code: "bad_request"},
		{row: "B-25", name: "chunk longer than its size", raw: blob("Transfer-Encoding: chunked", "b25-f", "5\r\nb25-fXX\r\n0\r\n\r\n"), want: []int{400}, code: "bad_request", brokenOff: 1},
		{row: "B-25", name: "trailer with Content-Length", raw: blob("Transfer-Encoding: chunked", "b25-g", "5\r\nb25-g\r\n0\r\nContent-Length: 7\r\n\r\n"), want: []int{400}, code: "bad_request", brokenOff: 1},
		{row: "B-25", name: "trailer with Transfer-Encoding", raw: blob("Transfer-Encoding: chunked", "b25-h", "5\r\nb25-h\r\n0\r\nTransfer-Encoding: chunked\r\n\r\n"), want: []int{400}, code: "bad_request", brokenOff: 1},
		{row: "B-25", name: "ordinary trailer", raw: blob("Transfer-Encoding: chunked", "b25-i", "5\r\nb25-i\r\n0\r\nX-Checksum: 1\r\n\r\n"), want: []int{201}, open: true, forwarded: 1},
		// B-27: Host.
		{row: "B-27", name: "missing Host", raw: "GET /api/tags HTTP/1.1\r\n" + k + "\r\n", want: []int{400}, code: "bad_request"},
		{row: "B-27", name: "Host with a space", raw: "GET /api/tags HTTP/1.1\r\nHost: a b\r\n" + k + "\r\n", want: []int{400}, code: "bad_request"},
		{row: "B-27", name: "Host with a bare CR", raw: "GET /api/tags HTTP/1.1\r\nHost: a\rb\r\n" + k + "\r\n", want: []int{400}, code: "bad_request"},
		{row: "B-27", name: "CRLF inside Host", raw: "GET /api/tags HTTP/1.1\r\nHost: a\r\nb\r\n" + k + "\r\n", want: []int{400}, code: "bad_request"},
		{row: "B-27", name: "Host folded into a space", raw: "GET /api/tags HTTP/1.1\r\nHost: a\r\n b\r\n" + k + "\r\n", want: []int{400}, code: "bad_request"},
		// B-28: TRACE is refused and closes.
		{row: "B-28", name: "TRACE", raw: "TRACE /api/tags HTTP/1.1\r\nHost: x\r\n" + k + "\r\n", want: []int{405}, code: "method_not_allowed"},
	} {
		t.Run(tc.row+" "+tc.name, func(t *testing.T) {
			resps := tc.run(t, e)
			if tc.name == "obs-fold is unfolded" {
				reqs := e.fake.Requests()
				if got := reqs[len(reqs)-1].Header.Get("X-Foo"); got != "a b c" {
					t.Fatalf("upstream X-Foo %q, want the folds replaced by spaces", got)
				}
			}
			if tc.name == "ordinary trailer" {
				reqs := e.fake.Requests()
				if h := reqs[len(reqs)-1].Header; h.Get("X-Checksum") != "" || h.Get("Trailer") != "" {
					t.Fatalf("a trailer field reached the upstream: %v", h)
				}
			}
			if tc.row == "B-19" && len(resps) > 1 && resps[0].header.Get("X-Correlation-ID") == resps[1].header.Get("X-Correlation-ID") {
				t.Fatal("the leftover request shares the first one's correlation ID")
			}
		})
	}
}

// TestRequestFramingWaits covers inputs fasthttp does not reject but waits on
// (the block or body is not complete to it): the read timeout answers them.
func TestRequestFramingWaits(t *testing.T) {
	e := startEnv(t, envOptions{auth: rowsAuth, gateway: gateway.Config{ReadTimeout: 300 * time.Millisecond}})
	k := "X-API-Key: " + rowsKey + "\r\n"
	for _, tc := range []framingCase{
		// A bare-LF header block is complete to fasthttp only once a CRLFCRLF
		// arrives, so it is never parsed differently from a CRLF peer.
		{row: "B-23", name: "bare LF line endings", raw: "GET /api/tags HTTP/1.1\nHost: x\n" + strings.TrimSuffix(k, "\r\n") + "\n\n", want: []int{408}, code: "request_timeout"},
		// fasthttp reports this timeout as its own ErrTimeout (not a
		// net.Error); serveError maps it to 408 all the same.
		{row: "B-25", name: "missing final CRLF", raw: blob("Transfer-Encoding: chunked", "b25-w", "5\r\nb25-w\r\n0\r\n"), want: []int{408}, code: "request_timeout"},
	} {
		t.Run(tc.row+" "+tc.name, func(t *testing.T) {
			// Without the probe: it would complete the block or the body.
			before := len(forwarded(e))
			resps := rawResponses(t, strings.TrimPrefix(e.url, "http://"), tc.raw)
			// want[1], when present, is the status answered today instead.
			ok := len(resps) == 1 && resps[0].close &&
				(resps[0].status == tc.want[0] && resps[0].code() == tc.code || len(tc.want) > 1 && resps[0].status == tc.want[1] && resps[0].code() == "bad_request")
			if !ok {
				t.Fatalf("responses %+v, want one %d %s with Connection: close", resps, tc.want[0], tc.code)
			}
			// A blob body streams upstream until it stalls: that upload
			// is broken off there.
			brokenOff := 0
			if strings.Contains(tc.raw, "/api/blobs/") {
				brokenOff = 1
			}
			if brokenOff > 0 {
				waitFor(t, 5*time.Second, "the broken-off upload to reach the fake", func() bool { return len(forwarded(e))-before == brokenOff })
				wantBrokenOff(t, e, len(forwarded(e))-1)
			}
			if n := len(forwarded(e)) - before; n != brokenOff {
				t.Fatalf("the fake received %d requests, want %d", n, brokenOff)
			}
		})
	}
}

// TestEmptyChunkedBodyWithContentLength: Content-Length together with
// Transfer-Encoding gets 411 (B-24) even when the chunked body is empty.
// fasthttp reports Content-Length 0 (not -1) once it has read an empty
// chunked body, so serve asks sentChunked, which reads the raw headers. The
// connection closes after it, so the bytes a Content-Length framer would
// call body never become a second request.
func TestEmptyChunkedBodyWithContentLength(t *testing.T) {
	e := startEnv(t, envOptions{auth: rowsAuth})
	k := "X-API-Key: " + rowsKey + "\r\n"
	body := "0\r\n\r\nGET /api/tags HTTP/1.1\r\nHost: x\r\n" + k + "\r\n"
	raw := "POST /api/chat HTTP/1.1\r\nHost: x\r\n" + k + "Content-Length: " + itoa(len(body)) + "\r\nTransfer-Encoding: chunked\r\n\r\n" + body
	resps := rawResponses(t, strings.TrimPrefix(e.url, "http://"), raw+probe)
	reqs := e.fake.Requests()
	if len(resps) != 1 || !resps[0].close {
		t.Fatalf("%d responses (close=%v), want one that closes the connection", len(resps), len(resps) > 0 && resps[0].close)
	}
	if resps[0].status != 411 || resps[0].code() != "length_required" || len(reqs) != 0 {
		t.Fatalf("status %d %s; the fake received %d requests; want 411 length_required and none", resps[0].status, resps[0].body, len(reqs))
	}
}

// TestRequestBodies covers the body rows over HTTP: odd Unicode (B-08), deep
// nesting (B-09), the prompt cap (B-13), media types (B-15) and encodings
// (B-16).
func TestRequestBodies(t *testing.T) {
	e := startEnv(t, envOptions{chat: gateway.ChatConfig{MaxPromptBytes: 1024}})
	// Emoji with ZWJ, CJK, an RTL override, zero-width joiners, a combining
	// mark, an escaped NUL, raw U+2028, and the characters json.Marshal
	// re-escapes.
	odd := "👩‍💻 漢字 \u202Eevil\u202C a\u200Db e\u0301 \\u0000 \u2028 <&>"
	t.Run("B-08 pass-through body is forwarded byte-exact", func(t *testing.T) {
		body := `{"model":"llama3.2","stream":false,"messages":[{"role":"user","content":"` + odd + `"}]}`
		st, _, resp := e.do("POST", "/api/chat", body, nil)
		reqs := e.fake.Requests()
		if st != 200 || string(reqs[len(reqs)-1].Body) != body {
			t.Fatalf("status %d %.100s; upstream body %q, want %q", st, resp, reqs[len(reqs)-1].Body, body)
		}
	})
	t.Run("B-08 chat keeps the prompt string", func(t *testing.T) {
		var prompt string
		_ = json.Unmarshal([]byte(`"`+odd+`"`), &prompt)
		st, _, resp := e.do("POST", "/chat", `{"prompt":"`+odd+`"}`, nil)
		reqs := e.fake.Requests()
		var up struct{ Messages []struct{ Content string } }
		_ = json.Unmarshal(reqs[len(reqs)-1].Body, &up)
		if st != 200 || len(up.Messages) == 0 || up.Messages[len(up.Messages)-1].Content != prompt {
			t.Fatalf("status %d %.100s; upstream messages %+v", st, resp, up.Messages)
		}
	})

	deep := strings.Repeat("[", 100_000) + strings.Repeat("]", 100_000)
	for _, tc := range []struct {
		row, name, path, body, ct, enc string
		status                         int
		code                           string // "" for an answer from the fake
		forwarded                      int
	}{
		{row: "B-09", name: "top-level nesting on chat", path: "/chat", body: deep, status: 400, code: "invalid_json"},
		{row: "B-09", name: "nesting in options on chat", path: "/chat", body: `{"prompt":"hi","options":{"a":` + deep + `}}`, status: 400, code: "invalid_json"},
		{row: "B-09", name: "nesting in history on chat", path: "/chat", body: `{"prompt":"hi","history":` + deep + `}`, status: 400, code: "invalid_json"},
		// Pass-through bodies are not parsed (no allowlist): Ollama's own
		// decoder refuses them, and its 400 is relayed.
		{row: "B-09", name: "nesting on a pass-through route", path: "/api/chat", body: `{"model":"llama3.2","messages":[],"options":{"a":` + deep + `}}`, status: 400, forwarded: 1},
		{row: "B-13", name: "prompt one byte over", path: "/chat", body: `{"prompt":"` + strings.Repeat("a", 1025) + `"}`, status: 400, code: "prompt_too_long"},
		{row: "B-13", name: "prompt counted in bytes not runes", path: "/chat", body: `{"prompt":"` + strings.Repeat("€", 342) + `"}`, status: 400, code: "prompt_too_long"},
		{row: "B-13", name: "prompt at the cap", path: "/chat", body: `{"prompt":"` + strings.Repeat("€", 341) + `a"}`, status: 200, forwarded: 1},
		{row: "B-15", name: "charset utf-8", path: "/chat", ct: "application/json; charset=utf-8", status: 200, forwarded: 1},
		{row: "B-15", name: "upper case", path: "/chat", ct: "APPLICATION/JSON", status: 200, forwarded: 1},
		{row: "B-15", name: "quoted upper-case charset", path: "/chat", ct: `application/json;charset="UTF-8"`, status: 200, forwarded: 1},
		{row: "B-15", name: "us-ascii", path: "/chat", ct: "application/json; charset=us-ascii", status: 200, forwarded: 1},
		{row: "B-15", name: "form type from curl -d", path: "/chat", ct: "application/x-www-form-urlencoded", status: 200, forwarded: 1},
		{row: "B-15", name: "latin1", path: "/chat", ct: "application/json; charset=iso-8859-1", status: 415, code: "unsupported_media_type"},
		{row: "B-15", name: "utf-16", path: "/chat", ct: "application/json; charset=UTF-16", status: 415, code: "unsupported_media_type"},
		{row: "B-15", name: "multipart", path: "/chat", ct: "multipart/form-data; boundary=x", status: 415, code: "unsupported_media_type"},
		{row: "B-16", name: "gzip", path: "/chat", enc: "gzip", status: 415, code: "unsupported_media_type"},
		{row: "B-16", name: "deflate", path: "/chat", enc: "deflate", status: 415, code: "unsupported_media_type"},
		{row: "B-16", name: "zstd", path: "/chat", enc: "zstd", status: 415, code: "unsupported_media_type"},
		{row: "B-16", name: "br", path: "/chat", enc: "br", status: 415, code: "unsupported_media_type"},
		{row: "B-16", name: "identity", path: "/chat", enc: "identity", status: 200, forwarded: 1},
	} {
		t.Run(tc.row+" "+tc.name, func(t *testing.T) {
			if tc.body == "" {
				tc.body = `{"prompt":"hi"}`
			}
			id := rowID(tc.row, tc.name)
			hdr := map[string]string{"X-Correlation-ID": id}
			if tc.ct != "" {
				hdr["Content-Type"] = tc.ct
			}
			if tc.enc != "" {
				hdr["Content-Encoding"] = tc.enc
			}
			before := len(e.fake.Requests())
			st, _, body := e.do("POST", tc.path, tc.body, hdr)
			if st != tc.status {
				t.Fatalf("status %d, want %d: %.200s", st, tc.status, body)
			}
			if tc.code != "" {
				if m := decodeJSON(t, body); m["code"] != tc.code || m["correlation_id"] != id {
					t.Fatalf("body %s, want code %q", body, tc.code)
				}
			}
			if n := len(e.fake.Requests()) - before; n != tc.forwarded {
				t.Fatalf("the fake received %d requests, want %d", n, tc.forwarded)
			}
			if tc.forwarded == 1 && tc.path != "/chat" {
				reqs := e.fake.Requests()
				if got := reqs[len(reqs)-1].BodySize; got != int64(len(tc.body)) {
					t.Fatalf("upstream body %d bytes, want %d", got, len(tc.body))
				}
			}
		})
	}
	t.Run("B-16 pass-through forwards the encoded body unchanged", func(t *testing.T) {
		body := "\x1f\x8b\x08\x00not-really-gzip"
		st, _, _ := e.do("POST", "/api/chat", body, map[string]string{"Content-Encoding": "gzip"})
		reqs := e.fake.Requests()
		last := reqs[len(reqs)-1]
		if st != 400 || last.Header.Get("Content-Encoding") != "gzip" || string(last.Body) != body {
			t.Fatalf("status %d; upstream Content-Encoding %q body %q", st, last.Header.Get("Content-Encoding"), last.Body)
		}
	})
	if p := e.gw.Panics(); p != 0 {
		t.Fatalf("%d panics", p)
	}
}

// TestDeepNestingWithAllowlist: with a model allowlist the gateway decodes
// pass-through bodies itself (B-09); a 100 k deep body is refused, not a
// crash.
func TestDeepNestingWithAllowlist(t *testing.T) {
	e := startEnv(t, envOptions{gateway: gateway.Config{ModelAllowlist: []string{"llama3.2"}}})
	deep := strings.Repeat("[", 100_000) + strings.Repeat("]", 100_000)
	st, _, body := e.do("POST", "/api/chat", `{"model":"llama3.2","messages":[],"options":{"a":`+deep+`}}`, nil)
	code, _ := decodeJSON(t, body)["code"].(string)
	if st/100 != 4 || code == "" || len(e.fake.Requests()) != 0 || e.gw.Panics() != 0 {
		t.Fatalf("status %d %s; fake %d requests; panics %d", st, body, len(e.fake.Requests()), e.gw.Panics())
	}
}

// TestBodyCaps: a body over the server's cap is refused from its
// Content-Length before it is sent (B-10), an oversize chunked blob once its
// chunks pass the cap (B-11); both close. A /chat body between the /chat cap
// and the server cap is read, refused, and the connection stays usable.
func TestBodyCaps(t *testing.T) {
	e := startEnv(t, envOptions{auth: rowsAuth,
		gateway: gateway.Config{MaxBodyBytes: 64 << 10, MaxBlobBytes: 64 << 10}, chat: gateway.ChatConfig{MaxBodyBytes: 16 << 10}})
	addr := strings.TrimPrefix(e.url, "http://")
	k := "X-API-Key: " + rowsKey + "\r\n"
	t.Run("B-10 over the server cap", func(t *testing.T) {
		for _, path := range []string{"/api/chat", "/chat"} {
			// Headers and the body's first byte: the answer must come
			// without the rest. (The server streams bodies and calls the
			// handler once one byte is in; a client that waits before
			// sending a body asks first with Expect: 100-continue.)
			resps := rawResponses(t, addr, "POST "+path+" HTTP/1.1\r\nHost: x\r\n"+k+"Content-Length: "+itoa(100<<10)+"\r\n\r\n{")
			if len(resps) != 1 || resps[0].status != 413 || resps[0].code() != "body_too_large" || !resps[0].close {
				t.Fatalf("%s: %+v, want one 413 body_too_large with Connection: close", path, resps)
			}
		}
	})
	t.Run("B-10 chat body between the caps", func(t *testing.T) {
		body := `{"prompt":"` + strings.Repeat("a", 32<<10) + `"}`
		tc := framingCase{raw: "POST /chat HTTP/1.1\r\nHost: x\r\n" + k + "Content-Length: " + itoa(len(body)) + "\r\n\r\n" + body,
			want: []int{413}, code: "body_too_large", open: true}
		tc.run(t, e)
	})
	t.Run("B-11 oversize chunked blob", func(t *testing.T) {
		// 64 chunks of 1 KiB fill gateway.max_blob_bytes; the next chunk's
		// first byte is the last thing sent, so the server has read
		// everything when it closes.
		chunk := "400\r\n" + strings.Repeat("b", 1024) + "\r\n"
		raw := blob("Transfer-Encoding: chunked", "never", strings.Repeat(chunk, 64)+"400\r\nb")
		resps := rawResponses(t, addr, raw)
		if len(resps) != 1 || resps[0].status != 413 || resps[0].code() != "body_too_large" || !resps[0].close {
			t.Fatalf("%+v, want one 413 body_too_large with Connection: close", resps)
		}
		// The blob streamed upstream as it came; its upload was broken
		// off there, not completed.
		waitFor(t, 5*time.Second, "the upstream upload to end", func() bool {
			reqs := forwarded(e)
			return len(reqs) == 1 && !reqs[0].Finished.IsZero()
		})
		if r := forwarded(e)[0]; !r.Cancelled || r.BodySize > 64<<10 {
			t.Fatalf("upstream upload %+v, want it broken off within the cap", r)
		}
		e.fake.ResetStats()
	})
	if n := len(e.fake.Requests()); n != 0 {
		t.Fatalf("the fake received %d requests", n)
	}
}

// TestBodyCapsPerRoute: with chat.max_body_bytes above
// gateway.max_body_bytes, a proxied body is still read under the gateway's
// cap (413, closed, never forwarded), while /chat takes a body up to its own.
func TestBodyCapsPerRoute(t *testing.T) {
	e := startEnv(t, envOptions{auth: rowsAuth,
		gateway: gateway.Config{MaxBodyBytes: 16 << 10}, chat: gateway.ChatConfig{MaxBodyBytes: 64 << 10}})
	k := "X-API-Key: " + rowsKey + "\r\n"
	post := func(path, body string) string {
		return "POST " + path + " HTTP/1.1\r\nHost: x\r\n" + k + "Content-Type: application/json\r\nContent-Length: " + itoa(len(body)) + "\r\n\r\n" + body
	}
	big := strings.Repeat("a", 32<<10)
	small := strings.Repeat("a", 8<<10)
	for _, tc := range []framingCase{
		{name: "/api/chat over the gateway cap", raw: post("/api/chat", `{"model":"llama3.2","stream":false,"messages":[{"role":"user","content":"`+big+`"}]}`),
			want: []int{413}, code: "body_too_large"},
		{name: "/api/generate over the gateway cap", raw: post("/api/generate", `{"model":"llama3.2","stream":false,"prompt":"`+big+`"}`),
			want: []int{413}, code: "body_too_large"},
		{name: "/api/generate under the gateway cap", raw: post("/api/generate", `{"model":"llama3.2","stream":false,"prompt":"`+small+`"}`),
			want: []int{200}, open: true, forwarded: 1},
		{name: "/chat under its own cap", raw: post("/chat", `{"model":"llama3.2","prompt":"`+big+`"}`),
			want: []int{200}, open: true, forwarded: 1},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.run(t, e) })
	}
}

// TestRequestCredentials: credential spellings end to end (B-32, B-33,
// B-34, B-37). A refused credential never reaches the upstream; an accepted
// Authorization is never forwarded.
func TestRequestCredentials(t *testing.T) {
	e := startEnv(t, envOptions{auth: rowsAuth})
	get := func(headers string) string { return "GET /api/tags HTTP/1.1\r\nHost: x\r\n" + headers + "\r\n" }
	long := "k" + strings.Repeat("x", 8<<10)
	huge := "k" + strings.Repeat("y", 20<<10)
	for _, tc := range []framingCase{
		{row: "B-32", name: "Bearer", raw: get("Authorization: Bearer " + rowsKey + "\r\n"), want: []int{200}, open: true, forwarded: 1},
		{row: "B-32", name: "BEARER", raw: get("Authorization: BEARER " + rowsKey + "\r\n"), want: []int{200}, open: true, forwarded: 1},
		{row: "B-32", name: "Bearer two spaces", raw: get("Authorization: Bearer  " + rowsKey + "\r\n"), want: []int{200}, open: true, forwarded: 1},
		{row: "B-33", name: "Bearer without a token", raw: get("Authorization: Bearer\r\n"), want: []int{401}, code: "unauthorized", open: true},
		{row: "B-33", name: "Bearer and a space", raw: get("Authorization: Bearer \r\n"), want: []int{401}, code: "unauthorized", open: true},
		{row: "B-33", name: "Token scheme", raw: get("Authorization: Token " + rowsKey + "\r\n"), want: []int{401}, code: "unauthorized", open: true},
		{row: "B-33", name: "Basic scheme", raw: get("Authorization: Basic " + rowsKey + "\r\n"), want: []int{401}, code: "unauthorized", open: true},
		// RFC 9110 §11.4: one or more SP between scheme and token, not HTAB.
		{row: "B-33", name: "Bearer and a tab", raw: get("Authorization: Bearer\t" + rowsKey + "\r\n"), want: []int{401}, code: "unauthorized", open: true},
		{row: "B-34", name: "two equal X-API-Key", raw: get("X-API-Key: " + rowsKey + "\r\nX-API-Key: " + rowsKey + "\r\n"), want: []int{401}, code: "unauthorized", open: true},
		{row: "B-34", name: "X-API-Key and another Bearer", raw: get("X-API-Key: " + rowsKey + "\r\nAuthorization: Bearer other\r\n"), want: []int{401}, code: "unauthorized", open: true},
		{row: "B-34", name: "two Authorization", raw: get("Authorization: Bearer " + rowsKey + "\r\nAuthorization: Bearer " + rowsKey + "\r\n"), want: []int{401}, code: "unauthorized", open: true},
		{row: "B-37", name: "8 KiB key", raw: get("X-API-Key: " + long + "\r\n"), want: []int{401}, code: "unauthorized", open: true},
		{row: "B-37", name: "8 KiB bearer", raw: get("Authorization: Bearer " + long + "\r\n"), want: []int{401}, code: "unauthorized", open: true},
		{row: "B-37", name: "obs-text key", raw: get("X-API-Key: k\xe9\xff\x80" + rowsKey[4:] + "\r\n"), want: []int{401}, code: "unauthorized", open: true},
		{row: "B-37", name: "key over the header buffer", raw: get("X-API-Key: " + huge + "\r\n"), want: []int{431}, code: "headers_too_large"},
	} {
		t.Run(tc.row+" "+tc.name, func(t *testing.T) {
			tc.run(t, e)
			if tc.forwarded == 1 {
				reqs := e.fake.Requests()
				if h := reqs[len(reqs)-1].Header; h.Get("Authorization") != "" || h.Get("X-API-Key") != "" {
					t.Fatalf("the credential reached the upstream: %v", h)
				}
			}
		})
	}
	time.Sleep(50 * time.Millisecond) // let the last access lines land
	logs := e.logs.String()
	// rowsKey[4:] is also the tail of the obs-text key.
	for _, secret := range []string{rowsKey[4:], long[:64], huge[:64]} {
		if strings.Contains(logs, secret) {
			t.Fatalf("a presented key (%.12q…) is in the log", secret)
		}
	}
}

// TestRequestTargetAndHost: the request target and Host decide nothing
// but the path (B-26, B-27, B-28, B-52, B-53, B-60).
func TestRequestTargetAndHost(t *testing.T) {
	e := startEnv(t, envOptions{auth: rowsAuth, gateway: gateway.Config{MaxHeaderBytes: 64 << 10}})
	k := "X-API-Key: " + rowsKey + "\r\n"
	// Another listener named by the absolute-form targets: it must never be
	// dialled.
	other, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { other.Close() })
	var dialled atomic.Int64
	go func() {
		for {
			c, err := other.Accept()
			if err != nil {
				return
			}
			dialled.Add(1)
			c.Close()
		}
	}()
	oa := other.Addr().String()
	chat := `{"model":"llama3.2","stream":false,"messages":[{"role":"user","content":"hi"}]}`
	many := strings.TrimSuffix(strings.Repeat("a=1&", 10_001), "&")
	for _, tc := range []struct {
		row, name, raw string
		status         int
		path, query    string // what the fake must receive
		route          string // the access log's route
	}{
		{row: "B-26", name: "absolute-form POST", raw: "POST http://" + oa + "/api/chat HTTP/1.1\r\nHost: " + oa + "\r\n" + k + "Content-Length: " + itoa(len(chat)) + "\r\n\r\n" + chat,
			status: 200, path: "/api/chat", route: "/api/chat"},
		{row: "B-26", name: "absolute-form with a query", raw: "GET http://evil.example/api/tags?q=1 HTTP/1.1\r\nHost: x\r\n" + k + "\r\n",
			status: 200, path: "/api/tags", query: "q=1", route: "/api/tags"},
		{row: "B-26", name: "absolute-form with userinfo", raw: "GET http://u:p@" + oa + "/api/tags HTTP/1.1\r\nHost: x\r\n" + k + "\r\n",
			status: 200, path: "/api/tags", route: "/api/tags"},
		// The authority-looking segment is a path segment: forwarded as the
		// path it was authorised on, which Ollama does not know.
		{row: "B-26", name: "network-path reference", raw: "POST //" + oa + "/api/chat HTTP/1.1\r\nHost: x\r\n" + k + "Content-Length: " + itoa(len(chat)) + "\r\n\r\n" + chat,
			status: 404, path: "/" + oa + "/api/chat", route: "unknown"},
		{row: "B-28", name: "Upgrade websocket", raw: "GET /api/tags HTTP/1.1\r\nHost: x\r\n" + k + "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
			status: 200, path: "/api/tags", route: "/api/tags"},
		{row: "B-28", name: "Upgrade h2c", raw: "POST /api/chat HTTP/1.1\r\nHost: x\r\n" + k + "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nContent-Length: " + itoa(len(chat)) + "\r\n\r\n" + chat,
			status: 200, path: "/api/chat", route: "/api/chat"},
		{row: "B-52", name: "unparseable query", raw: "GET /api/tags?a=1&a=%zz;b&&=x&%ff=%C0%AF&q=a+b%2B&x=%u0041 HTTP/1.1\r\nHost: x\r\n" + k + "\r\n",
			status: 200, path: "/api/tags", query: "a=1&a=%zz;b&&=x&%ff=%C0%AF&q=a+b%2B&x=%u0041", route: "/api/tags"},
		{row: "B-52", name: "10001 parameters", raw: "GET /api/tags?" + many + " HTTP/1.1\r\nHost: x\r\n" + k + "\r\n",
			status: 200, path: "/api/tags", query: many, route: "/api/tags"},
		{row: "B-53", name: "unknown native path", raw: "GET /api/newthing?x=1 HTTP/1.1\r\nHost: x\r\n" + k + "\r\n",
			status: 404, path: "/api/newthing", query: "x=1", route: "unknown"},
		{row: "B-53", name: "unknown OpenAI path", raw: "POST /v1/newthing HTTP/1.1\r\nHost: x\r\n" + k + "Content-Length: 2\r\n\r\n{}",
			status: 404, path: "/v1/newthing", route: "unknown"},
		{row: "B-60", name: "foreign Host and forwarding headers", raw: "GET /api/tags HTTP/1.1\r\nHost: evil.example\r\n" + k +
			"X-Forwarded-Host: evil.example\r\nX-Forwarded-Proto: https\r\nForwarded: for=192.0.2.1;host=evil.example\r\nX-Real-IP: 192.0.2.1\r\n\r\n",
			status: 200, path: "/api/tags", route: "/api/tags"},
		{row: "B-61", name: "client X-Forwarded-For", raw: "GET /api/tags HTTP/1.1\r\nHost: x\r\n" + k + "X-Forwarded-For: 192.0.2.1\r\nX-Forwarded-For: 198.51.100.7, 10.0.0.1\r\n\r\n",
			status: 200, path: "/api/tags", route: "/api/tags"},
	} {
		t.Run(tc.row+" "+tc.name, func(t *testing.T) {
			id := rowID(tc.row, tc.name)
			raw := strings.Replace(tc.raw, "\r\n", "\r\nX-Correlation-ID: "+id+"\r\n", 1)
			before := len(e.fake.Requests())
			resps := rawResponses(t, strings.TrimPrefix(e.url, "http://"), raw+probe)
			if len(resps) != 2 || resps[0].status != tc.status || resps[1].status != 200 {
				t.Fatalf("%d responses %+v, want %d then the probe's 200", len(resps), resps, tc.status)
			}
			if resps[0].header.Get("Upgrade") != "" {
				t.Fatalf("Upgrade in the response: %v", resps[0].header)
			}
			reqs := e.fake.Requests()[before:]
			if len(reqs) != 1 {
				t.Fatalf("the fake received %d requests", len(reqs))
			}
			up := reqs[0]
			if up.Path != tc.path || up.RawQuery != tc.query {
				t.Fatalf("upstream target %q ? %.80q, want %q ? %.80q", up.Path, up.RawQuery, tc.path, tc.query)
			}
			if up.Host != e.fake.Addr() {
				t.Fatalf("upstream Host %q, want the upstream's own %q", up.Host, e.fake.Addr())
			}
			for _, h := range []string{"Upgrade", "Connection", "HTTP2-Settings", "X-Forwarded-Host", "X-Forwarded-Proto", "Forwarded", "X-Real-IP", "X-API-Key"} {
				if v := up.Header.Values(h); len(v) > 0 {
					t.Fatalf("%s reached the upstream: %q", h, v)
				}
			}
			if v := up.Header.Values("X-Forwarded-For"); len(v) != 1 || v[0] != "127.0.0.1" {
				t.Fatalf("upstream X-Forwarded-For %q, want the peer's address only", v)
			}
			waitFor(t, 2*time.Second, "access line", func() bool { return len(e.logs.accessLines(t, id)) == 1 })
			line := e.logs.accessLines(t, id)[0]
			if line["route"] != tc.route || line["remote_ip"] != "127.0.0.1" || line["status"] != float64(tc.status) {
				t.Fatalf("access line %v, want route %q remote_ip 127.0.0.1 status %d", line, tc.route, tc.status)
			}
		})
	}
	// The one inspection of the target: the gateway refuses %00 and a
	// backslash anywhere in it, query included, rather than forward them.
	t.Run("B-52 NUL escape in the query", func(t *testing.T) {
		framingCase{raw: "GET /api/tags?a=%00 HTTP/1.1\r\nHost: x\r\n" + k + "\r\n", want: []int{400}, code: "invalid_path", open: true}.run(t, e)
	})
	t.Run("B-53 unknown path still needs a key", func(t *testing.T) {
		framingCase{raw: "GET /api/newthing HTTP/1.1\r\nHost: x\r\n\r\n", want: []int{401}, code: "unauthorized", open: true}.run(t, e)
	})
	t.Run("B-27 absolute-form without Host", func(t *testing.T) {
		framingCase{raw: "GET http://" + oa + "/api/tags HTTP/1.1\r\n" + k + "\r\n", want: []int{400}, code: "bad_request"}.run(t, e)
	})
	if n := dialled.Load(); n != 0 {
		t.Fatalf("the host named in the target was dialled %d times", n)
	}
}

// TestTrustedProxies: from a trusted proxy, X-Forwarded-For is extended, and
// the client it names is the one in the access log and the per-IP failure
// budget (B-61).
func TestTrustedProxies(t *testing.T) {
	e := startEnv(t, envOptions{
		gateway: gateway.Config{TrustedProxies: []string{"127.0.0.0/8", "10.0.0.0/8"}},
		auth:    access.Config{Keys: rowsAuth.Keys, MaxFailuresPerIP: 2},
	})
	if s := time.Now().Second(); s >= 58 {
		time.Sleep(time.Duration(61-s) * time.Second) // the budget counts in minute windows
	}
	do := func(xff, key, id string) int {
		st, _, _ := e.do("GET", "/api/tags", "", map[string]string{"X-Forwarded-For": xff, "X-API-Key": key, "X-Correlation-ID": id})
		return st
	}
	if st := do("198.51.100.1, 203.0.113.7, 10.0.0.2", rowsKey, "rows-trusted-ok"); st != 200 {
		t.Fatalf("status %d", st)
	}
	reqs := e.fake.Requests()
	if v := reqs[len(reqs)-1].Header.Values("X-Forwarded-For"); len(v) != 1 || v[0] != "198.51.100.1, 203.0.113.7, 10.0.0.2, 127.0.0.1" {
		t.Fatalf("upstream X-Forwarded-For %q, want the list extended by the peer", v)
	}
	waitFor(t, 2*time.Second, "access line", func() bool { return len(e.logs.accessLines(t, "rows-trusted-ok")) == 1 })
	if ip := e.logs.accessLines(t, "rows-trusted-ok")[0]["remote_ip"]; ip != "203.0.113.7" {
		t.Fatalf("remote_ip %v, want the rightmost untrusted address", ip)
	}
	for i := 0; i < 2; i++ {
		if st := do("203.0.113.9", "guess", ""); st != 401 {
			t.Fatalf("guess %d: %d", i, st)
		}
	}
	if st := do("203.0.113.9", rowsKey, ""); st != 429 {
		t.Fatalf("the guessing client after its budget: %d, want 429", st)
	}
	if st := do("203.0.113.10", rowsKey, ""); st != 200 {
		t.Fatalf("another client behind the same proxy: %d, want 200", st)
	}
}
