package gateway

import (
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/vega-gateway/vega-gateway/fleet"
)

// A blob upload (POST /api/blobs/:digest, what `ollama create` sends a
// GGUF file's weights as: hundreds of MB to tens of GB) goes upstream as it
// arrives. The handler reads the client's body stream in uploadChunkBytes
// pieces and fasthttp's client writes each to the backend before the next
// is read, so the gateway holds one piece per upload whatever the size;
// TCP flow control slows the client to the backend's pace. With several
// backends (and none pinned) every piece goes to each of them in turn
// before the next is read: the slowest backend sets the pace, and none is
// held further back than one piece.
//
// The clock is per read: gateway.read_timeout bounds each wait for the
// client's next bytes, not the whole body, which may take hours. The body
// is bounded by gateway.max_blob_bytes.

// uploadChunkBytes is the piece a blob upload is copied in: big enough
// that a gigabyte is 16,384 system calls each way, small enough that
// thousands of uploads would hold little.
const uploadChunkBytes = 64 << 10

var uploadChunkPool = sync.Pool{New: func() any { b := make([]byte, uploadChunkBytes); return &b }}

var (
	// errUploadTooLarge: the client's body passed gateway.max_blob_bytes;
	// the upload is aborted (raise the limit for bigger models).
	errUploadTooLarge = errors.New("upload larger than gateway.max_blob_bytes")
	// errUploadIdle: no byte of the body came for gateway.read_timeout;
	// the upload is aborted (a client on a slow link needs a longer
	// read_timeout).
	errUploadIdle = errors.New("no upload bytes within gateway.read_timeout")
	// errTeeLeft: a backend's call ended (failed, or answered) before the
	// body was all sent; the tee stops feeding it.
	errTeeLeft = errors.New("gateway: backend left the upload")
	// errUploadClientGone: the client closed its connection mid-body.
	errUploadClientGone = errors.New("client left mid-upload")
	// errUploadMalformed: the body's chunked framing is broken.
	errUploadMalformed = errors.New("malformed upload body")
)

// uploadBody is a blob upload's body as it streams from the client: each
// read first pushes the connection's read deadline idle ahead, and the
// bytes are counted against max. Its first failure is kept in err, so
// that after the upstream call fails the gateway can tell the client's
// fault from the backend's. Only the handler's goroutine reads it.
type uploadBody struct {
	src  io.Reader
	conn net.Conn
	idle time.Duration
	max  int64 // 0: no cap
	size int64 // Content-Length; -1: chunked
	n    int64
	err  error
	eof  bool // the body was read to its end
}

func (u *uploadBody) Read(p []byte) (int, error) {
	if u.err != nil {
		return 0, u.err
	}
	if u.idle > 0 && u.conn != nil {
		// The server's connection wrapper applies it at the next read
		// from the socket, and re-arms only when it has moved by an
		// eighth (readahead.go): no timer update per piece.
		_ = u.conn.SetReadDeadline(time.Now().Add(u.idle))
	}
	n, err := u.src.Read(p)
	u.n += int64(n)
	if u.max > 0 && u.n > u.max {
		u.err = errUploadTooLarge
		return 0, u.err
	}
	switch {
	case err == nil:
	case err == io.EOF:
		u.eof = true
		if u.size >= 0 && u.n < u.size {
			// fasthttp ends a request body stream at the connection's end
			// without checking its length.
			u.err = fmt.Errorf("%w: %d of %d bytes", errUploadClientGone, u.n, u.size)
			err = u.err
		}
	case isTimeoutErr(err):
		u.err = fmt.Errorf("%w (%s)", errUploadIdle, u.idle)
		err = u.err
	case clientLeft(err):
		u.err = fmt.Errorf("%w: %w", errUploadClientGone, err)
		err = u.err
	default:
		u.err = fmt.Errorf("%w: %w", errUploadMalformed, err)
		err = u.err
	}
	return n, err
}

// clientLeft tells a body broken off by the client (the connection closed
// or reset before the body's end) from a malformed one (fasthttp's chunk
// parser refusing the framing).
func clientLeft(err error) bool {
	var ne net.Error
	return errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, syscall.ECONNRESET) || errors.As(err, &ne)
}

// WriteTo copies the body in uploadChunkBytes pieces. fasthttp's client
// prefers a WriterTo (and, for a chunked body, one that says so with
// SupportsBodyWriteTo): a piece bigger than its write buffer then goes to
// the socket in one write instead of one per 4 KiB.
func (u *uploadBody) WriteTo(w io.Writer) (int64, error) { return copyChunks(w, u) }

// SupportsBodyWriteTo tells fasthttp that WriteTo writes what Read reads.
func (u *uploadBody) SupportsBodyWriteTo() bool { return true }

// teeReader is one backend's end of a fleet-wide upload.
type teeReader struct{ *io.PipeReader }

func (r teeReader) WriteTo(w io.Writer) (int64, error) { return copyChunks(w, r.PipeReader) }
func (r teeReader) SupportsBodyWriteTo() bool          { return true }

