package gateway

import (
	"bytes"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/vega-gateway/vega-gateway/pool"
)

// translator rewrites one upstream frame into what the client gets. It may
// return final=true to end the stream after the frame (a success marker),
// or an error to end it with a terminal error record.
type translator func(s *stream, frame []byte) (out []byte, final bool, err error)

// stream relays a framed upstream body (NDJSON or SSE) to the client. It
// runs on a goroutine of its own, on the client connection taken off
// fasthttp's workers (hijack.go) — the one goroutine a stream has — and
// WriteTo writes one chunk per batch of frames. When the writer is done —
// the client took everything, or a write to it failed — it calls
// CloseWithError, which closes the upstream body (discarding the
// connection unless it was read to the end), frees the pool slot and
// writes the access log line.
type stream struct {
	g         *Gateway
	x         *exchange
	resp      *fasthttp.Response
	release   func()
	fr        *framer
	sse       bool
	translate translator
	conn      net.Conn
	// out[off:] is what is left of the frame being handed out.
	out []byte
	off int
	// ended: nothing more will be read from upstream.
	ended bool
	// writeArmed is when the client write deadline was last moved.
	writeArmed time.Time
	// deadline is the route's maximum duration (zero: none).
	deadline time.Time
	// relayed counts the frame bytes handed out, against maxBytes
	// (gateway.max_stream_bytes; 0: none).
	relayed, maxBytes int64
	// aborted is set by a drain that outlived gateway.drain_timeout.
	aborted atomic.Bool
	// mu orders an abort against the stream's close, so an interrupt can
	// never reach a connection already handed back to the pool.
	mu     sync.Mutex
	closed bool
	// head is the response head a stream writes before its first frame,
	// chunked whether the body goes in chunks (HTTP/1.1), and keepAlive
	// whether the connection serves on after it (hijack.go).
	head               []byte
	chunked, keepAlive bool
	// rec collects the frames sent, as sent, for the response cache (nil:
	// not recorded), and recType is the response's content type.
	rec, recType []byte
}

func (g *Gateway) newStream(ctx *fasthttp.RequestCtx, x *exchange, resp *fasthttp.Response, release func(), sse bool, translate translator) *stream {
	s := &stream{
		g: g, x: x, resp: resp, release: release, sse: sse, translate: translate,
		fr:   newFramer(resp.BodyStream(), sse, g.cfg.MaxFrameBytes),
		conn: ctx.Conn(),
	}
	if g.cfg.MaxStreamDuration > 0 && !x.route.manage {
		s.deadline = x.start.Add(g.cfg.MaxStreamDuration)
		pool.LimitBody(resp, s.deadline)
	}
	if !x.route.manage {
		s.maxBytes = g.cfg.MaxStreamBytes
	}
	if x.cacheStore {
		s.rec = make([]byte, 0, 4<<10)
		s.recType = append([]byte(nil), ctx.Response.Header.ContentType()...)
	}
	g.streams.add(s)
	return s
}

// abort ends the stream early with a shutting_down record (drain deadline).
func (s *stream) abort() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		s.aborted.Store(true)
		pool.Interrupt(s.resp)
	}
}

// WriteTo writes the stream to w, a chunkWriter, which sends each Write as
// one chunk. Frames that are already buffered when one is written — a
// client or a gateway running behind — go out in the same chunk: relayed
// frames lie end to end in the framer's buffer, so the batch is one slice,
// one write, as nginx sends what one read brought. Each frame is still
// inspected on its own; chunk boundaries carry no meaning in HTTP, and a
// frame is never split.
func (s *stream) WriteTo(w io.Writer) (total int64, err error) {
	for {
		for s.off >= len(s.out) {
			if s.ended {
				return total, nil
			}
			s.advance()
		}
		chunk := s.out[s.off:]
		s.off = len(s.out)
		for s.translate == nil && !s.ended && len(chunk) < maxBatchBytes && s.fr.ready() {
			s.advance()
			if !adjacent(chunk, s.out) {
				break // not from the buffer (a terminal record): it goes next
			}
			chunk = chunk[:len(chunk)+len(s.out)]
			s.off = len(s.out)
		}
		n, err := w.Write(chunk)
		s.x.bytesOut += int64(n)
		total += int64(n)
		if err != nil {
			return total, err
		}
	}
}

// maxBatchBytes bounds one batched chunk.
const maxBatchBytes = 64 << 10

// adjacent reports whether b starts where a ends, in the same array.
func adjacent(a, b []byte) bool {
	return len(b) > 0 && cap(a)-len(a) >= len(b) && &a[:len(a)+1][len(a)] == &b[0]
}

// advance loads the next frame, or the terminal record if loading it
// panics: a bug must not take the process down, nor end the stream
// without a terminal record.
func (s *stream) advance() {
	defer func() {
		if r := recover(); r != nil {
			s.g.recovered(s.x, r)
			s.ended = true
			s.out, s.off = terminalFrame(s.x.route.family, s.sse, errInternal, s.x.id), 0
		}
	}()
	if s.g.faultHook != nil {
		s.g.faultHook("stream")
	}
	s.nextFrame()
}

