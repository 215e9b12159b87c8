package ollamatest

import (
	"context"
	"fmt"
	"net"
	"sync"
	"time"
)

// Connection-level fault modes for SetConnFault: they act before any request
// is read, so no header or model name can select them.
const (
	// ConnFaultRSTOnAccept resets (SO_LINGER 0) every new connection at once.
	ConnFaultRSTOnAccept = "rst_on_accept"
	// ConnFaultCloseOnAccept closes (FIN) every new connection at once.
	ConnFaultCloseOnAccept = "close_on_accept"
)

// listener counts and numbers accepted connections and applies SetConnFault.
type listener struct {
	net.Listener
	s *Server
}

// Accept returns the next connection that survives the connection fault.
func (l *listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		cr, mode := l.s.connOpened()
		wc := &conn{Conn: c, s: l.s, rec: cr}
		switch mode {
		case ConnFaultRSTOnAccept:
			wc.reset()
			continue
		case ConnFaultCloseOnAccept:
			_ = wc.Close()
			continue
		}
		return wc, nil
	}
}

// conn records its own close, whoever closes it (net/http, or a handler that
// hijacked it).
type conn struct {
	net.Conn
	s    *Server
	rec  *connRecord
	once sync.Once
}

// Close closes the connection and records it once.
func (c *conn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.s.connClosed(c.rec) })
	return err
}

// reset closes the connection with an RST instead of a FIN.
func (c *conn) reset() {
	if tc, ok := c.Conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
}

type connKey struct{}

// connContext hands each request the connection it arrived on.
func connContext(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, connKey{}, c)
}

// connOf returns the connection a request arrived on, or nil.
func connOf(ctx context.Context) *conn {
	c, _ := ctx.Value(connKey{}).(*conn)
	return c
}

// Conn is the record of one accepted TCP connection.
type Conn struct {
	ID     int64     // 1, 2, ... in accept order; Request.ConnID refers to it
	Opened time.Time // when it was accepted
	Closed time.Time // when the fake closed its side; zero while open
}

type connRecord struct {
	Conn
}

// SetConnFault applies a connection-level fault to every connection accepted
// from now on: ConnFaultRSTOnAccept, ConnFaultCloseOnAccept, or "" for none.
func (s *Server) SetConnFault(mode string) error {
	switch mode {
	case "", ConnFaultRSTOnAccept, ConnFaultCloseOnAccept:
	default:
		return fmt.Errorf("ollamatest: unknown connection fault %q", mode)
	}
	s.mu.Lock()
	s.connFault = mode
	s.mu.Unlock()
	return nil
}

// connOpened counts a new connection and returns its record and the
// connection fault in force.
func (s *Server) connOpened() (*connRecord, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nextConn++
	cr := &connRecord{Conn{ID: s.nextConn, Opened: time.Now()}}
	s.conns = append(s.conns, cr)
	if over := len(s.conns) - s.cfg.RecordLimit; over > s.cfg.RecordLimit/4 {
		s.conns = append([]*connRecord(nil), s.conns[over:]...)
	}
	s.st.ConnsOpened++
	s.st.ConnsOpen++
	s.st.PeakConns = max(s.st.PeakConns, s.st.ConnsOpen)
	return cr, s.connFault
}

func (s *Server) connClosed(cr *connRecord) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cr.Closed = time.Now()
	s.st.ConnsClosed++
	s.st.ConnsOpen--
}

// Conns returns the records of the connections accepted since start or
// ResetStats (at most Config.RecordLimit, the latest), in accept order.
func (s *Server) Conns() []Conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	start := max(0, len(s.conns)-s.cfg.RecordLimit)
	out := make([]Conn, 0, len(s.conns)-start)
	for _, cr := range s.conns[start:] {
		out = append(out, cr.Conn)
	}
	return out
}

// WaitConnsClosed waits until no connection is open, polling every
// millisecond, and reports whether that happened within timeout.
func (s *Server) WaitConnsClosed(timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		if s.Stats().ConnsOpen == 0 {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(time.Millisecond)
	}
}
