package gateway

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/vega-gateway/vega-gateway/pool"
)

// progressLine is one line of Ollama's pull and create progress stream
// (api.ProgressResponse, or its {"error"} line).
type progressLine struct {
	Status    string `json:"status"`
	Digest    string `json:"digest,omitempty"`
	Total     int64  `json:"total,omitempty"`
	Completed int64  `json:"completed,omitempty"`
	Error     string `json:"error,omitempty"`
}

type eventKind uint8

const (
	evStarted eventKind = iota // the backend's stream began (2xx)
	evLine                     // a progress line
	evDone                     // the call is over; its goroutine is exiting
)

// progressEvent is what a backend's goroutine tells the progress writer.
type progressEvent struct {
	i    int
	kind eventKind
	line progressLine
}

// serveProgress runs a streamed pull or create on every backend and merges
// their progress into one stream (see serveFleetWide). The handler waits
// until the first backend's stream begins, so that a request every
// backend refuses gets a whole error answer; then a stream writer owns the
// exchange.
//
// Each backend's call runs on a goroutine of its own, owned by the fan-out:
// it ends when its backend's stream does (its pool's first-byte and idle
// timeouts bound that), or when stop interrupts it, and its last act is
// its evDone event. Whoever reads the events — the handler, then the
// stream writer — reads until every call's evDone, also after the client
// has left, so no goroutine is left blocked on the channel.
func (f *fanOut) serveProgress(ctx *fasthttp.RequestCtx) bool {
	x := f.x
	// The handler returns while requests may still be going out: they
	// carry a copy of the body (a few hundred bytes), not a view of the
	// RequestCtx's.
	f.body = append([]byte(nil), f.body...)
	for _, c := range f.calls {
		c.req.SetBodyRaw(f.body)
	}
	n := len(f.calls)
	events := make(chan progressEvent, 4*n)
	for i := range f.calls {
		go f.streamCall(i, events)
	}
	var pending []progressEvent
	started, done := false, 0
	for !started && done < n {
		e := <-events
		pending = append(pending, e)
		switch e.kind {
		case evStarted:
			started = true
		case evDone:
			done++
		}
	}
	if !started {
		f.note()
		f.progress = true
		f.answer(ctx)
		return false
	}
	x.ttfb = time.Since(f.start)
	ctx.SetStatusCode(fasthttp.StatusOK)
	ctx.SetContentType(string(mimeNDJSON))
	ctx.Response.Header.Set("Cache-Control", "no-cache")
	ctx.Response.Header.Set("X-Accel-Buffering", "no")
	x.status, x.upstreamStatus = fasthttp.StatusOK, fasthttp.StatusOK
	pw := &progressWriter{f: f, events: events, pending: pending, layers: map[string]*layerProgress{}}
	// From here on the writer owns x: it may run and finish before this
	// handler returns, so nothing below touches x.
	x.streamed = true
	ctx.SetBodyStreamWriter(pw.run)
	return true
}

// streamCall runs one backend's share of a streamed pull or create,
// reading its progress lines into events.
func (f *fanOut) streamCall(i int, events chan<- progressEvent) {
	c := f.calls[i]
	defer func() { events <- progressEvent{i: i, kind: evDone} }()
	defer c.b.RefreshCatalogue()
	defer f.recoverCall(c)
	_, rel, err := f.roundTrip(c)
	if err != nil {
		c.err = err
		return
	}
	defer f.closeCall(c, rel)
	limit := c.b.Pool.MaxResponseBytes()
	if c.status < 200 || c.status >= 300 {
		c.body, c.err = readWhole(c.resp, limit)
		return
	}
	if f.stopped.Load() { // stopped before stop could see c.resp
		c.err = pool.ErrClientGone
		return
	}
	events <- progressEvent{i: i, kind: evStarted}
	if !hasMediaType(c.resp.Header.ContentType(), mimeNDJSON) {
		// A whole answer (a backend that does not stream): one line.
		var body []byte
		if body, c.err = readWhole(c.resp, limit); c.err == nil {
			f.readLine(c, i, body, events)
		}
	} else {
		fr := newFramer(c.resp.BodyStream(), false, f.g.cfg.MaxFrameBytes)
		for {
			line, err := fr.next()
			if err == io.EOF {
				break
			}
			if err != nil {
				c.err = classifyBody(err)
				break
			}
			if !f.readLine(c, i, line, events) {
				break
			}
		}
	}
	switch {
	case c.ok:
		c.err = nil // whatever came after the success line does not undo it
	case c.err == nil && c.msg == "":
		// The stream ended without Ollama's success line: cut short.
		c.err = classifyBody(io.ErrUnexpectedEOF)
	}
	if c.err != nil {
		if f.stopped.Load() {
			c.b.Pool.NoteClientDisconnect()
		} else {
			c.b.Pool.NoteError()
		}
	}
}

// readLine reads one progress line of c: an error ends the call, the
// success line marks it, others are handed to the writer. It reports
// whether to read on.
func (f *fanOut) readLine(c *backendCall, i int, line []byte, events chan<- progressEvent) bool {
	var l progressLine
	if err := json.Unmarshal(line, &l); err != nil {
		c.err = fmt.Errorf("progress line: %w", errors.Join(pool.ErrProtocol, err))
		return false
	}
	switch {
	case l.Error != "":
		c.msg = l.Error
		return false
	case l.Digest == "" && l.Status == "success":
		c.ok = true
	case l.Digest != "" || l.Status != "":
		events <- progressEvent{i: i, kind: evLine, line: l}
	}
	return true
}

