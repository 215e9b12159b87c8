package pool

import (
	"bytes"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
)

// conn wraps an upstream connection to count it and to arm read deadlines
// per read: the first read after a request is written waits up to the
// first-byte timeout, later reads up to the idle timeout. fasthttp's own
// ReadTimeout is one deadline for a whole streamed body, which would cut
// long generations; this is the per-read clock it lacks.
type conn struct {
	net.Conn
	p *Pool
	// awaiting is set by Write (a request went out) and cleared by the
	// first read that returns bytes.
	awaiting atomic.Bool
	// responses counts reads that returned bytes since the last Write; a
	// connection with a completed earlier exchange is "reused".
	exchanges atomic.Int64
	readBytes atomic.Int64
	// hardDeadline (unix nanoseconds, 0 = none) caps every read deadline:
	// the request's maximum duration, or "now" to interrupt a blocked read.
	hardDeadline atomic.Int64
	// armed is the read deadline last set (unix ns) and armedFirst whether
	// it was a first-byte one; re-arming on every read would cost a timer
	// update per frame.
	armed      int64
	armedFirst bool
	// local is LocalAddr's answer, boxed once at dial: fasthttp asks for
	// it on every request.
	local     net.Addr
	closeOnce sync.Once
	// sentAt (unix ns) is when the request now awaiting its first byte was
	// written; the first-byte clock runs from there, however many reads
	// the wait takes.
	sentAt int64
	// gone, while a request awaits its first byte, reports whether that
	// request's client has left (nil: not watched). It is only touched by
	// the goroutine running the exchange: fasthttp writes the request and
	// reads the response on the caller's goroutine.
	gone    func() bool
	scanned int
	// clientLeft records that a read ended with errClientGone: fasthttp
	// does not hand our error back unchanged, so Do asks the connection.
	clientLeft bool
	// writeArmed: a write deadline is set (a request in several writes);
	// cleared at the next request's first write.
	writeArmed bool
	// ambiguous records that the response's header block (as far as the
	// first read holds it) has both Content-Length and Transfer-Encoding:
	// fasthttp frames it by the latter, as RFC 9112 allows, but the
	// connection must not carry another exchange (see Do).
	ambiguous bool
}

// connAddr is conn's LocalAddr: it lets Do find, from a failed Response, the
// connection it used (fasthttp keeps LocalAddr on the Response).
type connAddr struct {
	net.Addr
	c *conn
}

func (c *conn) LocalAddr() net.Addr { return c.local }

func (c *conn) Write(b []byte) (int, error) {
	if !c.awaiting.Load() {
		c.awaiting.Store(true)
		c.readBytes.Store(0)
		c.sentAt = time.Now().UnixNano()
		c.gone, c.scanned, c.clientLeft, c.ambiguous = nil, 0, false, false
		if c.writeArmed {
			_ = c.Conn.SetWriteDeadline(time.Time{})
			c.writeArmed = false
		}
	} else {
		// A request written in several pieces (a blob upload streams for
		// minutes): the first-byte clock runs from its last piece, and
		// each piece must be taken within the idle timeout, so a backend
		// that stops reading cannot hold the upload (and the client) for
		// ever. A request written in one piece pays for neither.
		now := time.Now()
		c.sentAt = now.UnixNano()
		if d := c.p.up.IdleTimeout; d > 0 {
			_ = c.Conn.SetWriteDeadline(now.Add(d))
			c.writeArmed = true
		}
	}
	// A header block longer than fasthttp's write buffer comes in several
	// writes: look through the first 64 KiB of them.
	if c.gone == nil && c.scanned < 64<<10 && c.p.watching.Load() > 0 {
		c.gone = c.p.watcherFor(b)
		c.scanned += len(b)
	}
	return c.Conn.Write(b)
}

// errClientGone ends a read that was waiting for the upstream's first byte
// when the request's client has left; Do reports ErrClientGone.
var errClientGone = errors.New("client left while waiting for the first byte")

