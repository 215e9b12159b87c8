package pool

import "testing"

func TestAmbiguousFraming(t *testing.T) {
	for _, tc := range []struct {
		name, head string
		want       bool
	}{
		{"both", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n", true},
		{"both, other case and order", "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nCONTENT-LENGTH: 2\r\n\r\n", true},
		{"bare LF", "HTTP/1.1 200 OK\nContent-Length: 2\nTransfer-Encoding: chunked\n\n", true},
		{"length only", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", false},
		{"chunked only", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", false},
		{"in the body, not the headers", "HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\nTransfer-Encoding: chunked\r\n", false},
		{"a value, not a name", "HTTP/1.1 200 OK\r\nX-Note: Transfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := ambiguousFraming([]byte(tc.head)); got != tc.want {
				t.Errorf("ambiguousFraming = %v, want %v", got, tc.want)
			}
		})
	}
}
