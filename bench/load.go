package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/valyala/fasthttp"
)

// The load generator is closed-loop: each worker sends its next request
// when the previous one is done, over its own keep-alive connection. Every
// loop stops at a deadline and at a request cap, and every request has a
// timeout, so a stuck server ends the case instead of the benchmark.

var (
	chatBody   = []byte(`{"model":"llama3.2","messages":[{"role":"user","content":"hi"}],"stream":false}`)
	streamBody = []byte(`{"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}`)
	doneTrue   = []byte(`"done":true`)
	// vegaChatBody is the same question through Vega's own /chat.
	vegaChatBody = []byte(`{"prompt":"hi"}`)
)

const (
	correlationHeader = "X-Correlation-ID"
	// maxRequestsPerWorker caps a worker's requests in one case.
	maxRequestsPerWorker = 2_000_000
	// requestTimeout bounds one request, or one whole stream.
	requestTimeout = 10 * time.Second
)

func newClient(addr string, conns int, stream bool) *fasthttp.HostClient {
	return &fasthttp.HostClient{
		Addr:                addr,
		MaxConns:            conns,
		MaxConnWaitTimeout:  requestTimeout,
		MaxIdleConnDuration: time.Minute,
		ReadTimeout:         requestTimeout,
		WriteTimeout:        requestTimeout,
		StreamResponseBody:  stream,
		ReadBufferSize:      16 << 10,
	}
}

// newCall returns a load worker's pooled request (POST path with body, JSON)
// and response; release gives both back.
func newCall(addr, path string, body []byte) (*fasthttp.Request, *fasthttp.Response, func()) {
	req := fasthttp.AcquireRequest()
	req.Header.SetMethod(fasthttp.MethodPost)
	req.SetRequestURI("http://" + addr + path)
	req.Header.SetContentType("application/json")
	req.SetBodyRaw(body)
	resp := fasthttp.AcquireResponse()
	return req, resp, func() { fasthttp.ReleaseRequest(req); fasthttp.ReleaseResponse(resp) }
}

// failures counts failed requests and keeps the first reason.
type failures struct {
	mu    sync.Mutex
	n     int
	first string
}

func (f *failures) add(format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.n == 0 {
		f.first = fmt.Sprintf(format, args...)
	}
	f.n++
}

// runNonStream sends small stream:false chats from conns workers for d,
// after a warmup whose requests are not counted. With vega, the gateways
// get Vega's POST /chat {"prompt":"hi"} and the other targets the
// equivalent /api/chat "stream":false; every request carries its own
// X-Correlation-ID, which the gateway must echo in its header and body.
func runNonStream(t target, conns int, warmup, d time.Duration, vega bool) result {
	addr := t.addr
	path, body := "/api/chat", chatBody
	checkID := false
	if vega && strings.HasPrefix(t.name, "gateway") {
		path, body, checkID = "/chat", vegaChatBody, true
	}
	c := newClient(addr, conns, false)
	defer c.CloseIdleConnections()
	var fails failures
	lats := make([][]time.Duration, conns)
	start := time.Now()
	measureFrom := start.Add(warmup)
	deadline := measureFrom.Add(d)
	// The target's CPU time over the measured window: the cost per
	// request, which the machine's drift moves far less than throughput.
	used := measure(t.pid, measureFrom, deadline)
	var wg sync.WaitGroup
	for w := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, resp, release := newCall(addr, path, body)
			defer release()
			var id, want []byte
			for i := range maxRequestsPerWorker {
				if vega {
					id = fmt.Appendf(id[:0], "bench-%d-%d", w, i)
					req.Header.SetBytesV(correlationHeader, id)
				}
				t0 := time.Now()
				if !t0.Before(deadline) {
					return
				}
				err := c.DoTimeout(req, resp, requestTimeout)
				lat := time.Since(t0)
				ok := err == nil && resp.StatusCode() == fasthttp.StatusOK && json.Valid(resp.Body())
				if ok && checkID {
					want = fmt.Appendf(want[:0], `"correlation_id":%q`, id)
					ok = bytes.Equal(resp.Header.Peek(correlationHeader), id) && bytes.Contains(resp.Body(), want)
				} else if ok {
					ok = bytes.Contains(resp.Body(), doneTrue)
				}
				switch {
				case err != nil:
					fails.add("%v", err)
					time.Sleep(time.Millisecond) // no hot loop against a dead server
					continue
				case !ok:
					fails.add("status %d, %s %q, body %.200q", resp.StatusCode(), correlationHeader, resp.Header.Peek(correlationHeader), resp.Body())
					continue
				}
				if !t0.Before(measureFrom) {
					lats[w] = append(lats[w], lat)
				}
			}
		}()
	}
	wg.Wait()
	all := slices.Concat(lats...)
	slices.Sort(all)
	win := <-used
	return result{
		cpuPerReq: perUnit(win.cpu, len(all)),
		syscalls:  win.syscalls.per(len(all)),
		rps:       float64(len(all)) / d.Seconds(),
		p50:       pct(all, 0.50), p90: pct(all, 0.90), p99: pct(all, 0.99),
		failed: fails.n, errMsg: fails.first,
	}
}

// window is what a server used over a measured window.
type window struct {
	cpu      time.Duration  // user + system, all threads; -1 if the process went away
	syscalls *syscallCounts // with -syscalls; nil otherwise or if perf failed
}

