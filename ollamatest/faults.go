package ollamatest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Request-level fault modes, selected by FaultHeader, by a model named
// FaultModelPrefix+mode, or server-wide by SetDefaultFault (in that order).
// A frame is one NDJSON line or one SSE event; stream modes act on streamed
// replies (chat, generate, OpenAI, Anthropic, pull/push/create progress).
const (
	FaultHang        = "hang"                 // read the request, never answer until the client or Close ends it
	FaultTTFT        = "ttft"                 // ttft=<duration>: wait before the response header, then answer normally
	FaultStallAfter  = "stall_after"          // stall_after=N: send N frames, then stall until the client leaves
	FaultDieAfter    = "die_after"            // die_after=N: send N frames, then close (FIN) without the last chunk
	FaultRSTAfter    = "rst_after"            // rst_after=N: send N frames, then reset (RST)
	FaultHalfLine    = "half_line_then_close" // one frame, half of the next, then close (FIN)
	FaultErrorAfter  = "error_after"          // error_after=N: N frames, an in-band error record, a normal end
	FaultFailStatus  = "fail_status"          // fail_status=S: status S with the route's error body
	FaultRaw         = "raw"                  // raw=<name>: canned raw bytes, see RawResponseNames; then close
	FaultHugeLine    = "huge_line"            // the first token frame carries HugeLineSize bytes of text
	FaultBigBody     = "big_body"             // a non-streamed JSON body of BigBodySize bytes, on any route
	FaultTrickle     = "trickle"              // stream one byte every TokenDelay (or TrickleInterval), forever
	FaultInfinite    = "infinite"             // stream tokens forever, never done
	FaultSlowVersion = "slow_version"         // slow_version=<duration>: delay /api/version only
	FaultGated       = "gated"                // frame 1, then each next frame waits for ReleaseFrame (GateTimeout, then FIN)
)

// Sizes and waits of the fault modes.
const (
	HugeLineSize = 9 << 20          // payload bytes of the huge_line frame
	BigBodySize  = 70 << 20         // payload bytes of the big_body response
	GateTimeout  = 10 * time.Second // a gated frame not released this long aborts the stream
	// TrickleInterval paces the trickle mode when TokenDelay is zero.
	TrickleInterval = 100 * time.Millisecond
	// InfiniteMinDelay paces the infinite mode when TokenDelay is zero.
	InfiniteMinDelay = time.Millisecond

	// HugeContentLength is the Content-Length raw=huge_content_length announces.
	HugeContentLength = 100 << 20
)

// Messages of the injected errors.
const (
	// StreamErrorMessage is the in-band error of error_after.
	StreamErrorMessage = "an error was encountered while running the model: unexpected EOF"
	// BusyMessage is Ollama's 503 body when its queue is full.
	BusyMessage = "server busy, please try again.  maximum pending requests exceeded"
)

// fault is a parsed fault mode.
type fault struct {
	spec string
	mode string
	n    int
	d    time.Duration
	raw  string
}