// progressWriter writes the merged progress stream. It runs on fasthttp's
// stream-writer goroutine and touches no RequestCtx; w is fasthttp's pipe
// to the response, and a failed write or flush means the client left.
type progressWriter struct {
	f       *fanOut
	events  <-chan progressEvent
	pending []progressEvent
	// done counts the evDone events seen, failed those of calls that did
	// not succeed.
	done, failed int
	layers       map[string]*layerProgress
	// writeErr is the first failed write: nothing more is written.
	writeErr error
	armed    bool
}

// layerProgress is one layer's progress summed over the backends.
type layerProgress struct {
	// total is fixed when the layer first shows (a progress bar takes its
	// size from its first line): its size times the backends working then.
	total     int64
	completed []int64
}

// run writes the stream, then finishes the exchange: exactly once, after
// every call's goroutine is done, also when the client left or a bug
// panicked.
func (p *progressWriter) run(w *bufio.Writer) {
	f, x := p.f, p.f.x
	defer func() {
		if r := recover(); r != nil {
			f.g.recovered(x, r)
			f.stop()
			p.write(w, terminalFrame(familyNative, false, errInternal, x.id))
		}
		for p.done < len(f.calls) {
			if e := <-p.events; e.kind == evDone {
				p.done++
			}
		}
		f.note()
		p.end()
		x.finish()
	}()
	for _, e := range p.pending {
		p.handle(w, e)
	}
	p.pending = nil
	for p.done < len(f.calls) {
		p.handle(w, <-p.events)
	}
	p.final(w)
}

func (p *progressWriter) handle(w *bufio.Writer, e progressEvent) {
	c := p.f.calls[e.i]
	switch e.kind {
	case evLine:
		if e.line.Digest != "" {
			p.writeLine(w, p.layer(e.i, e.line))
			return
		}
		p.writeLine(w, progressLine{Status: c.b.Name + ": " + e.line.Status})
	case evDone:
		p.done++
		if c.ok {
			p.writeLine(w, progressLine{Status: c.b.Name + ": success"})
			return
		}
		p.failed++
		p.writeLine(w, progressLine{Status: c.b.Name + ": error: " + c.message()})
	}
}

// layer folds a backend's progress on a layer into the fleet's.
func (p *progressWriter) layer(i int, l progressLine) progressLine {
	ly := p.layers[l.Digest]
	if ly == nil {
		ly = &layerProgress{completed: make([]int64, len(p.f.calls))}
		p.layers[l.Digest] = ly
	}
	if ly.total == 0 && l.Total > 0 {
		ly.total = l.Total * int64(len(p.f.calls)-p.failed)
	}
	ly.completed[i] = max(l.Completed, 0)
	var sum int64
	for _, n := range ly.completed {
		sum += n
	}
	if ly.total > 0 {
		sum = min(sum, ly.total)
	}
	return progressLine{Status: l.Status, Digest: l.Digest, Total: ly.total, Completed: sum}
}

// final writes the one line that ends the stream: Ollama's success line,
// or an error naming the backends that failed.
func (p *progressWriter) final(w *bufio.Writer) {
	var ok, failed []*backendCall
	for _, c := range p.f.calls {
		if c.ok {
			ok = append(ok, c)
		} else {
			failed = append(failed, c)
		}
	}
	if len(failed) == 0 {
		p.writeLine(w, progressLine{Status: "success"})
		return
	}
	e := apiError{fasthttp.StatusBadGateway, "backend_failed", failureMessage(p.f.op, false, ok, nil, failed), outcomeUpstreamStreamError, ""}
	p.write(w, terminalFrame(familyNative, false, e, p.f.x.id))
}

func (p *progressWriter) writeLine(w *bufio.Writer, l progressLine) {
	b, _ := json.Marshal(l) // strings and numbers: cannot fail
	p.write(w, append(b, '\n'))
}

// write sends one line and flushes it. The first failure stops every
// backend (Ollama stops a pull whose client left) and silences the rest.
func (p *progressWriter) write(w *bufio.Writer, line []byte) {
	if p.writeErr != nil {
		return
	}
	x := p.f.x
	if d := p.f.g.cfg.WriteIdleTimeout; d > 0 {
		// The server writes what is flushed right away, on the client
		// connection: a client that takes nothing for d fails that write,
		// and the next flush here fails with it.
		_ = x.conn.SetWriteDeadline(time.Now().Add(d))
		p.armed = true
	}
	_, err := w.Write(line)
	if err == nil {
		err = w.Flush()
	}
	if err != nil {
		p.writeErr = err
		p.f.clientLeft.Store(true)
		p.f.stop()
		return
	}
	x.bytesOut += int64(len(line))
	if x.frames == 0 {
		x.ttft = time.Since(x.start)
	}
	x.frames++
}

// end settles the access log's outcome and clears the write deadline.
func (p *progressWriter) end() {
	x := p.f.x
	if p.armed {
		_ = x.conn.SetWriteDeadline(time.Time{})
	}
	switch {
	case p.writeErr != nil:
		x.outcome = outcomeClientClosed
		if isTimeoutErr(p.writeErr) {
			x.outcome = outcomeClientWriteTimeout
		}
	case x.outcome == "" && p.failed > 0:
		x.outcome = outcomeUpstreamStreamError
	}
}

// message is why c failed, for a progress line.
func (c *backendCall) message() string {
	if _, msg := c.failure(); msg != "" {
		return msg
	}
	return "failed"
}
