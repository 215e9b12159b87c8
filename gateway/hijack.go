package gateway

import (
	"crypto/tls"
	"errors"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/valyala/fasthttp"
)

// sendStream hands a framed stream its response. The connection is taken
// off fasthttp's worker (hijacked): the stream runs on a goroutine of its
// own, writes each batch of frames with one system call straight onto the
// socket, and hands the connection back to the server when it ends. While
// it runs, the stream holds no RequestCtx, no server write buffer and no
// worker parked deep in fasthttp's serve loop: with thousands of slow
// streams open, those would be over a third of what a stream costs
// (`go run ./bench -cases scale`). An HTTP/1.1 client gets chunks; an
// HTTP/1.0 client, which cannot read them, gets the frames as they are,
// the body ended by closing the connection, as Ollama's own server does.
func (g *Gateway) sendStream(ctx *fasthttp.RequestCtx, s *stream) {
	h := &ctx.Response.Header
	s.chunked = ctx.Request.Header.IsHTTP11()
	if s.chunked {
		h.SetContentLength(-1) // Transfer-Encoding: chunked
	} else {
		h.SetContentLength(-2) // neither length nor chunks: read until close
	}
	// What fasthttp would decide after the handler: a client that asked
	// for close, or a drain under way, gets Connection: close.
	if !s.chunked || ctx.Request.Header.ConnectionClose() || g.draining.Load() {
		h.SetConnectionClose()
	}
	s.keepAlive = !h.ConnectionClose()
	if len(h.Server()) == 0 {
		h.SetServer(g.server.Name) // fasthttp adds it after the handler, to what it writes
	}
	// Sized once: appending to nil grew it four times per stream.
	s.head = h.AppendBytes(make([]byte, 0, streamHeadBytes))
	g.hijacked.Add(1)
	ctx.HijackSetNoResponse(true)
	// fasthttp calls the hijack handler on a goroutine of its own and keeps
	// the RequestCtx until it returns, so the handler only starts the
	// stream's goroutine. fasthttp skips the handler only if it cannot
	// clear the deadlines of the connection, which fails only once the
	// connection is closed, and nothing closes it before this point.
	ctx.Hijack(s.startHijacked)
}

// streamHeadBytes holds a stream response's status line and headers as
// Ollama's are relayed (about 250 bytes) with room to spare.
const streamHeadBytes = 512

// startHijacked is the hijack handler: c is the client connection, which
// the stream now owns (Server.KeepHijackedConns).
func (s *stream) startHijacked(c net.Conn) { go s.runHijacked(c) }

// runHijacked relays the stream onto c, then either gives the connection
// back to the server for the client's next request or closes it.
func (s *stream) runHijacked(hijacked net.Conn) {
	growStreamStack(0)
	g := s.g
	c := handback(hijacked, g.cfg.KeepAliveTimeout)
	w := &chunkWriter{conn: c.sock, head: s.head, raw: !s.chunked}
	s.head = nil
	var err error
	panicked := false
	func() {
		defer func() {
			if r := recover(); r != nil {
				g.recovered(s.x, r)
				panicked = true
			}
		}()
		if _, err = s.WriteTo(w); err == nil {
			err = w.finish()
		}
	}()
	keep := err == nil && !panicked && s.keepAlive && !g.draining.Load()
	// The response is over: CloseWithError frees the upstream side, logs
	// the access line and clears the connection's write deadline.
	_ = s.CloseWithError(err)
	g.hijacked.Add(-1)
	if !keep {
		_ = c.Close()
		return
	}
	// ServeConn closes c when the client is done with it.
	c.waitIdle = g.cfg.ReadTimeout > 0
	growStack(0)
	_ = g.server.ServeConn(c)
}

// servingStack is about what serving a proxied request takes of a
// goroutine's stack, fasthttp's frames included; streamStack is about what
// relaying a stream takes: parked in the netpoller under fasthttp's body
// reader, fifteen frames deep.
const (
	servingStack = 8 << 10
	streamStack  = 2 << 10
)

// growStreamStack and growStack grow the calling goroutine's stack while
// it is still shallow, to what the work ahead will take. Go copies a stack
// to grow it and adjusts every frame on it, so a copy deep in the work
// costs several times a shallow one: a paced stream's two copies cost
// 27,400 instructions deep and 7,300 shallow (callgrind).
//
// A stream's goroutine starts with a small stack. growStreamStack, called
// first thing, gives it the 4 KiB the relay would grow it to at its first
// wait for a token, fifteen frames deep, so memory per stream is the same
// and the copy is shallow. growStack, when the stream hands the connection
// back, makes room for serving the client's next request, which would
// otherwise grow the stack some thirty frames deep (~17,000 instructions
// per stream). Only a goroutine that serves a connection after its stream
// holds the bigger stack (until the next stream takes the connection or it
// closes; the collector halves a stack that stays mostly unused).
//
// The index comes from the caller so that the compiler must keep the
// frame: the frame is what grows the stack.
//
//go:noinline
func growStreamStack(i int) byte {
	var pad [streamStack]byte
	pad[i%streamStack] = 1
	return pad[(i+1)%streamStack]
}