// parseFault parses "mode" or "mode=arg".
func parseFault(spec string) (fault, error) {
	f := fault{spec: spec}
	mode, arg, hasArg := strings.Cut(strings.TrimSpace(spec), "=")
	f.mode = mode
	if mode == "die_mid_stream_after" { // RELIABILITY.md's name for it
		f.mode = FaultDieAfter
	}
	bad := func(err error) (fault, error) {
		return fault{}, fmt.Errorf("ollamatest: fault %q: %w", spec, err)
	}
	switch f.mode {
	case "":
		return fault{}, nil
	case FaultHang, FaultHalfLine, FaultHugeLine, FaultBigBody, FaultTrickle, FaultInfinite, FaultGated:
		if hasArg {
			return bad(errors.New("takes no argument"))
		}
	case FaultTTFT, FaultSlowVersion:
		d, err := time.ParseDuration(arg)
		if err != nil || d < 0 {
			return bad(errors.New("want a duration such as 500ms"))
		}
		f.d = d
	case FaultStallAfter, FaultDieAfter, FaultRSTAfter, FaultErrorAfter:
		n, err := strconv.Atoi(arg)
		if err != nil || n < 0 {
			return bad(errors.New("want a frame count >= 0"))
		}
		f.n = n
	case FaultFailStatus:
		n, err := strconv.Atoi(arg)
		if err != nil || n < 200 || n > 999 {
			return bad(errors.New("want a status code"))
		}
		f.n = n
	case FaultRaw:
		if _, ok := rawResponse(arg); !ok {
			return bad(fmt.Errorf("unknown raw response; have %s", strings.Join(RawResponseNames(), ", ")))
		}
		f.raw = arg
	case ConnFaultRSTOnAccept, ConnFaultCloseOnAccept:
		return bad(errors.New("is a connection fault: use SetConnFault"))
	default:
		return bad(errors.New("unknown mode"))
	}
	return f, nil
}

// SetDefaultFault sets the fault mode of requests that select none themselves
// (for clients that can set neither a header nor the model); "" clears it.
func (s *Server) SetDefaultFault(mode string) error {
	f, err := parseFault(mode)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.defaultFault = f
	s.mu.Unlock()
	return nil
}

// ReleaseFrame lets one waiting frame of a gated stream go. Releases are
// counted, so a release given before the stream waits is not lost; all gated
// streams of the server share them.
func (s *Server) ReleaseFrame() {
	select {
	case s.gate <- struct{}{}:
	default:
	}
}

