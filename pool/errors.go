package pool

import (
	"errors"
	"io"
	"net"
	"syscall"

	"github.com/valyala/fasthttp"
)

// Admission errors: the request never reached the upstream.
var (
	// ErrQueueFull: pool.max_queue requests are already waiting. Raise
	// pool.max_queue or pool.max_connections, or add upstream capacity.
	ErrQueueFull = errors.New("pool: wait queue full")
	// ErrPoolExhausted: no connection came free within pool.max_wait.
	// Raise pool.max_connections if the upstream can take more.
	ErrPoolExhausted = errors.New("pool: no free upstream connection within max_wait")
	// ErrUnhealthy: the health prober has marked the upstream down; the
	// request is refused without trying to connect.
	ErrUnhealthy = errors.New("pool: upstream marked unhealthy by health checks")
	// ErrClosed: the pool is shutting down and takes no more requests.
	ErrClosed = errors.New("pool: closed")
	// ErrAbandoned: the client left while the request was queued.
	ErrAbandoned = errors.New("pool: client left while queued")
	// ErrClientGone: the client left while the upstream had not yet sent a
	// byte (DoWhile); the upstream connection was closed.
	ErrClientGone = errors.New("pool: client left while waiting for the upstream's first byte")
)

// Upstream errors: what went wrong talking to the upstream. Returned errors
// wrap one of these and the underlying cause.
var (
	// ErrConnect: the TCP/TLS connect failed or timed out; nothing was sent.
	ErrConnect = errors.New("upstream connect failed")
	// ErrFirstByteTimeout: the request was sent but no response byte came
	// within upstream.first_byte_timeout.
	ErrFirstByteTimeout = errors.New("upstream first byte timeout")
	// ErrIdleTimeout: a response body went silent for upstream.idle_timeout.
	ErrIdleTimeout = errors.New("upstream idle timeout")
	// ErrReset: the upstream closed or reset the connection early.
	ErrReset = errors.New("upstream connection reset")
	// ErrProtocol: the upstream's response could not be parsed.
	ErrProtocol = errors.New("upstream protocol error")
	// ErrTooLarge: a response body exceeded upstream.max_response_bytes.
	ErrTooLarge = errors.New("upstream response too large")
)

// dialError marks an error from our dialer, so Do can tell "never sent"
// from "sent and failed".
type dialError struct{ err error }

func (e *dialError) Error() string { return "dial upstream: " + e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

// classify wraps err, from fasthttp's Do, in the upstream error it stands for.
func classify(err error) error {
	var de *dialError
	switch {
	case errors.As(err, &de):
		return errors.Join(ErrConnect, err)
	case isTimeout(err):
		return errors.Join(ErrFirstByteTimeout, err)
	case isReset(err):
		return errors.Join(ErrReset, err)
	case errors.Is(err, fasthttp.ErrBodyTooLarge):
		return errors.Join(ErrTooLarge, err)
	default:
		return errors.Join(ErrProtocol, err)
	}
}

// ClassifyBodyError wraps an error met while reading a response body (after
// the headers) in ErrIdleTimeout, ErrReset or ErrProtocol.
func ClassifyBodyError(err error) error {
	switch {
	case isTimeout(err):
		return errors.Join(ErrIdleTimeout, err)
	case isReset(err):
		return errors.Join(ErrReset, err)
	default:
		return errors.Join(ErrProtocol, err)
	}
}

func isTimeout(err error) bool {
	if errors.Is(err, fasthttp.ErrTimeout) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func isReset(err error) bool {
	return errors.Is(err, fasthttp.ErrConnectionClosed) || errors.Is(err, io.EOF) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, net.ErrClosed)
}
