package gateway

import (
	"crypto/tls"
	"net"
	"testing"
	"time"
)

// TestClientGoneSeesThroughTLSHandback: a request served on a TLS
// connection after a stream handed it back (clientConn over a *tls.Conn)
// still sees its client leave while it waits in the pool's queue.
func TestClientGoneSeesThroughTLSHandback(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	x := &exchange{conn: &clientConn{Conn: server, sock: tls.Server(server, &tls.Config{})}}
	if x.clientGone() {
		t.Fatal("the client is reported gone while connected")
	}
	client.Close()
	deadline := time.Now().Add(2 * time.Second)
	for !x.clientGone() {
		if time.Now().After(deadline) {
			t.Fatal("the client's close is not seen through the TLS connection")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
