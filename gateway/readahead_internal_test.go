package gateway

import (
	"bytes"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// tcpPair returns the two ends of a loopback TCP connection, the server's
// end wrapped as the gateway's listener wraps it.
func tcpPair(t *testing.T) (server *clientSock, client net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	cs, ok := newClientSock(c).(*clientSock)
	if !ok {
		t.Fatalf("newClientSock(%T) did not wrap a TCP connection", c)
	}
	t.Cleanup(func() { cs.Close(); client.Close() })
	return cs, client
}

// TestClientSockReadAhead checks that the bytes a client sent come out of
// a clientSock whole and in order, whatever the sizes of the reads, with
// the sender's end-of-file after them — and that the small first read is
// what fetches them all (one read system call instead of two).
func TestClientSockReadAhead(t *testing.T) {
	req := []byte("POST /api/chat HTTP/1.1\r\nHost: g\r\nContent-Length: 2\r\n\r\n{}")
	big := bytes.Repeat([]byte("x"), readAheadBytes+100)
	for _, tc := range []struct {
		name  string
		sent  []byte
		reads []int // sizes of the reads; the last repeats until EOF
	}{
		{"fasthttp: 1 byte, then its buffer", req, []int{1, 16 << 10}},
		{"small reads only", req, []int{1, 3, 7}},
		{"zero-length read first", req, []int{0, 1, 16 << 10}},
		{"more than a read-ahead", big, []int{1, 16 << 10}},
		{"big reads only", big, []int{16 << 10}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, c := tcpPair(t)
			if _, err := c.Write(tc.sent); err != nil {
				t.Fatal(err)
			}
			c.(*net.TCPConn).CloseWrite()
			_ = s.SetReadDeadline(time.Now().Add(5 * time.Second))
			var got []byte
			var err error
			for i := 0; err == nil; i++ {
				size := tc.reads[min(i, len(tc.reads)-1)]
				p := make([]byte, size)
				var n int
				n, err = s.Read(p)
				if n > size {
					t.Fatalf("read %d: %d bytes into %d", i, n, size)
				}
				got = append(got, p[:n]...)
				if i == 1 && size >= len(tc.sent)-1 && len(tc.sent) <= readAheadBytes && tc.reads[0] == 1 {
					// The rest came from the read-ahead: nothing is left on the socket
					// but the end-of-file, and nothing is held any more.
					if len(got) != len(tc.sent) || s.ahead != nil {
						t.Fatalf("after the second read: %d of %d bytes, buffer held %v", len(got), len(tc.sent), s.ahead != nil)
					}
				}
				if i > len(tc.sent)+10 {
					t.Fatal("no end-of-file")
				}
			}
			if !errors.Is(err, io.EOF) {
				t.Fatalf("ended with %v, want EOF", err)
			}
			if !bytes.Equal(got, tc.sent) {
				t.Fatalf("got %d bytes %q…, want %d bytes", len(got), got[:min(len(got), 40)], len(tc.sent))
			}
		})
	}
}

// TestClientSockWriteTo checks that io.Copy from a clientSock (which picks
// WriteTo) does not skip what was read ahead.
func TestClientSockWriteTo(t *testing.T) {
	s, c := tcpPair(t)
	sent := "GET / HTTP/1.1\r\nHost: g\r\n\r\n"
	if _, err := io.WriteString(c, sent); err != nil {
		t.Fatal(err)
	}
	c.(*net.TCPConn).CloseWrite()
	_ = s.SetReadDeadline(time.Now().Add(5 * time.Second))
	var first [1]byte
	if _, err := io.ReadFull(s, first[:]); err != nil {
		t.Fatal(err)
	}
	var rest strings.Builder
	if _, err := io.Copy(&rest, s); err != nil {
		t.Fatal(err)
	}
	if got := string(first[:]) + rest.String(); got != sent {
		t.Fatalf("got %q, want %q", got, sent)
	}
}

// TestClientSockReadDeadline checks the lazy read deadline: asked-for
// deadlines reach the socket before the next read that needs it, an
// earlier one always, a later one only when it moves by more than an
// eighth of the wait; and a deadline that passes still ends a read.
func TestClientSockReadDeadline(t *testing.T) {
	s, c := tcpPair(t)
	readByte := func() error {
		var b [1]byte
		_, err := s.Read(b[:])
		return err
	}
	send := func(b string) {
		if _, err := c.Write([]byte(b)); err != nil {
			t.Fatal(err)
		}
	}

	// The first deadline is applied by the read that reaches the socket.
	idle := time.Now().Add(8 * time.Second)
	s.SetReadDeadline(idle)
	if s.armed != 0 {
		t.Fatal("applied before a read needed it")
	}
	send("abc")
	if err := readByte(); err != nil || s.armed != idle.UnixNano() {
		t.Fatalf("err %v, armed %d, want %d", err, s.armed, idle.UnixNano())
	}
	// A deadline asked for while bytes are read ahead waits for the read
	// that needs the socket: none does here.
	s.SetReadDeadline(time.Now().Add(time.Second))
	for range 2 {
		if err := readByte(); err != nil {
			t.Fatal(err)
		}
	}
	if s.armed != idle.UnixNano() {
		t.Fatal("applied for a read served from the read-ahead buffer")
	}

	for _, tc := range []struct {
		name    string
		readBy  time.Time
		applied bool
	}{
		{"slightly later: kept", idle.Add(500 * time.Millisecond), false},
		{"later by more than an eighth: applied", idle.Add(2 * time.Second), true},
		{"earlier: applied", time.Now().Add(5 * time.Second), true},
		{"none: applied", time.Time{}, true},
		{"one again after none: applied", time.Now().Add(8 * time.Second), true},
	} {
		before := s.armed
		s.SetReadDeadline(tc.readBy)
		send("x")
		if err := readByte(); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if applied := s.armed != before; applied != tc.applied || applied && s.armed != unixNanoOrZero(tc.readBy) {
			t.Errorf("%s: armed %d (was %d), want applied=%v", tc.name, s.armed, before, tc.applied)
		}
	}

	// A deadline that passes ends a read that waits.
	s.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	var ne net.Error
	if err := readByte(); !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("read past the deadline: %v, want a timeout", err)
	}
}
