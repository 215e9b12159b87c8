package gateway

import (
	"io"
	"net"
	"sync"
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
// Everything else is the socket's own (*net.TCPConn is embedded): writes,
// writev for streams, deadlines, TCP keep-alive, and the syscall access
// of the client-gone check, which reads nothing.
type clientSock struct {
	*net.TCPConn
	ahead *[]byte // pooled; nil when nothing is read ahead
	r, w  int     // (*ahead)[r:w] is what is left
	err   error   // the error of the read that read ahead, for after its bytes
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

// WriteTo would read the socket past what was read ahead (io.Copy picks
// it): copy through Read instead.
func (c *clientSock) WriteTo(w io.Writer) (int64, error) {
	return io.Copy(w, struct{ io.Reader }{c})
}