func (c *conn) Read(b []byte) (int, error) {
	for {
		first := c.awaiting.Load()
		d := c.p.up.IdleTimeout
		// The clock is read only when it is needed: a first read runs
		// from sentAt, and time.Now costs ~90 ns on this kind of VM.
		var now, deadline int64
		if first {
			d = c.p.up.FirstByteTimeout
			if d > 0 {
				deadline = c.sentAt + int64(d)
			}
		} else if d > 0 {
			now = time.Now().UnixNano()
			deadline = now + int64(d)
		}
		hd := c.hardDeadline.Load()
		if hd != 0 && (deadline == 0 || hd < deadline) {
			deadline = hd
		}
		// While the first byte is awaited (a model may take minutes to
		// load), wake every clientPollInterval to ask whether the client
		// is still there. A reply that comes sooner costs nothing extra.
		polling := false
		if first && c.gone != nil {
			if poll := time.Now().UnixNano() + int64(clientPollInterval); deadline == 0 || poll < deadline {
				deadline, polling = poll, true
			}
		}
		// Re-arm when polling, when the clock changes kind, when a hard
		// deadline moves it earlier, or when an eighth of the period has
		// passed: the effective idle timeout is then between 7/8 and all
		// of the configured one.
		if deadline != c.armed && (polling || first != c.armedFirst || deadline < c.armed || deadline-c.armed > int64(d)/8 || c.armed == 0) {
			var t time.Time
			if deadline != 0 {
				t = time.Unix(0, deadline)
			}
			_ = c.Conn.SetReadDeadline(t)
			c.armed, c.armedFirst = deadline, first
		}
		n, err := c.Conn.Read(b)
		if n > 0 {
			c.readBytes.Add(int64(n))
			if first {
				c.awaiting.Store(false)
				c.exchanges.Add(1)
				c.gone = nil
				c.ambiguous = ambiguousFraming(b[:n])
			}
		}
		if polling && n == 0 && isTimeout(err) && c.hardDeadline.Load() == hd {
			if c.gone() {
				c.gone, c.clientLeft = nil, true
				return 0, errClientGone
			}
			continue // still wanted: wait on
		}
		return n, err
	}
}

func (c *conn) Close() error {
	err := c.Conn.Close()
	c.closeOnce.Do(func() { c.p.stats.ConnectionsClosed.Add(1) })
	return err
}

// reusedAndSilent reports whether the connection had served an earlier
// exchange and the failed request got no response byte: the case in which
// a stale keep-alive connection provably never delivered the request.
func (c *conn) reusedAndSilent() bool {
	return c.exchanges.Load() > 0 && c.readBytes.Load() == 0
}

// connOf finds the connection a response was read from.
func connOf(resp *fasthttp.Response) *conn {
	if ca, ok := resp.LocalAddr().(connAddr); ok {
		return ca.c
	}
	return nil
}

// LimitBody caps the reads of resp's streamed body at t: once it passes,
// the next read fails with a timeout, however steadily the upstream sends.
// This is the per-route maximum duration, the backstop to the idle clock.
func LimitBody(resp *fasthttp.Response, t time.Time) {
	if c := connOf(resp); c != nil {
		c.hardDeadline.Store(t.UnixNano())
	}
}

// Interrupt makes a read of resp's streamed body, blocked or next, fail at
// once with a timeout. It is safe from any goroutine (it only moves a
// deadline), which is how a drain ends streams that outlive it.
func Interrupt(resp *fasthttp.Response) {
	if c := connOf(resp); c != nil {
		c.hardDeadline.Store(time.Now().UnixNano())
		_ = c.Conn.SetReadDeadline(time.Now())
	}
}

// ClearLimit removes LimitBody's cap before the connection is reused.
func ClearLimit(resp *fasthttp.Response) {
	if c := connOf(resp); c != nil {
		c.hardDeadline.Store(0)
	}
}

func (p *Pool) dial(addr string) (net.Conn, error) {
	d := net.Dialer{Timeout: p.up.ConnectTimeout, KeepAlive: 30 * time.Second}
	nc, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, &dialError{err: err}
	}
	p.stats.ConnectionsOpened.Add(1)
	c := &conn{Conn: nc, p: p}
	c.local = connAddr{Addr: nc.LocalAddr(), c: c}
	return c, nil
}

var (
	headerContentLength    = []byte("content-length:")
	headerTransferEncoding = []byte("transfer-encoding:")
)

// ambiguousFraming reports whether the header block at the start of b has
// both a Content-Length and a Transfer-Encoding line (names in any case).
func ambiguousFraming(b []byte) bool {
	var cl, te bool
	for {
		i := bytes.IndexByte(b, '\n')
		if i < 0 || i <= 1 { // end of what was read, or the blank line
			return cl && te
		}
		b = b[i+1:]
		switch {
		case len(b) >= len(headerContentLength) && (b[0] == 'c' || b[0] == 'C') &&
			bytes.EqualFold(b[:len(headerContentLength)], headerContentLength):
			cl = true
		case len(b) >= len(headerTransferEncoding) && (b[0] == 't' || b[0] == 'T') &&
			bytes.EqualFold(b[:len(headerTransferEncoding)], headerTransferEncoding):
			te = true
		}
		if cl && te {
			return true
		}
	}
}
