package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/vega-gateway/vega-gateway/access"
	"github.com/vega-gateway/vega-gateway/fleet"
	"github.com/vega-gateway/vega-gateway/gateway"
	"github.com/vega-gateway/vega-gateway/metrics"
	"github.com/vega-gateway/vega-gateway/pool"
)

// TestLogSuppressedMetric is F-43's counter on /metrics: with
// auth.failure_log_lines_per_second 1, three wrong keys in a row write one
// line and vega_log_suppressed_total reads 2.
func TestLogSuppressedMetric(t *testing.T) {
	p, err := pool.New(pool.UpstreamConfig{URL: "http://127.0.0.1:1"}, pool.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	f := fleet.Single(p)
	gw, err := gateway.New(gateway.Config{}, gateway.ChatConfig{},
		access.Config{APIKeys: []string{"metric-key-0123456789abcdef0123"}, FailureLogLinesPerSecond: 1},
		f, zerolog.New(io.Discard))
	if err != nil {
		t.Fatal(err)
	}
	_, sink := newLogger(logConfig{Level: "info", MaxSizeMB: 1, BufferLines: 16}, io.Discard, io.Discard)
	defer sink.Close()
	m, err := newObservability(metrics.Config{}, f, gw, sink)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() { defer close(served); _ = gw.Serve(ln) }()
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = gw.Shutdown(ctx)
		<-served
	}()

	// Sent back to back, well within one second: only the first is logged.
	// (Should they straddle a second boundary, two are logged; the
	// counter and the method must still agree.)
	for range 3 {
		req, _ := http.NewRequest("GET", "http://"+ln.Addr().String()+"/api/tags", nil)
		req.Header.Set("X-API-Key", "wrong")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 401 {
			t.Fatalf("status %d, want 401", resp.StatusCode)
		}
	}
	mfs, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "vega_log_suppressed_total" {
			got := mf.GetMetric()[0].GetCounter().GetValue()
			if want := float64(gw.SuppressedLogLines()); got != want || got < 1 || got > 2 {
				t.Fatalf("vega_log_suppressed_total = %v, want %v (1 or 2)", got, want)
			}
			return
		}
	}
	t.Fatal("vega_log_suppressed_total is not registered")
}