// nextFrame loads the next frame to hand out, or the terminal record.
func (s *stream) nextFrame() {
	frame, err := s.fr.next()
	if err != nil {
		s.ended = true
		if err == io.EOF {
			if s.translate != nil {
				// /chat: an upstream that ends without its final chunk was cut short.
				s.fail(pool.ClassifyBodyError(io.ErrUnexpectedEOF))
				return
			}
			s.out, s.off = nil, 0
			return
		}
		switch {
		case s.aborted.Load():
			s.failWith(errShuttingDownStream)
		case !s.deadline.IsZero() && !time.Now().Before(s.deadline):
			s.failWith(errMaxDuration)
		default:
			s.fail(classifyBody(err))
		}
		return
	}
	x := s.x
	if s.maxBytes > 0 {
		if s.relayed += int64(len(frame)); s.relayed > s.maxBytes {
			s.ended = true
			s.fail(pool.ErrTooLarge) // the frame that would pass the cap is not sent
			return
		}
	}
	if x.frames == 0 {
		x.ttft = time.Since(x.start)
	}
	x.frames++
	s.inspect(frame)
	if x.dropUsage && usageOnly(frame) {
		// Asked for by the gateway (askUsage), not by the client: read
		// by inspect, not relayed; the caller loads the next frame.
		s.out, s.off = nil, 0
		return
	}
	if s.translate != nil {
		out, final, terr := s.translate(s, frame)
		if terr != nil {
			s.ended = true
			s.fail(terr)
			return
		}
		if final {
			s.ended = true
		}
		frame = out
	}
	s.out, s.off = frame, 0
	if s.rec != nil {
		if len(s.rec)+len(frame) > s.g.cache.MaxEntryBytes() || !recordable(frame) {
			s.rec = nil
		} else {
			s.rec = append(s.rec, frame...)
		}
	}
	if d := s.g.cfg.WriteIdleTimeout; d > 0 {
		// The server writes this frame right after Read returns, in this
		// goroutine: a client that takes nothing for WriteIdleTimeout fails
		// the write, which ends the stream and frees the upstream. Re-armed
		// only once an eighth of it has passed (a timer update per frame
		// would be wasted), so the clock runs 7/8 to all of the setting.
		if now := time.Now(); now.Sub(s.writeArmed) > d/8 {
			_ = s.conn.SetWriteDeadline(now.Add(d))
			s.writeArmed = now
		}
	}
}

var (
	upstreamErrorPrefix = []byte(`{"error"`)
	usageKey            = []byte(`"usage":{`)
	finishReasonKey     = []byte(`"finish_reason":"`)
	dataPrefix          = []byte("data:")
)

// inspect notes what a frame says about the request: an Ollama error line
// mid-stream, and the final chunk's token counts.
func (s *stream) inspect(frame []byte) {
	if s.sse {
		if bytes.Contains(frame, usageKey) || bytes.Contains(frame, finishReasonKey) {
			if i := bytes.Index(frame, dataPrefix); i >= 0 {
				data := bytes.TrimSpace(frame[i+len(dataPrefix):])
				readOpenAIUsage(s.x, data)
				if r := s.x.route.name; r == "/v1/messages" || r == "/v1/responses" {
					// Anthropic's message_start and message_delta, the
					// Responses API's response.completed: usage nested.
					readTokenCounts(s.x, data)
				}
			}
		}
		return
	}
	if bytes.HasPrefix(frame, upstreamErrorPrefix) {
		s.x.outcome = outcomeUpstreamStreamError
		return
	}
	readFinalChunk(s.x, frame)
}

// fail ends the stream with a terminal error record in its own framing.
func (s *stream) fail(err error) {
	e := upstreamError(err)
	s.x.upstream().NoteError()
	s.g.log.Warn().Str("correlation_id", s.x.id).Str("outcome", e.outcome).Int("frames_out", s.x.frames).Err(err).Msg("upstream stream failed")
	s.failWith(e)
}

// failWith ends the stream with e as its terminal record.
func (s *stream) failWith(e apiError) {
	s.x.outcome = e.outcome
	s.out, s.off = terminalFrame(s.x.route.family, s.sse, e, s.x.id), 0
}

var (
	errShuttingDownStream = apiError{503, "shutting_down", "the gateway is shutting down", outcomeShutdownAborted, ""}
	errMaxDuration        = apiError{504, "max_duration", "the stream reached the gateway's maximum duration", outcomeMaxDuration, ""}
)