// faultFor picks the request's fault: header, then model name, then default.
func (s *Server) faultFor(r *http.Request, body []byte) (fault, error) {
	if h := r.Header.Get(FaultHeader); h != "" {
		return parseFault(h)
	}
	if len(body) > 0 && body[0] == '{' {
		var m struct {
			Model string `json:"model"`
		}
		if json.Unmarshal(body, &m) == nil && strings.HasPrefix(m.Model, FaultModelPrefix) {
			return parseFault(strings.TrimPrefix(m.Model, FaultModelPrefix))
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.defaultFault, nil
}

// preFault applies the modes that act before any route logic and reports
// whether the route should run.
func (x *exchange) preFault(version bool) bool {
	f := x.f
	switch f.mode {
	case FaultHang:
		x.waitGone()
		return false
	case FaultTTFT:
		return x.pause(f.d)
	case FaultSlowVersion:
		return !version || x.pause(f.d)
	case FaultFailStatus:
		x.fail(f.n, failMessage(f.n))
		return false
	case FaultRaw:
		b, _ := rawResponse(f.raw)
		x.raw(b)
		return false
	case FaultBigBody:
		x.bigBody()
		return false
	}
	return true
}

// failMessage is the error of fail_status=S.
func failMessage(status int) string {
	switch status {
	case http.StatusServiceUnavailable:
		return BusyMessage
	case http.StatusInternalServerError:
		return "llama runner process has terminated: exit status 2"
	case 499:
		return "request canceled"
	}
	return strings.ToLower(http.StatusText(status))
}

// rawResponse returns the canned bytes of raw=<name> (RELIABILITY F-10).
func rawResponse(name string) (string, bool) {
	switch name {
	case "garbage_status":
		return "HTTP/1.1 2OO OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}", true
	case "cl_and_te":
		return "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", true
	case "short_body":
		return "HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: 100\r\n\r\n{\"model\":\"llama3.2\",", true
	case "switching_protocols":
		return "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", true
	case "bad_chunk":
		return "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n{}\n\r\n0\r\n\r\n", true
	case "not_json":
		return "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nContent-Length: 24\r\n\r\n<html>not json</html>\n\n\n", true
	case "huge_content_length":
		// A non-streamed reply announcing HugeContentLength bytes; two
		// arrive, then FIN (F-11: refused on the length alone).
		return "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " + strconv.Itoa(HugeContentLength) + "\r\n\r\n{}", true
	case "lowercase_hop":
		// Hop-by-hop headers, and one the Connection header names, written
		// in lower case as many non-Go servers do.
		return "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nkeep-alive: timeout=5\r\n" +
			"proxy-authenticate: Basic\r\nconnection: x-private\r\nx-private: secret\r\nx-kept: yes\r\n\r\n{}", true
	case "embed_duplicate_index":
		// A /v1/embeddings list whose two vectors both claim index 0.
		body := `{"object":"list","data":[{"object":"embedding","embedding":[0.1,0.2],"index":0},` +
			`{"object":"embedding","embedding":[0.3,0.4],"index":0}],"model":"nomic-embed-text","usage":{"prompt_tokens":2,"total_tokens":2}}`
		return "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body, true
	case "huge_header":
		return "HTTP/1.1 200 OK\r\nX-Huge: " + strings.Repeat("a", 64<<10) + "\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}", true
	}
	return "", false
}

// RawResponseNames lists the names raw=<name> accepts.
func RawResponseNames() []string {
	return []string{"bad_chunk", "cl_and_te", "embed_duplicate_index", "garbage_status", "huge_content_length", "huge_header", "lowercase_hop", "not_json", "short_body", "switching_protocols"}
}

// raw writes canned bytes on the hijacked connection and closes it.
func (x *exchange) raw(b string) {
	c := x.hijack()
	if c == nil {
		return
	}
	_, _ = c.Write([]byte(b))
	_ = c.Close()
}

// hijack takes the connection over from net/http; buffered response bytes
// are flushed first. It returns nil (and ends the handler's response) if
// that fails.
func (x *exchange) hijack() *conn {
	x.aborted = true
	nc, brw, err := http.NewResponseController(x.w).Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	_ = brw.Flush()
	c, ok := nc.(*conn)
	if !ok {
		_ = nc.Close()
		return nil
	}
	return c
}

// abort ends the response mid-body: FIN, or RST when rst is set.
func (x *exchange) abort(rst bool) {
	c := x.hijack()
	if c == nil {
		return
	}
	if rst {
		c.reset()
		return
	}
	_ = c.Close()
}

// bigBody sends one JSON object of about BigBodySize bytes, built as it is
// written, in the route family's non-streamed shape.
func (x *exchange) bigBody() {
	var prefix, suffix string
	now := time.Now().UTC().Format(time.RFC3339Nano)
	switch x.family {
	case familyOpenAI:
		prefix = `{"id":"chatcmpl-0","object":"chat.completion","created":` + strconv.FormatInt(time.Now().Unix(), 10) +
			`,"model":"big","system_fingerprint":"fp_ollama","choices":[{"index":0,"message":{"role":"assistant","content":"`
		suffix = `"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}` + "\n"
	case familyAnthropic:
		prefix = `{"id":"msg_0","type":"message","role":"assistant","model":"big","content":[{"type":"text","text":"`
		suffix = `"}],"stop_reason":"end_turn","usage":{"input_tokens":1,"output_tokens":1}}` + "\n"
	default:
		prefix = `{"model":"big","created_at":"` + now + `","message":{"role":"assistant","content":"`
		suffix = `"},"done_reason":"stop","done":true,"eval_count":1}`
	}
	x.w.Header().Set("Content-Type", "application/json; charset=utf-8")
	x.w.WriteHeader(http.StatusOK)
	if x.write([]byte(prefix)) && x.fill(BigBodySize) {
		x.write([]byte(suffix))
	}
}

// fill writes n bytes of 'a' in 64 KiB pieces.
func (x *exchange) fill(n int) bool {
	chunk := bytes.Repeat([]byte{'a'}, 64<<10)
	for n > 0 {
		k := min(n, len(chunk))
		if !x.write(chunk[:k]) {
			return false
		}
		n -= k
	}
	return true
}
