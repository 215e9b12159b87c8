package gateway

import (
	"bufio"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/valyala/fasthttp"
)

// B-61: gateway.trusted_proxies, below the wiring.

func TestTrustedProxiesConfig(t *testing.T) {
	for _, tc := range []struct {
		list []string
		err  string
	}{
		{nil, ""},
		{[]string{"127.0.0.1", "10.0.0.0/8", " fd00::/8 ", "::ffff:192.0.2.0/120"}, ""},
		{[]string{"10.0.0.0/8", "proxy.internal"}, `gateway.trusted_proxies: entry #2 "proxy.internal" is not an IP address or CIDR`},
		{[]string{"10.0.0.0/33"}, `gateway.trusted_proxies: entry #1 "10.0.0.0/33"`},
	} {
		err := Config{TrustedProxies: tc.list}.withDefaults().validate()
		if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("%q: error %v, want %q", tc.list, err, tc.err)
		}
	}
	c := Config{TrustedProxies: []string{"::ffff:192.0.2.0/120", "127.0.0.1"}}.withDefaults()
	for _, a := range []string{"192.0.2.77", "::ffff:192.0.2.77", "127.0.0.1"} {
		if !c.trusted.contains(netip.MustParseAddr(a)) {
			t.Errorf("%s is not trusted by %v", a, c.trusted)
		}
	}
	if c.trusted.contains(netip.MustParseAddr("127.0.0.2")) {
		t.Error("a bare address trusted its neighbour")
	}
}

func TestClientAddr(t *testing.T) {
	tp, err := parseTrustedProxies([]string{"127.0.0.0/8", "10.0.0.0/8", "2001:db8::/32"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, peer string
		xff        []string
		want       string
	}{
		{"untrusted peer", "192.0.2.9", []string{"203.0.113.7"}, "192.0.2.9"},
		{"trusted peer without header", "127.0.0.1", nil, "127.0.0.1"},
		{"one hop", "127.0.0.1", []string{"203.0.113.7"}, "203.0.113.7"},
		{"spoofed entries left of the client", "127.0.0.1", []string{"198.51.100.1, 203.0.113.7, 10.1.1.1"}, "203.0.113.7"},
		{"two header lines", "127.0.0.1", []string{"198.51.100.1", "203.0.113.7 , 10.0.0.2"}, "203.0.113.7"},
		{"every hop trusted", "127.0.0.1", []string{"10.0.0.5,10.0.0.6"}, "10.0.0.5"},
		{"garbage stops at the last trusted hop", "127.0.0.1", []string{"203.0.113.7, unknown"}, "127.0.0.1"},
		{"garbage left of a trusted hop", "127.0.0.1", []string{"unknown, 10.0.0.6"}, "10.0.0.6"},
		{"empty entries", "127.0.0.1", []string{", ,203.0.113.7,"}, "203.0.113.7"},
		{"address with a port", "127.0.0.1", []string{"203.0.113.7:4711"}, "203.0.113.7"},
		{"IPv6 with a port", "2001:db8::1", []string{"[2001:db9::1]:80"}, "2001:db9::1"},
		{"mapped peer", "::ffff:127.0.0.1", []string{"203.0.113.7"}, "203.0.113.7"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var h fasthttp.RequestHeader
			for _, v := range tc.xff {
				h.Add("X-Forwarded-For", v)
			}
			got, _ := tp.clientAddr(netip.MustParseAddr(tc.peer).Unmap(), &h)
			if got.String() != tc.want {
				t.Fatalf("client %s, want %s", got, tc.want)
			}
		})
	}
}

func TestForwardedForValue(t *testing.T) {
	g := &Gateway{cfg: Config{TrustedProxies: []string{"127.0.0.0/8"}}.withDefaults()}
	var h fasthttp.RequestHeader
	h.Add("X-Forwarded-For", "198.51.100.1")
	h.Add("X-Forwarded-For", " 203.0.113.7, 10.0.0.2 ")
	x := &exchange{}
	for _, tc := range []struct {
		peer, want, client string
	}{
		{"127.0.0.1", "198.51.100.1, 203.0.113.7, 10.0.0.2, 127.0.0.1", "10.0.0.2"},
		{"192.0.2.9", "192.0.2.9", "192.0.2.9"},
	} {
		peer := net.ParseIP(tc.peer)
		if got := string(g.forwardedFor(x, peer, &h)); got != tc.want {
			t.Errorf("peer %s: X-Forwarded-For %q, want %q", tc.peer, got, tc.want)
		}
		ip := append(net.IP(nil), peer...)
		if got := g.clientIP(ip, &h).String(); got != tc.client {
			t.Errorf("peer %s: client %s, want %s", tc.peer, got, tc.client)
		}
	}
}

// TestForwardingWithoutTrustedProxiesDoesNotAllocate: the default path costs
// what the plain peer address did.
func TestForwardingWithoutTrustedProxiesDoesNotAllocate(t *testing.T) {
	g := &Gateway{cfg: Config{}.withDefaults()}
	var h fasthttp.RequestHeader
	h.Add("X-Forwarded-For", "203.0.113.7")
	x := &exchange{scratch: make([]byte, 0, 64)}
	peer := net.ParseIP("127.0.0.1")
	ip := append(net.IP(nil), peer...)
	allocs := testing.AllocsPerRun(100, func() {
		ip = g.clientIP(ip, &h)
		_ = g.forwardedFor(x, peer, &h)
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per request", allocs)
	}
	if got := string(g.forwardedFor(x, peer, &h)); got != "127.0.0.1" {
		t.Fatalf("X-Forwarded-For %q", got)
	}
}

// TestSentChunked: an empty chunked body still counts as chunked (fasthttp
// reports Content-Length 0 for it once read).
func TestSentChunked(t *testing.T) {
	for _, tc := range []struct {
		name, raw string
		want      bool
	}{
		{"chunked body", "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", true},
		{"empty chunked body", "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", true},
		{"empty chunked body with Content-Length", "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n", true},
		{"folded", "POST /a HTTP/1.1\r\nHost: x\r\nTRANSFER-ENCODING:\r\n chunked\r\n\r\n0\r\n\r\n", true},
		{"Content-Length", "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", false},
		{"empty body", "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nX-Transfer-Encoding: chunked\r\n\r\n", false},
		{"no body", "GET /a HTTP/1.1\r\nHost: x\r\nX-Note: Transfer-Encoding: chunked\r\n\r\n", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var req fasthttp.Request
			if err := req.Read(bufio.NewReader(strings.NewReader(tc.raw))); err != nil {
				t.Fatal(err)
			}
			if got := sentChunked(&req.Header); got != tc.want {
				t.Fatalf("sentChunked %v, want %v (Content-Length %d)", got, tc.want, req.Header.ContentLength())
			}
		})
	}
}