// growStack: see growStreamStack.
//
//go:noinline
func growStack(i int) byte {
	var pad [servingStack]byte
	pad[i%servingStack] = 1
	return pad[(i+1)%servingStack]
}

// clientConn is a client connection that a stream took from fasthttp and
// hands back to it (Server.ServeConn) for the client's next request.
//
// Reads go to the socket, or, while the client has pipelined bytes behind
// the stream's request, through fasthttp's hijack wrapper, whose buffer
// holds them; writes, deadlines and the client-gone check go to the socket
// itself, whose writev and syscall access the wrapper hides. A connection
// that carries stream after stream keeps one clientConn: handback finds it
// again under the next wrapper.
type clientConn struct {
	net.Conn          // the socket, or fasthttp's hijack wrapper (see handback)
	sock     net.Conn // the socket (the TLS connection under gateway.tls)
	// keepAlive is gateway.keepalive_timeout. ServeConn takes a handed-back
	// connection for a new one and waits for its first request only
	// read_timeout; waitIdle makes that first deadline keepAlive, as for
	// any keep-alive connection.
	keepAlive time.Duration
	waitIdle  bool
	// pending is a byte handback read from the wrapper, served first.
	pending []byte
}

// expired is a read deadline long past: a read under it returns what is
// already buffered, or fails at once without waiting or reading.
var expired = time.Unix(1, 0)

// handback returns the clientConn for a connection fasthttp has just
// handed to a hijack handler.
//
// fasthttp's wrapper reads through the connection's read buffer
// (gateway.max_header_bytes), which, with Server.StreamRequestBody
// (upload.go), it hands over instead of returning it to its pool: kept,
// every stream would hold one for its whole life, and a connection that
// carries stream after stream would pile wrappers up. So the wrapper is
// kept only while it holds bytes the client pipelined behind the stream's
// request. A one-byte read under an expired deadline tells: a byte comes
// back if one is buffered (kept in pending and served first), else the
// read fails at once, having read nothing, and the wrapper and its buffer
// are let go.
func handback(hijacked net.Conn, keepAlive time.Duration) *clientConn {
	u, ok := hijacked.(interface{ UnsafeConn() net.Conn })
	if !ok { // not fasthttp's wrapper: nothing to see through
		return &clientConn{Conn: hijacked, sock: hijacked, keepAlive: keepAlive}
	}
	under := u.UnsafeConn()
	prev, handedBack := under.(*clientConn)
	sock := under
	if handedBack {
		sock = prev.sock
	}
	if sock.SetReadDeadline(expired) != nil {
		return &clientConn{Conn: hijacked, sock: sock, keepAlive: keepAlive}
	}
	var b [1]byte
	n, _ := hijacked.Read(b[:])
	if sock.SetReadDeadline(time.Time{}) != nil || n == 1 {
		return &clientConn{Conn: hijacked, sock: sock, keepAlive: keepAlive, pending: b[:n]}
	}
	if handedBack {
		// Nothing new is buffered: what the client sent after the earlier
		// stream is in prev (its pending byte, its wrapper) or the socket.
		return prev
	}
	return &clientConn{Conn: sock, sock: sock, keepAlive: keepAlive}
}

