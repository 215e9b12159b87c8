package gateway

import (
	"io"
	"net"
	"sync"
	"time"
)

// clientSock is an accepted client connection whose small reads read
// ahead. With ReduceMemoryUsage, fasthttp waits for a keep-alive
// connection's next request with a 1-byte read, and only then takes a
// read buffer and reads the rest: two read system calls for what one
// could fetch, one more per request than a server that keeps a buffer per
// idle connection. A read shorter than readAheadBytes reads up to
// readAheadBytes into a pooled buffer instead, and the next read (fasthttp's
// buffer filling) takes the rest from it. The buffer is held only between
// those two reads, never while the connection waits, so an idle
// connection still holds no read buffer.
//
// Read deadlines are applied lazily (see SetReadDeadline). Everything else
// is the socket's own (*net.TCPConn is embedded): writes, writev for
// streams, write deadlines, TCP keep-alive, and the syscall access of the
// client-gone check, which reads nothing.
type clientSock struct {
	*net.TCPConn
	ahead *[]byte // pooled; nil when nothing is read ahead
	r, w  int     // (*ahead)[r:w] is what is left
	err   error   // the error of the read that read ahead, for after its bytes
	// readBy is the read deadline last asked for, armed the one the
	// socket has (unix ns; 0: none).
	readBy, armed int64
}

// readAheadBytes is how much a small read fetches: a whole request's
// header and a chat body of a few turns.
const readAheadBytes = 4 << 10

var readAheadPool = sync.Pool{New: func() any { b := make([]byte, readAheadBytes); return &b }}

// newClientSock wraps c if it is a TCP connection; other connections
// (in-memory listeners in tests, say) are served as they are.
func newClientSock(c net.Conn) net.Conn {
	if tc, ok := c.(*net.TCPConn); ok {
		return &clientSock{TCPConn: tc}
	}
	return c
}

func (c *clientSock) Read(p []byte) (int, error) {
	if c.ahead != nil {
		n := copy(p, (*c.ahead)[c.r:c.w])
		c.r += n
		if c.r == c.w {
			readAheadPool.Put(c.ahead)
			c.ahead = nil
		}
		return n, nil
	}
	if err := c.err; err != nil {
		c.err = nil
		return 0, err
	}
	if err := c.arm(); err != nil {
		return 0, err
	}
	if len(p) == 0 || len(p) >= readAheadBytes {
		return c.TCPConn.Read(p)
	}
	buf := readAheadPool.Get().(*[]byte)
	n, err := c.TCPConn.Read(*buf)
	m := copy(p, (*buf)[:n])
	if m == n {
		readAheadPool.Put(buf)
		return m, err
	}
	c.ahead, c.r, c.w, c.err = buf, m, n, err
	return m, nil
}

// SetReadDeadline records t for the next read that reaches the socket. It
// must be called from the goroutine that reads, as fasthttp's connection
// loop does, never to interrupt a read under way. That loop sets two
// deadlines per keep-alive request: the idle wait's, then read_timeout's
// once the first byte is in. Applied at once, each costs a runtime timer
// update (two cost ~4 % of the gateway's instructions on a small request,
// callgrind); recorded, the second is rarely applied at all, since the
// request is usually read ahead whole.
func (c *clientSock) SetReadDeadline(t time.Time) error {
	c.readBy = unixNanoOrZero(t)
	return nil
}

// SetDeadline applies both deadlines at once.
func (c *clientSock) SetDeadline(t time.Time) error {
	c.readBy = unixNanoOrZero(t)
	c.armed = c.readBy
	return c.TCPConn.SetDeadline(t)
}

// arm gives the socket the read deadline asked for, unless the one it has
// is still ahead and earlier by at most an eighth of the wait asked for: a
// deadline that moves later by a few milliseconds per request is then
// re-armed every few seconds, not every request, and an idle connection is
// closed after between 7/8 of gateway.keepalive_timeout and all of it. An
// earlier deadline, or none, is always applied.
func (c *clientSock) arm() error {
	want := c.readBy
	if want == c.armed {
		return nil
	}
	if want != 0 && c.armed != 0 && want > c.armed {
		if now := time.Now().UnixNano(); c.armed > now && want-c.armed <= (want-now)/8 {
			return nil
		}
	}
	c.armed = want
	var t time.Time
	if want != 0 {
		t = time.Unix(0, want)
	}
	return c.TCPConn.SetReadDeadline(t)
}

func unixNanoOrZero(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// WriteTo would read the socket past what was read ahead (io.Copy picks
// it): copy through Read instead.
func (c *clientSock) WriteTo(w io.Writer) (int64, error) {
	return io.Copy(w, struct{ io.Reader }{c})
}
