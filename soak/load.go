package main

import (
	"fmt"
	"io"
	"math/rand"
	"net/http"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// Client-observed outcomes.
const (
	outOKStream   = "ok_stream"   // a stream that ended with done:true / [DONE]
	outOKReply    = "ok_reply"    // a 200 non-streamed reply with the right body
	outHTTPError  = "http_error"  // an error status before any body
	outTruncError = "trunc_error" // a stream that ended with a terminal error record
	outAborted    = "aborted"     // the client left mid-stream, as planned
	outCut        = "cut"         // a stream that ended with neither done nor an error record
	outNoResponse = "no_response" // no response header within the bound, or a transport error
	outHang       = "hang"        // the body did not end within the bound
	outBadBody    = "bad_body"    // a 200 whose body is not what was asked for
)

// Verdicts; all but pass fail the run.
const (
	vPass        = "pass"
	vLost        = "LOST"
	vMisreported = "MISREPORTED"
	vDuplicated  = "DUPLICATED"
	vWrong       = "WRONG" // ended properly, but not with the injected fault's outcome
)

var outcomeColumns = []string{outOKStream, outOKReply, outHTTPError, outTruncError, outAborted, outCut, outNoResponse, outHang, outBadBody}
var verdictColumns = []string{vLost, vMisreported, vDuplicated, vWrong}

// api is the shape of a request.
type api int

const (
	apiStream api = iota // POST /api/chat, streamed NDJSON
	apiReply             // POST /api/chat, stream:false
	apiSSE               // POST /v1/chat/completions, stream:true
	apiTags              // GET /api/tags
)

// client behaviours.
const (
	clientNormal = iota
	clientAbort  // read some frames, then close the connection
	clientSlow   // read 64 bytes every 10 ms
)

// kind is one class of request in the mix, with what it must produce.
type kind struct {
	name   string
	api    api
	client int
	// fault returns the fault spec for a reply of n tokens and the frames
	// expected before the terminal record (-1: not checked).
	fault  func(r *rand.Rand, n int) (spec string, frames int)
	atMost bool // frames is an upper bound (RST may discard buffered frames)
	want   string
	status int      // with want == outHTTPError
	codes  []string // accepted error codes; nil: any
}

func nFrames(mode string) func(r *rand.Rand, n int) (string, int) {
	return func(r *rand.Rand, n int) (string, int) {
		k := 1 + r.Intn(min(10, n-1))
		return fmt.Sprintf("%s=%d", mode, k), k
	}
}

func fixed(spec string, frames int) func(*rand.Rand, int) (string, int) {
	return func(*rand.Rand, int) (string, int) { return spec, frames }
}

var (
	cleanStream = &kind{name: "stream", api: apiStream, want: outOKStream}
	cleanSSE    = &kind{name: "sse", api: apiSSE, want: outOKStream}
	cleanReply  = &kind{name: "reply", api: apiReply, want: outOKReply}
	cleanTags   = &kind{name: "tags", api: apiTags, want: outOKReply}
	cutCodes    = []string{"upstream_reset", "upstream_protocol_error"}
	// faultKinds are injected in turn, one request in ten.
	faultKinds = []*kind{
		{name: "fail_status=500 stream", api: apiStream, fault: fixed("fail_status=500", -1), want: outHTTPError, status: 500, codes: []string{""}},
		{name: "fail_status=500 reply", api: apiReply, fault: fixed("fail_status=500", -1), want: outHTTPError, status: 500, codes: []string{""}},
		{name: "die_after=N", api: apiStream, fault: nFrames("die_after"), want: outTruncError, codes: cutCodes},
		{name: "stall_after=N", api: apiStream, fault: nFrames("stall_after"), want: outTruncError, codes: []string{"upstream_idle_timeout"}},
		{name: "rst_after=N", api: apiStream, fault: nFrames("rst_after"), atMost: true, want: outTruncError, codes: cutCodes},
		{name: "error_after=N", api: apiStream, fault: nFrames("error_after"), want: outTruncError, codes: []string{""}},
		{name: "half_line_then_close", api: apiStream, fault: fixed("half_line_then_close", 1), want: outTruncError, codes: cutCodes},
		{name: "sse die_after=N", api: apiSSE, fault: nFrames("die_after"), want: outTruncError, codes: cutCodes},
		{name: "ttft=4s (> first byte 3s)", api: apiStream, fault: fixed("ttft=4s", -1), want: outHTTPError, status: 504, codes: []string{"upstream_timeout"}},
		{name: "client abort", api: apiStream, client: clientAbort, want: outAborted},
		{name: "slow reader", api: apiStream, client: clientSlow, want: outOKStream},
	}
	allKinds = append([]*kind{cleanStream, cleanSSE, cleanReply, cleanTags}, faultKinds...)
)

// plan is one request to send.
type plan struct {
	k          *kind
	id         string
	n          int  // reply tokens
	numPredict bool // size by options.num_predict rather than the header
	fault      string
	frames     int
	abortAfter int
	bound      time.Duration
}

// result is what the client saw and the verdict on it.
type result struct {
	outcome string
	status  int
	code    string
	tokens  []string
	verdict string
	detail  string
}

// tally counts results per kind; the zero value is empty.
type tally struct {
	mu       sync.Mutex
	outcomes map[string]map[string]int // kind → outcome → n
	verdicts map[string]map[string]int // kind → verdict → n
	codes    map[string]map[string]int // kind → terminal/error code → n
	sent     map[string]int
	ids      map[string]string // correlation ID → kind
	examples []string          // the first failures, for the report
	total    int
	failed   int
}

func (t *tally) add(p *plan, r result) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.outcomes == nil {
		t.outcomes, t.verdicts, t.codes = map[string]map[string]int{}, map[string]map[string]int{}, map[string]map[string]int{}
		t.sent, t.ids = map[string]int{}, map[string]string{}
	}
	inc := func(m map[string]map[string]int, a, b string) {
		if m[a] == nil {
			m[a] = map[string]int{}
		}
		m[a][b]++
	}
	name := p.k.name
	t.total++
	t.sent[name]++
	t.ids[p.id] = name
	inc(t.outcomes, name, r.outcome)
	if r.outcome == outHTTPError || r.outcome == outTruncError {
		code := r.code
		if code == "" {
			code = "(none)"
		}
		inc(t.codes, name, code)
	}
	if r.verdict != vPass {
		t.failed++
		inc(t.verdicts, name, r.verdict)
		if len(t.examples) < 20 {
			t.examples = append(t.examples, fmt.Sprintf("%s %s [%s fault=%q n=%d num_predict=%v]: %s (status %d, code %q, %d frames)",
				r.verdict, p.id, name, p.fault, p.n, p.numPredict, r.detail, r.status, r.code, len(r.tokens)))
		}
	}
}