func copyChunks(w io.Writer, r io.Reader) (int64, error) {
	bp := uploadChunkPool.Get().(*[]byte)
	defer uploadChunkPool.Put(bp)
	var total int64
	for {
		n, err := r.Read(*bp)
		if n > 0 {
			m, werr := w.Write((*bp)[:n])
			total += int64(m)
			if werr != nil {
				return total, werr
			}
		}
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// checkUploadLength refuses, before a byte is read, an upload whose
// Content-Length is over gateway.max_blob_bytes.
func (g *Gateway) checkUploadLength(ctx *fasthttp.RequestCtx) (apiError, bool) {
	if g.cfg.MaxBlobBytes > 0 && int64(ctx.Request.Header.ContentLength()) > g.cfg.MaxBlobBytes {
		return g.uploadTooLarge(), false
	}
	return apiError{}, true
}

func (g *Gateway) uploadTooLarge() apiError {
	return apiError{413, "body_too_large", fmt.Sprintf("the blob is larger than this gateway's limit of %d bytes (gateway.max_blob_bytes)", g.cfg.MaxBlobBytes), outcomeClientError, ""}
}

// serveUpload streams a blob upload to its backend (one backend, or the
// one X-Vega-Backend pins) or, with several, to all of them at once, and
// relays the answer: Ollama's 201 (created), 200 (already there) or 400
// (digest mismatch). It reports whether the response was handed to a
// stream.
func (g *Gateway) serveUpload(ctx *fasthttp.RequestCtx, x *exchange, keyInAuthorization bool) bool {
	t, e, ok := g.targetOf(ctx, x)
	if !ok {
		g.reject(ctx, x, e)
		return false
	}
	size := ctx.Request.Header.ContentLength() // -1: chunked
	u := &uploadBody{src: ctx.RequestBodyStream(), conn: ctx.Conn(), idle: g.cfg.ReadTimeout, max: g.cfg.MaxBlobBytes, size: int64(size)}
	if u.src == nil {
		u.src, u.size = eofReader{}, 0
	}
	headerBytes := len(ctx.Request.Header.RawHeaders())
	defer func() { x.bytesIn = headerBytes + int(u.n) }()
	if t.fanOut {
		g.uploadFleetWide(ctx, x, u, size, keyInAuthorization)
		return false
	}
	b, reason := t.pinned, fleet.ReasonPinned
	if b == nil {
		b, reason = g.fleet.First(), fleet.ReasonOnly
	}
	head := g.headRequest(ctx, x, keyInAuthorization)
	present := g.blobPresent(b, head, x.goneFn)
	fasthttp.ReleaseRequest(head)
	if present {
		// Ollama's own answer to an upload of a blob it has.
		x.backend, x.up, x.reason, x.attempts, x.upstreamStatus = b, b.Pool, reason, 1, fasthttp.StatusOK
		if !u.drain() {
			g.uploadFailed(ctx, x, u.err)
		}
		return false
	}
	req := acquireOutbound()
	g.outboundRequest(ctx, x, req, keyInAuthorization)
	req.SetBodyStream(u, size)
	resp := fasthttp.AcquireResponse()
	upStart := time.Now()
	release, err := g.send(x, t.target, req, resp)
	fasthttp.ReleaseRequest(req)
	x.ttfb = time.Since(upStart) - x.queueWait
	if u.err != nil {
		if err == nil {
			_ = resp.CloseBodyStream()
			release()
		}
		fasthttp.ReleaseResponse(resp)
		g.uploadFailed(ctx, x, u.err)
		return false
	}
	if err != nil {
		fasthttp.ReleaseResponse(resp)
		g.sendFailed(ctx, x, "", err)
		return false
	}
	return g.relay(ctx, x, resp, release, nil)
}

type eofReader struct{}

func (eofReader) Read([]byte) (int, error) { return 0, io.EOF }

// uploadFailed answers an upload that failed on the client's side: over
// the cap (413), stalled (408), malformed (400), or broken off (logged as
// client_closed).
// The upstream upload was aborted by then: the backend saw its connection
// close before the body's end, and discards what it had. The connection
// to the client is closed, since the rest of its body is still coming.
func (g *Gateway) uploadFailed(ctx *fasthttp.RequestCtx, x *exchange, err error) {
	var e apiError
	switch {
	case errors.Is(err, errUploadTooLarge):
		e = g.uploadTooLarge()
	case errors.Is(err, errUploadIdle):
		e = apiError{408, "request_timeout", fmt.Sprintf("no upload bytes received for %s (gateway.read_timeout); the upload was aborted", g.cfg.ReadTimeout), outcomeClientError, ""}
	case errors.Is(err, errUploadMalformed):
		e = errBodyMalformed
	default:
		e = errBodyClientGone
	}
	g.reject(ctx, x, e)
	ctx.SetConnectionClose()
	g.log.Warn().Str("correlation_id", x.id).Str("route", x.route.name).Str("outcome", e.outcome).Err(err).
		Msg("blob upload aborted")
}

// drain reads the rest of the body and drops it, under the same clock and
// cap. An answer given before the body's end would otherwise go out on a
// connection the server then closes with the body still arriving, and the
// client, still sending, may get a reset instead of the answer. It reports
// false if the body failed (u.err says why).
func (u *uploadBody) drain() bool {
	if !u.eof && u.err == nil {
		_, _ = copyChunks(io.Discard, u)
	}
	return u.err == nil
}

// headRequest is the upload's HEAD /api/blobs/:digest, asked of a backend
// before the upload. Ollama answers an upload of a blob it already has
// (`ollama create` run again) with 200 at once, without reading the body,
// and closes the connection after it; fasthttp's client writes a whole
// body before it reads an answer, so it would see only the connection
// closing under its writes. Asked first, the backend's 200 is relayed as
// Ollama gives it, and nothing is uploaded.
func (g *Gateway) headRequest(ctx *fasthttp.RequestCtx, x *exchange, keyInAuthorization bool) *fasthttp.Request {
	req := acquireOutbound()
	g.outboundRequest(ctx, x, req, keyInAuthorization)
	req.Header.SetMethod(fasthttp.MethodHead)
	req.Header.Del("Content-Type")
	return req
}

// blobPresent reports whether backend b answered req (headRequest) 200.
// Any failure counts as absent: the upload that follows meets it again,
// and reports it.
func (g *Gateway) blobPresent(b *fleet.Backend, req *fasthttp.Request, gone func() bool) bool {
	rel, _, err := b.Pool.AcquireWhile(g.closing, gone)
	if err != nil {
		return false
	}
	defer rel()
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseResponse(resp)
	if _, err := b.Pool.DoWhile(req, resp, gone); err != nil {
		return false
	}
	st := resp.StatusCode()
	_ = resp.CloseBodyStream()
	return st == fasthttp.StatusOK
}

// uploadFleetWide sends one upload to every backend at once: each
// backend's request reads its own pipe, and the handler's goroutine tees
// the client's body into the pipes piece by piece. A backend that fails
// (or answers) before the end is dropped from the tee and counts as
// failed; the others go on. The answer follows serveFleetWide's rules
// for POST blobs.
func (g *Gateway) uploadFleetWide(ctx *fasthttp.RequestCtx, x *exchange, u *uploadBody, size int, keyInAuthorization bool) {
	f := &fanOut{g: g, x: x, start: time.Now(), op: operationName(x.route.name, false)}
	f.goneFn = f.gone
	for _, b := range g.fleet.Backends() {
		f.calls = append(f.calls, &backendCall{b: b})
	}
	if len(f.calls) == 0 { // discovery has found none yet, or every one left
		e, _ := fleetError(fleet.ErrNoBackend, "")
		g.reject(ctx, x, e)
		ctx.SetConnectionClose() // the body is still on the wire, unread
		return
	}
	f.buildRequests(ctx, keyInAuthorization)
	heads := make([]*fasthttp.Request, len(f.calls))
	for i := range f.calls {
		heads[i] = g.headRequest(ctx, x, keyInAuthorization)
	}
	pipes := make([]*io.PipeWriter, len(f.calls))
	// present[i]: backend i had the blob (each goroutine writes its own;
	// read after Wait).
	present := make([]bool, len(f.calls))
	var wg sync.WaitGroup
	for i, c := range f.calls {
		pr, pw := io.Pipe()
		pipes[i] = pw
		c.req.SetBodyStream(teeReader{pr}, size)
		wg.Add(1)
		// Owned by this handler, which waits for it below; it ends when
		// the backend has answered or failed, and closes its pipe so the
		// tee never waits on a backend that has left.
		go func() {
			defer wg.Done()
			defer pr.CloseWithError(errTeeLeft)
			defer f.recoverCall(c)
			present[i] = g.blobPresent(c.b, heads[i], f.goneFn)
			fasthttp.ReleaseRequest(heads[i])
			if present[i] {
				// As Ollama answers an upload of a blob it has (headRequest).
				c.status = fasthttp.StatusOK
				fasthttp.ReleaseRequest(c.req)
				c.req = nil
				return
			}
			f.callWhole(c)
			c.b.RefreshCatalogue()
		}()
	}
	tee(u, pipes)
	wg.Wait()
	f.note()
	if !slices.Contains(present, false) {
		u.drain() // every backend had it: the tee stopped at once
	}
	if u.err != nil {
		g.uploadFailed(ctx, x, u.err)
		return
	}
	f.answer(ctx)
}

// tee copies the body into every pipe, one piece at a time: a piece is
// written to each backend still taking it before the next is read. At the
// end each pipe is closed with the client's error, or none (EOF).
func tee(u *uploadBody, pipes []*io.PipeWriter) {
	bp := uploadChunkPool.Get().(*[]byte)
	defer uploadChunkPool.Put(bp)
	live := len(pipes)
	var err error
	for live > 0 && err == nil {
		var n int
		n, err = u.Read(*bp)
		if n == 0 {
			continue
		}
		for i, pw := range pipes {
			if pw == nil {
				continue
			}
			if _, werr := pw.Write((*bp)[:n]); werr != nil {
				pipes[i] = nil
				live--
			}
		}
	}
	if err == io.EOF {
		err = nil
	}
	for _, pw := range pipes {
		if pw != nil {
			_ = pw.CloseWithError(err)
		}
	}
}
