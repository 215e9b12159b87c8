package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// The scale case opens n slow streams, their starts spread evenly over a
// ramp, each on its own connection, and watches the target's memory and
// (for the gateway) goroutines while they run. The client side is kept
// cheap per stream — a raw net.Conn, two small bufio buffers, one
// goroutine — so that 5,000 of them fit beside the servers. One wave per
// run: -duration does not apply.

// scaleRequest is one streamed /api/chat to addr on its own connection
// (the fake, like Ollama, accepts only a loopback Host).
func scaleRequest(addr string) []byte {
	return fmt.Appendf(nil, "POST /api/chat HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"+
		"Content-Length: %d\r\nConnection: close\r\n\r\n%s", addr, len(streamBody), streamBody)
}

// sampleEvery is how often the target's RSS and goroutines are read.
const sampleEvery = 100 * time.Millisecond

// runScale runs one wave of n streams of tokens × pacing against t.
func runScale(t target, n, tokens int, pacing, ramp time.Duration) result {
	streamLen := time.Duration(tokens) * pacing
	// A stream's whole life, from dial to its last byte, is bounded.
	streamTimeout := 2*streamLen + 30*time.Second
	isGateway := t.name != "direct" && t.name != "nginx"
	isProxy := t.name != "direct"

	time.Sleep(500 * time.Millisecond) // let the previous target's wave settle
	baseRSS := rssKB(t.pid)
	baseG := -1
	if isGateway {
		baseG = t.ctl.goroutines()
	}

	var (
		fails        failures
		mu           sync.Mutex
		ttfcs, gaps  []time.Duration
		streams      int
		stalls       int
		open, peak   atomic.Int64
		peakRSS      = baseRSS
		peakG        = baseG
		stopSampling = make(chan struct{})
		sampled      = make(chan struct{})
	)
	go func() {
		defer close(sampled)
		tick := time.NewTicker(sampleEvery)
		defer tick.Stop()
		for {
			select {
			case <-stopSampling:
				return
			case <-tick.C:
			}
			if kb := rssKB(t.pid); kb > peakRSS {
				peakRSS = kb
			}
			if isGateway {
				if g := t.ctl.goroutines(); g > peakG {
					peakG = g
				}
			}
		}
	}()

	req := scaleRequest(t.addr)
	stallAt := 10 * pacing
	start := time.Now()
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			time.Sleep(time.Until(start.Add(ramp * time.Duration(i) / time.Duration(n))))
			gaps1 := make([]time.Duration, 0, tokens+1)
			ttfc, ok := rawStream(t.addr, req, streamTimeout, &gaps1, &fails, &open, &peak)
			if !ok {
				return
			}
			mu.Lock()
			defer mu.Unlock()
			streams++
			ttfcs = append(ttfcs, ttfc)
			gaps = append(gaps, gaps1...)
			for _, g := range gaps1 {
				if g > stallAt {
					stalls++
				}
			}
		}()
	}
	wg.Wait()
	close(stopSampling)
	<-sampled

	slices.Sort(ttfcs)
	slices.Sort(gaps)
	r := result{
		ttfc50: pct(ttfcs, 0.50), ttfc99: pct(ttfcs, 0.99),
		gap50: pct(gaps, 0.50), gap99: pct(gaps, 0.99), gapMax: pct(gaps, 1),
		stalls: stalls, streams: streams, peakConc: int(peak.Load()),
		failed: fails.n, errMsg: fails.first,
		rssPeakMB: -1, rssPerStream: -1, gorPerStream: -1,
	}
	if isProxy && baseRSS > 0 {
		r.rssPeakMB = float64(peakRSS) / 1024
		r.rssPerStream = float64(peakRSS-baseRSS) / float64(n)
	}
	if isGateway && baseG >= 0 {
		r.gorPerStream = float64(peakG-baseG) / float64(n)
	}
	return r
}

// rawStream sends one streamed chat on a new connection and reads the
// NDJSON reply to its end: TTFC counts from the dial. A stream counts only
// if the status is 200, every line is JSON and the last says "done":true.
func rawStream(addr string, req []byte, timeout time.Duration, gaps *[]time.Duration, fails *failures, open, peak *atomic.Int64) (ttfc time.Duration, ok bool) {
	t0 := time.Now()
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		fails.add("dial: %v", err)
		return 0, false
	}
	defer conn.Close()
	for now, p := open.Add(1), peak.Load(); now > p && !peak.CompareAndSwap(p, now); p = peak.Load() {
	}
	defer open.Add(-1)
	_ = conn.SetDeadline(t0.Add(timeout))
	if _, err := conn.Write(req); err != nil {
		fails.add("write: %v", err)
		return 0, false
	}
	br := bufio.NewReaderSize(conn, 2<<10)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		fails.add("response: %v", err)
		return 0, false
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		fails.add("status %d body %.200q", resp.StatusCode, body)
		return 0, false
	}
	return readStream(bufio.NewReaderSize(resp.Body, 1<<10), t0, gaps, fails) // a line is ~150 bytes
}