func (c *clientConn) Read(p []byte) (int, error) {
	if len(c.pending) > 0 && len(p) > 0 {
		n := copy(p, c.pending)
		c.pending = c.pending[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

func (c *clientConn) Write(p []byte) (int, error)        { return c.sock.Write(p) }
func (c *clientConn) Close() error                       { return c.sock.Close() }
func (c *clientConn) LocalAddr() net.Addr                { return c.sock.LocalAddr() }
func (c *clientConn) RemoteAddr() net.Addr               { return c.sock.RemoteAddr() }
func (c *clientConn) SetDeadline(t time.Time) error      { return c.sock.SetDeadline(t) }
func (c *clientConn) SetWriteDeadline(t time.Time) error { return c.sock.SetWriteDeadline(t) }

func (c *clientConn) SetReadDeadline(t time.Time) error {
	if c.waitIdle {
		c.waitIdle = false
		if c.keepAlive > 0 {
			t = time.Now().Add(c.keepAlive)
		}
	}
	return c.sock.SetReadDeadline(t)
}

// UnsafeConn returns the socket, as fasthttp's own wrapper does.
func (c *clientConn) UnsafeConn() net.Conn { return c.sock }

// SyscallConn is the socket's (under TLS, the one beneath it): the
// client-gone check (clientgone.go) peeks it for requests served on the
// connection after a stream.
func (c *clientConn) SyscallConn() (syscall.RawConn, error) {
	sock := c.sock
	if tc, ok := sock.(*tls.Conn); ok {
		sock = tc.NetConn()
	}
	sc, ok := sock.(syscall.Conn)
	if !ok {
		return nil, errors.New("client connection is not a socket")
	}
	return sc.SyscallConn()
}

// chunkWriter frames each Write as one HTTP/1.1 chunk and sends it with a
// single system call: the chunk-size line, the frames and the CRLF —
// preceded, the first time, by the response head, so the head and the
// first frame leave together as Ollama sends them. Up to smallWriteBytes
// (a token's frame is ~150 bytes) they are copied into one pooled buffer
// and written; bigger ones go with writev, read in place from the framer's
// buffer. With raw set (HTTP/1.0) the frames go unframed.
type chunkWriter struct {
	conn net.Conn
	head []byte
	raw  bool
	size [20]byte
	iov  [4][]byte
	bufs net.Buffers
}

var (
	crlf      = []byte("\r\n")
	lastChunk = []byte("0\r\n\r\n")
)

func (w *chunkWriter) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if w.raw {
		if err := w.send(p, nil, nil); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	size := appendChunkSize(w.size[:0], len(p))
	if err := w.send(size, p, crlf); err != nil {
		return 0, err
	}
	return len(p), nil
}

// appendChunkSize appends a chunk-size line: n in lower-case hex, then
// CRLF. strconv's general-base path cost a twentieth of a frame's own
// instructions (callgrind); a frame's size is one to four hex digits.
func appendChunkSize(dst []byte, n int) []byte {
	var digits [16]byte
	i := len(digits)
	for {
		i--
		digits[i] = "0123456789abcdef"[n&0xf]
		n >>= 4
		if n == 0 {
			break
		}
	}
	return append(append(dst, digits[i:]...), '\r', '\n')
}

// finish writes the last chunk (and the head, if no frame carried it).
func (w *chunkWriter) finish() error {
	if w.raw {
		if w.head == nil {
			return nil
		}
		return w.send(nil, nil, nil)
	}
	return w.send(lastChunk, nil, nil)
}

// smallWriteBytes: a write this small is copied into one buffer and sent
// with write(2); writev's per-call work (the iovec array, net.Buffers'
// bookkeeping) costs more than copying a token's frame.
const smallWriteBytes = 2 << 10

var smallWritePool = sync.Pool{New: func() any { return new([smallWriteBytes]byte) }}

func (w *chunkWriter) send(a, b, c []byte) error {
	if len(w.head)+len(a)+len(b)+len(c) <= smallWriteBytes {
		buf := smallWritePool.Get().(*[smallWriteBytes]byte)
		p := append(append(append(append(buf[:0], w.head...), a...), b...), c...)
		w.head = nil
		_, err := w.conn.Write(p)
		smallWritePool.Put(buf)
		return err
	}
	w.iov = [4][]byte{w.head, a, b, c}
	w.bufs = w.iov[:]
	w.head = nil
	_, err := w.bufs.WriteTo(w.conn)
	w.bufs, w.iov = nil, [4][]byte{}
	return err
}

// connLimitListener applies gateway.max_client_connections to the
// connections fasthttp no longer counts: fasthttp's Concurrency limit
// covers the connections its workers serve, and a hijacked stream has left
// them. Over the limit, a new connection gets the same plain-text 503 as
// from fasthttp and is closed; the accept loop is fasthttp's, so the check
// against its open-connection count is exact. An accepted connection is
// returned as a clientSock (readahead.go), under TLS when gateway.tls is
// set. A refused connection gets its 503 in plain text before any
// handshake: a TLS client sees a failed handshake.
type connLimitListener struct {
	net.Listener
	g *Gateway
	// lastWarn (unix ns) rate-limits the warning to one a minute.
	lastWarn atomic.Int64
}

const connLimitBody = "The connection cannot be served because gateway.max_client_connections are open\n"

var connLimitResponse = []byte("HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Type: text/plain\r\n" +
	"Content-Length: " + strconv.Itoa(len(connLimitBody)) + "\r\n\r\n" + connLimitBody)

func (l *connLimitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return c, err
		}
		g := l.g
		hj := int(g.hijacked.Load())
		if hj == 0 || int(g.server.GetOpenConnectionsCount())+hj < g.cfg.MaxClientConnections {
			if g.tls != nil {
				// TLS over the read-ahead socket: its lazy deadlines and
				// single-syscall reads serve the record layer as well.
				return tls.Server(newClientSock(c), g.tls), nil
			}
			return newClientSock(c), nil
		}
		if g.tls == nil {
			// Under TLS the client waits for a handshake: plain bytes
			// would reach it as a protocol error, and a handshake here
			// would hold up the accept loop, so the connection just closes.
			_ = c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
			_, _ = c.Write(connLimitResponse)
		}
		_ = c.Close()
		if now := time.Now().UnixNano(); now-l.lastWarn.Load() >= int64(time.Minute) {
			l.lastWarn.Store(now)
			g.log.Warn().Int("max_client_connections", g.cfg.MaxClientConnections).Int("streams", hj).
				Msg("a new connection was refused: gateway.max_client_connections are open")
		}
	}
}
