package pool

import "testing"

func TestWatcherFor(t *testing.T) {
	p := &Pool{watches: map[[16]byte]func() bool{}}
	const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	key, ok := traceKey([]byte(tp))
	if !ok || string(key[:]) != "00f067aa0ba902b7" {
		t.Fatalf("traceKey(%q) = %q, %v", tp, key, ok)
	}
	gone := func() bool { return true }
	p.watch(key, gone)
	for _, tc := range []struct {
		name, head string
		found      bool
	}{
		{"as set", "POST /api/chat HTTP/1.1\r\nHost: u\r\ntraceparent: " + tp + "\r\n\r\n", true},
		{"normalised", "POST /api/chat HTTP/1.1\r\nTraceparent: " + tp + "\r\nX: y\r\n\r\n", true},
		{"other parent-id", "POST / HTTP/1.1\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-1111111111111111-01\r\n\r\n", false},
		{"no header", "POST / HTTP/1.1\r\nHost: u\r\n\r\n", false},
		{"in a value, not a name", "POST / HTTP/1.1\r\nX-Note: traceparent: " + tp + "\r\n\r\n", false},
		{"truncated value", "POST / HTTP/1.1\r\ntraceparent: 00-4bf9\r\n\r\n", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := p.watcherFor([]byte(tc.head)) != nil; got != tc.found {
				t.Errorf("found = %v, want %v", got, tc.found)
			}
		})
	}
	p.unwatch(key)
	if p.watcherFor([]byte("POST / HTTP/1.1\r\ntraceparent: "+tp+"\r\n\r\n")) != nil || p.watching.Load() != 0 {
		t.Error("a finished call is still watched")
	}
}