// CloseWithError is called once, when the stream's writer is done with it;
// writeErr is non-nil when writing to the client failed.
func (s *stream) CloseWithError(writeErr error) error {
	x := s.x
	if writeErr != nil {
		x.outcome = outcomeClientClosed
		if isTimeoutErr(writeErr) {
			x.outcome = outcomeClientWriteTimeout
		}
		if !s.ended {
			s.x.upstream().NoteClientDisconnect()
		}
	}
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.g.streams.remove(s)
	if s.rec != nil && writeErr == nil && x.outcome == "" && x.status == fasthttp.StatusOK && x.doneReason != "" {
		// A complete answer, wholly sent: kept for the next request.
		s.g.storeAnswer(x, true, s.recType, s.rec)
	}
	s.rec = nil
	_ = s.conn.SetWriteDeadline(time.Time{})
	pool.ClearLimit(s.resp)
	// Not read to EOF: fasthttp closes the upstream connection instead of
	// pooling it, so Ollama sees its client leave and stops generating.
	_ = s.resp.CloseBodyStream()
	fasthttp.ReleaseResponse(s.resp)
	s.release()
	x.finish()
	return nil
}

// rawStream relays an unframed upstream body (large or of unknown length)
// byte for byte, capped at upstream.max_response_bytes.
type rawStream struct {
	g       *Gateway
	x       *exchange
	resp    *fasthttp.Response
	release func()
	src     io.Reader
	left    int64
	ended   bool
	// head holds the body's first bytes, read by prefetch before the
	// response was committed, and headErr what that read ended with.
	head    []byte
	headErr error
	// tail keeps the body's last bytes, to read the token counts from at
	// its end (nil: a reply that carries none).
	tail []byte
}

// prefetch reads the body's first bytes (up to rawHeadBytes). It returns
// the error of an upstream that failed before sending any body byte; an
// empty body (EOF at once) is not an error.
func (r *rawStream) prefetch() error {
	buf := make([]byte, max(1, min(rawHeadBytes, r.left)))
	for {
		n, err := r.src.Read(buf)
		if n > 0 {
			r.head, r.headErr = buf[:n], err
			return nil
		}
		if err == io.EOF {
			r.headErr = io.EOF
			return nil
		}
		if err != nil {
			return err
		}
	}
}

const rawHeadBytes = 4 << 10

func (g *Gateway) newRawStream(x *exchange, resp *fasthttp.Response, release func()) *rawStream {
	r := &rawStream{g: g, x: x, resp: resp, release: release, src: resp.BodyStream(), left: int64(x.upstream().MaxResponseBytes())}
	if x.status == fasthttp.StatusOK && countsTokens(x.route) {
		// A non-streamed reply without a Content-Length (Ollama sends any
		// answer over ~2 KiB chunked): its counts come last.
		r.tail = make([]byte, 0, tokenTailBytes)
	}
	return r
}

// noteEnd reads the token counts from the tail of a body read to its end.
func (r *rawStream) noteEnd() {
	r.ended = true
	if r.tail != nil {
		readTokenCounts(r.x, r.tail)
	}
}

func (r *rawStream) Read(p []byte) (int, error) {
	if len(r.head) > 0 || r.headErr != nil {
		n := copy(p, r.head)
		r.head = r.head[n:]
		if r.tail != nil {
			r.tail = keepTail(r.tail, p[:n])
		}
		r.x.bytesOut += int64(n)
		r.left -= int64(n)
		if len(r.head) > 0 || r.headErr == nil {
			return n, nil
		}
		err := r.headErr
		r.headErr = nil
		if err != io.EOF {
			return n, r.noteErr(err)
		}
		r.noteEnd()
		return n, io.EOF
	}
	if r.left <= 0 {
		r.x.outcome = outcomeUpstreamTooLarge
		r.x.upstream().NoteError()
		return 0, pool.ErrTooLarge
	}
	if int64(len(p)) > r.left {
		p = p[:r.left]
	}
	n, err := r.src.Read(p)
	r.left -= int64(n)
	r.x.bytesOut += int64(n)
	if r.tail != nil {
		r.tail = keepTail(r.tail, p[:n])
	}
	if err == io.EOF {
		r.noteEnd()
	} else if err != nil {
		err = r.noteErr(err)
	}
	return n, err
}

// noteErr records an upstream body error met mid-relay.
func (r *rawStream) noteErr(err error) error {
	r.ended = true
	e := upstreamError(classifyBody(err))
	r.x.outcome = e.outcome
	r.x.upstream().NoteError()
	return err
}

// CloseWithError: see stream.CloseWithError.
func (r *rawStream) CloseWithError(writeErr error) error {
	if writeErr != nil && r.x.outcome == "" {
		r.x.outcome = outcomeClientClosed
		if !r.ended {
			r.x.upstream().NoteClientDisconnect()
		}
	}
	_ = r.resp.CloseBodyStream()
	fasthttp.ReleaseResponse(r.resp)
	r.release()
	r.x.finish()
	return nil
}

// classifyBody maps an error met while reading an upstream body.
func classifyBody(err error) error {
	if errors.Is(err, errFrameTooLarge) || errors.Is(err, errTruncatedFrame) {
		if errors.Is(err, errTruncatedFrame) {
			return errors.Join(pool.ErrReset, err)
		}
		return err
	}
	return pool.ClassifyBodyError(err)
}
