package gateway

import (
	"net"
	"syscall"
)

// clientGone returns a check that the client closed its connection,
// without consuming any byte it sent (a pipelined request stays in the
// socket for fasthttp): a non-blocking MSG_PEEK that reads end-of-file or
// a reset. fasthttp itself notices a vanished client only when a write
// fails (valyala/fasthttp#993), which for a queued request is too late.
// It returns nil for connections that are not sockets.
func clientGone(c net.Conn) func() bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return func() bool {
		gone := false
		_ = rc.Read(func(fd uintptr) bool {
			var b [1]byte
			n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
			gone = (n == 0 && err == nil) || err == syscall.ECONNRESET
			return true // never wait for readiness: this is a poll
		})
		return gone
	}
}
