package gateway

import (
	"bytes"
	"errors"
	"net"
	"strings"
	"testing"

	"github.com/rs/zerolog"
)

func TestFasthttpLoggerRedacts(t *testing.T) {
	const key = "fasthttp-log-key-0123456789abcdef"
	addr := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 8000}
	for _, tc := range []struct {
		name   string
		format string
		args   []any
		want   string
	}{
		{"first line quoted (fasthttp ignores SecureErrorLogMessage here)",
			"error when serving connection %q<->%q: %v",
			[]any{addr, addr, errors.New(`error when reading request headers: cannot find whitespace in the first line of request "T //chatHTTP/1.1\r\nX-API-Key: ` + key + `\r\n"`)},
			`error when serving connection "127.0.0.1:8000"<->"127.0.0.1:8000": error when reading request headers: cannot find whitespace in the first line of request [input redacted]`},
		{"plain error kept", "error: %v", []any{errors.New("i/o timeout")}, "error: i/o timeout"},
		{"raw bytes dropped", "got %q", []any{[]byte("X-API-Key: " + key)}, `got "[redacted]"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			fasthttpLogger{log: zerolog.New(&buf)}.Printf(tc.format, tc.args...)
			if strings.Contains(buf.String(), key) {
				t.Fatalf("key logged: %s", buf.String())
			}
			if !strings.Contains(buf.String(), strings.ReplaceAll(tc.want, `"`, `\"`)) {
				t.Fatalf("logged %s, want message %q", buf.String(), tc.want)
			}
		})
	}
}
