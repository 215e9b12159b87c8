package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/valyala/fasthttp"
)

// The fleet case's load: closed-loop clients, each holding one
// conversation at a time and sending its turns one after the other as
// streamed /api/chat requests. A client's conversations come from its own
// random source, seeded from -fleet-seed and the client's number, so every
// variant is sent the same requests in the same order per client.

const (
	// fleetRequestTimeout bounds one request, headers to last line: longer
	// than a cold load behind a queue of others.
	fleetRequestTimeout = 30 * time.Second
	// fleetBackoff is a client's pause after a failed request.
	fleetBackoff = 100 * time.Millisecond
)

// chatMessage is one message of an /api/chat request.
type chatMessage struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

// fleetOutcome is how one request ended, as the client saw it.
type fleetOutcome struct {
	ok    bool
	ttft  time.Duration // to the first frame with content
	reply string        // the reply's text, for the next turn
	// A failed request failed before the response started (no response,
	// or an error status), or after a 200 (the stream was cut or ended
	// in an error line).
	failedBefore, cut bool
	busy              bool // a 503 saying the server is busy
	err               string
}

// fleetLoad is what the clients saw over the measured window.
type fleetLoad struct {
	// measureFrom and endsAt bound the window (set before the clients
	// start, then only read): requests start until endsAt and count from
	// measureFrom.
	measureFrom, endsAt time.Time

	mu                 sync.Mutex // guards the rest
	ttfts              []time.Duration
	ok                 int
	failedBefore, cut  int
	busy               int    // of the failed before the response
	firstErr, firstCut string // the first reason of each kind, for the log
}

// record counts a request that started at t0, if in the window.
func (l *fleetLoad) record(t0 time.Time, o fleetOutcome) {
	if t0.Before(l.measureFrom) {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case o.ok:
		l.ok++
		l.ttfts = append(l.ttfts, o.ttft)
	case o.cut:
		l.cut++
		if l.firstCut == "" {
			l.firstCut = o.err
		}
	default:
		l.failedBefore++
		if l.firstErr == "" {
			l.firstErr = o.err
		}
	}
	if o.busy {
		l.busy++
	}
}

// runFleetLoad runs w's clients against addr until endsAt; requests
// started before measureFrom are not counted. It returns once every
// client's last request has ended.
func runFleetLoad(w *fleetWorkload, addr string, seed uint64, measureFrom, endsAt time.Time) *fleetLoad {
	c := &fasthttp.HostClient{
		Addr:                addr,
		MaxConns:            w.clients + 8,
		MaxConnWaitTimeout:  fleetRequestTimeout,
		MaxIdleConnDuration: time.Minute,
		ReadTimeout:         fleetRequestTimeout,
		WriteTimeout:        10 * time.Second,
		StreamResponseBody:  true,
		ReadBufferSize:      16 << 10,
	}
	defer c.CloseIdleConnections()
	l := &fleetLoad{measureFrom: measureFrom, endsAt: endsAt}
	var wg sync.WaitGroup
	for i := range w.clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(seed, uint64(w.id[0])<<32|uint64(i)))
			fleetClient(c, addr, w, i, r, l)
		}()
	}
	wg.Wait()
	return l
}

// fleetClient sends conversations until the load ends. A failed turn
// ends its conversation; the next starts after fleetBackoff. Each request
// carries the correlation ID <workload>-<client>-<conversation>-<turn>,
// which the gateway logs (-fleet-log).
func fleetClient(c *fasthttp.HostClient, addr string, w *fleetWorkload, client int, r *rand.Rand, l *fleetLoad) {
	req := fasthttp.AcquireRequest()
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.Header.SetMethod(fasthttp.MethodPost)
	req.SetRequestURI("http://" + addr + "/api/chat")
	req.Header.SetContentType("application/json")
	br := bufio.NewReaderSize(nil, 16<<10)
	var id []byte
	for n := 0; ; n++ {
		conv := w.next(r)
		var msgs []chatMessage
		if conv.system != "" {
			msgs = append(msgs, chatMessage{"system", conv.system})
		}
		for i, u := range conv.users {
			if i > 0 {
				if time.Until(l.endsAt) < conv.think[i-1] {
					return
				}
				time.Sleep(conv.think[i-1])
			}
			t0 := time.Now()
			if !t0.Before(l.endsAt) {
				return
			}
			msgs = append(msgs, chatMessage{"user", u})
			body, _ := json.Marshal(struct {
				Model    string        `json:"model"`
				Messages []chatMessage `json:"messages"`
			}{conv.model, msgs})
			req.SetBodyRaw(body)
			id = fmt.Appendf(id[:0], "%s-%d-%d-%d", w.id, client, n, i+1)
			req.Header.SetBytesV(correlationHeader, id)
			o := fleetRequest(c, req, resp, br, t0)
			l.record(t0, o)
			if !o.ok {
				time.Sleep(fleetBackoff)
				break
			}
			msgs = append(msgs, chatMessage{"assistant", o.reply})
		}
	}
}

// fleetFrame is the part of an NDJSON line the client reads.
type fleetFrame struct {
	Message struct {
		Content string `json:"content"`
	} `json:"message"`
	Done  bool   `json:"done"`
	Error string `json:"error"`
}

// fleetRequest sends req and reads the streamed reply to its end.
func fleetRequest(c *fasthttp.HostClient, req *fasthttp.Request, resp *fasthttp.Response, br *bufio.Reader, t0 time.Time) fleetOutcome {
	if err := c.DoDeadline(req, resp, t0.Add(fleetRequestTimeout)); err != nil {
		return fleetOutcome{failedBefore: true, err: err.Error()}
	}
	defer resp.CloseBodyStream() //nolint:errcheck // nothing to do about it
	if st := resp.StatusCode(); st != fasthttp.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.BodyStream(), 512))
		return fleetOutcome{failedBefore: true, busy: st == fasthttp.StatusServiceUnavailable && bytes.Contains(body, []byte("busy")),
			err: fmt.Sprintf("status %d: %.200s", st, body)}
	}
	br.Reset(resp.BodyStream())
	var (
		o     fleetOutcome
		reply strings.Builder
		lines int
	)
	for {
		line, err := br.ReadSlice('\n')
		if len(bytes.TrimSpace(line)) > 0 {
			lines++
			var f fleetFrame
			if jerr := json.Unmarshal(line, &f); jerr != nil {
				return fleetOutcome{cut: true, err: fmt.Sprintf("line %d is not JSON: %.200q", lines, line)}
			}
			if f.Error != "" {
				return fleetOutcome{cut: true, err: fmt.Sprintf("error line after %d lines: %s", lines, f.Error)}
			}
			if f.Message.Content != "" && reply.Len() == 0 {
				o.ttft = time.Since(t0)
			}
			reply.WriteString(f.Message.Content)
			if f.Done {
				o.ok, o.reply = true, reply.String()
				return o
			}
		}
		if err == io.EOF {
			return fleetOutcome{cut: true, err: fmt.Sprintf("stream of %d lines ended without done:true", lines)}
		}
		if err != nil {
			return fleetOutcome{cut: true, err: fmt.Sprintf("after %d lines: %v", lines, err)}
		}
	}
}

// percentiles sorts the TTFTs and returns p50 and p95.
func (l *fleetLoad) percentiles() (p50, p95 time.Duration) {
	slices.Sort(l.ttfts)
	return pct(l.ttfts, 0.50), pct(l.ttfts, 0.95)
}
