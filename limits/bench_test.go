package limits_test

import (
	"testing"

	"github.com/rs/zerolog"

	"github.com/vega-gateway/vega-gateway/limits"
	"github.com/vega-gateway/vega-gateway/redistest"
)

// BenchmarkAdmitDone is one request's limiter work with every per-key
// limit on: admission and end, in the process and over a loopback Redis.
func BenchmarkAdmitDone(b *testing.B) {
	srv := redistest.Start(b)
	for _, tc := range []struct {
		name string
		cfg  limits.Config
	}{{"memory", limits.Config{}}, {"redis", limits.Config{RedisURL: srv.URL()}}} {
		b.Run(tc.name, func(b *testing.B) {
			l, err := limits.New(tc.cfg, zerolog.Nop())
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			l.SetKeys(map[string]limits.KeyLimits{"k": {RequestsPerMinute: 1e9, MaxConcurrent: 1e9, TokensPerMinute: 1e15, TokensPerDay: 1e15}})
			b.ReportAllocs()
			for b.Loop() {
				g, d := l.Admit(ip1, "k")
				if !d.OK() {
					b.Fatal(d.Reason)
				}
				l.Done(&g, 10)
			}
		})
	}
}