// measure sends what pid (and its children) used from from to to.
func measure(pid int, from, to time.Time) <-chan window {
	ch := make(chan window, 1)
	go func() {
		time.Sleep(time.Until(from))
		var sc *syscallCounter
		if countSyscalls {
			var err error
			if sc, err = startSyscallCounter(pid); err != nil {
				fmt.Fprintln(os.Stderr, "bench: perf stat:", err)
			}
		}
		c0 := cpuTime(pid)
		time.Sleep(time.Until(to))
		c1 := cpuTime(pid)
		w := window{cpu: c1 - c0}
		if sc != nil {
			w.syscalls = sc.stop()
		}
		if c0 < 0 || c1 < 0 {
			w.cpu = -1
		}
		ch <- w
	}()
	return ch
}

// perUnit is used CPU in µs per unit of work; -1 when either is unknown.
func perUnit(used time.Duration, units int) float64 {
	if used < 0 || units == 0 {
		return -1
	}
	return float64(used.Microseconds()) / float64(units)
}

// runStream keeps conc streams open for d (after warmup) and measures time
// to first chunk and the gaps between chunks. Workers start staggered over
// one stream's length so they do not all tick together. A stream counts
// only if every line is JSON and the last one says "done":true.
func runStream(t target, conc, tokens int, pacing, warmup, d time.Duration) result {
	addr := t.addr
	c := newClient(addr, conc, true)
	defer c.CloseIdleConnections()
	var fails failures
	var mu sync.Mutex
	var ttfcs, gaps []time.Duration
	streams, stalls, frames := 0, 0, 0
	stallAt := 10 * pacing
	start := time.Now()
	measureFrom := start.Add(warmup)
	deadline := measureFrom.Add(d)
	// CPU per frame: the server's CPU over the window, over the frames of
	// the streams started in it (those still running at its end make up
	// for those that began before it).
	used := measure(t.pid, measureFrom, deadline)
	streamLen := time.Duration(tokens) * pacing
	var wg sync.WaitGroup
	for w := range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			time.Sleep(streamLen * time.Duration(w) / time.Duration(conc))
			req, resp, release := newCall(addr, "/api/chat", streamBody)
			defer release()
			br := bufio.NewReaderSize(nil, 16<<10)
			var myGaps []time.Duration
			for range maxRequestsPerWorker {
				t0 := time.Now()
				if !t0.Before(deadline) {
					return
				}
				myGaps = myGaps[:0]
				ttfc, ok := oneStream(c, req, resp, br, t0, &myGaps, &fails)
				if !ok {
					time.Sleep(time.Millisecond)
					continue
				}
				if t0.Before(measureFrom) {
					continue
				}
				mu.Lock()
				streams++
				frames += len(myGaps) + 1
				ttfcs = append(ttfcs, ttfc)
				gaps = append(gaps, myGaps...)
				for _, g := range myGaps {
					if g > stallAt {
						stalls++
					}
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	slices.Sort(ttfcs)
	slices.Sort(gaps)
	win := <-used
	cpuPerFrame, syscalls := perUnit(win.cpu, frames), win.syscalls.per(frames)
	if conc == 1 {
		// One paced stream leaves the server idle most of the time: its
		// CPU is timers and the runtime, in 10 ms ticks, not frames.
		cpuPerFrame, syscalls = -1, nil
	}
	return result{
		cpuPerFrame: cpuPerFrame,
		syscalls:    syscalls,
		ttfc50:      pct(ttfcs, 0.50), ttfc99: pct(ttfcs, 0.99),
		gap50: pct(gaps, 0.50), gap99: pct(gaps, 0.99), gapMax: pct(gaps, 1),
		stalls: stalls, streams: streams, failed: fails.n, errMsg: fails.first,
	}
}

// oneStream reads one NDJSON stream, appending the gaps between lines.
func oneStream(c *fasthttp.HostClient, req *fasthttp.Request, resp *fasthttp.Response, br *bufio.Reader,
	t0 time.Time, gaps *[]time.Duration, fails *failures) (ttfc time.Duration, ok bool) {
	// The deadline covers the response headers; the body is bounded by
	// the client's ReadTimeout per read.
	if err := c.DoDeadline(req, resp, t0.Add(requestTimeout)); err != nil {
		fails.add("%v", err)
		return 0, false
	}
	defer resp.CloseBodyStream() //nolint:errcheck // nothing to do about it
	if resp.StatusCode() != fasthttp.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.BodyStream(), 512))
		fails.add("status %d body %.200q", resp.StatusCode(), body)
		return 0, false
	}
	br.Reset(resp.BodyStream())
	return readStream(br, t0, gaps, fails)
}

// readStream reads an NDJSON stream line by line, timing the first line
// (TTFC, from t0) and the gaps between lines; the stream counts only if
// every line is JSON and the last says "done":true.
func readStream(br *bufio.Reader, t0 time.Time, gaps *[]time.Duration, fails *failures) (ttfc time.Duration, ok bool) {
	var last time.Time
	lines, done := 0, false
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 {
			now := time.Now()
			if lines == 0 {
				ttfc = now.Sub(t0)
			} else {
				*gaps = append(*gaps, now.Sub(last))
			}
			last = now
			lines++
			if !json.Valid(line) {
				fails.add("line %d is not JSON: %.200q", lines, line)
				return 0, false
			}
			done = bytes.Contains(line, doneTrue)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			fails.add("after %d lines: %v", lines, err)
			return 0, false
		}
	}
	if !done {
		fails.add("stream of %d lines ended without done:true", lines)
		return 0, false
	}
	return ttfc, true
}