// load drives the workers.
type load struct {
	url         string
	concurrency int
	seed        int64
	client      *http.Client
	seq         atomic.Int64
	inFlight    atomic.Int64
	stuck       int // workers still running after the grace period
	t           tally
}

func newLoad(url string, concurrency int, seed int64) *load {
	tr := &http.Transport{
		MaxIdleConns:        2 * concurrency,
		MaxIdleConnsPerHost: 2 * concurrency,
		DisableCompression:  true,
		IdleConnTimeout:     30 * time.Second,
	}
	return &load{url: url, concurrency: concurrency, seed: seed, client: &http.Client{Transport: tr}}
}

// maxPerWorker bounds each worker's loop by count as well as by time.
const maxPerWorker = 10_000_000

// run starts the workers, stops them after d and waits for them, bounded.
func (l *load) run(d time.Duration, progress io.Writer) {
	deadline := time.Now().Add(d)
	var wg sync.WaitGroup
	for w := range l.concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewSource(l.seed*1000 + int64(w)))
			for i := 0; i < maxPerWorker && time.Now().Before(deadline); i++ {
				p := l.next(r)
				l.inFlight.Add(1)
				res := l.do(p)
				l.inFlight.Add(-1)
				l.t.add(p, res)
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	tick := time.NewTicker(30 * time.Second)
	defer tick.Stop()
	grace := time.NewTimer(d + 60*time.Second) // longer than any request's bound
	defer grace.Stop()
	for {
		select {
		case <-done:
			return
		case <-tick.C:
			l.t.mu.Lock()
			fmt.Fprintf(progress, "soak: %s left, %d requests, %d failed\n", time.Until(deadline).Round(time.Second), l.t.total, l.t.failed)
			l.t.mu.Unlock()
		case <-grace.C:
			l.stuck = int(l.inFlight.Load())
			return
		}
	}
}

// next picks the next request: every tenth (globally) is the next fault in
// turn; the rest are ~78% streams (1 in 8 of them SSE) and ~22% non-streamed.
func (l *load) next(r *rand.Rand) *plan {
	seq := l.seq.Add(1)
	p := &plan{id: fmt.Sprintf("soak-%d-%d", l.seed, seq), n: 20 + r.Intn(81), numPredict: r.Intn(2) == 0}
	switch {
	case seq%10 == 0:
		p.k = faultKinds[int(seq/10)%len(faultKinds)]
	case r.Float64() < 0.78:
		p.k = cleanStream
		if r.Intn(8) == 0 {
			p.k = cleanSSE
		}
	default:
		p.k = cleanReply
		if r.Intn(4) == 0 {
			p.k = cleanTags
		}
	}
	p.frames = -1
	if p.k.fault != nil {
		p.fault, p.frames = p.k.fault(r, p.n)
	}
	if p.k.client == clientAbort {
		p.abortAfter = 1 + r.Intn(p.n/2)
	}
	// The bound: first byte, twice the nominal stream, the idle clock, slack.
	p.bound = firstByteTimeout + 2*time.Duration(p.n)*tokenDelay + upstreamIdle + 5*time.Second
	if p.k.client == clientSlow {
		p.bound += time.Duration(p.n) * 60 * time.Millisecond // ~150 B a frame at 6.4 kB/s, doubled
	}
	return p
}

func sortedKeys(m map[string]int) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
