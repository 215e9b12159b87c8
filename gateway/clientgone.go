package gateway

import (
	"crypto/tls"
	"syscall"
)

// clientGone reports whether the client closed its connection,
// without consuming any byte it sent (a pipelined request stays in the
// socket for fasthttp): a non-blocking MSG_PEEK that reads end-of-file or
// a reset. fasthttp itself notices a vanished client only when a write
// fails (valyala/fasthttp#993), which for a queued request is too late.
// It is only called while a request waits in the pool's queue. A
// connection that is not a socket is never reported gone.
func (x *exchange) clientGone() bool {
	conn := x.conn
	if tc, ok := conn.(*tls.Conn); ok {
		// The socket under TLS. A client that closes with a close_notify
		// alert leaves that record unread in front of its end-of-file,
		// and is seen gone only when a write fails; one that resets or
		// closes without the alert is seen here.
		conn = tc.NetConn()
	}
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	gone := false
	// Control, not Read: RawConn.Read fails before calling its function
	// once the socket's read deadline has passed, and fasthttp armed
	// read_timeout for the request, which a model load outlasts: through
	// Read the check would go blind after read_timeout. The peek never
	// waits, so it needs neither the poller nor the read lock.
	_ = rc.Control(func(fd uintptr) {
		var b [1]byte
		n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		gone = (n == 0 && err == nil) || err == syscall.ECONNRESET
	})
	return gone
}
