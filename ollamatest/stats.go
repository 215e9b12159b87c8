package ollamatest

import (
	"bytes"
	"io"
	"net/http"
	"time"
)

// Stats is a snapshot of the fake's counters. Counters count since start or
// the last ResetStats; ConnsOpen and InFlight are always live values.
type Stats struct {
	ConnsOpened     int64 // TCP connections accepted
	ConnsClosed     int64 // TCP connections closed, by either side
	ConnsOpen       int64 // connections open now
	PeakConns       int64 // most connections open at once
	Requests        int64 // requests received
	InFlight        int64 // requests being handled now
	PeakInFlight    int64 // most requests handled at once
	ClientCancelled int64 // requests whose client left before the fake finished writing

	// Scheduler mode only (Config.Scheduler).
	ColdLoads          int64 // model loads performed
	Evictions          int64 // models unloaded to make room
	BusyRejections     int64 // 503 "server busy" answers
	PromptTokens       int64 // prompt tokens of inference requests (cached + new)
	CachedPromptTokens int64 // of those, served from a slot's prompt cache
}

// Request is the record of one request, as the fake received it.
type Request struct {
	Method   string
	Path     string
	RawQuery string
	Host     string
	Header   http.Header
	Body     []byte // the first MaxRecordedBody bytes; nil for blob uploads
	BodySize int64  // bytes of body received
	Fault    string // the fault mode in force ("" for none)
	// Cancelled reports that the client went away before the fake finished
	// writing the response (counted in Stats.ClientCancelled).
	Cancelled bool
	ConnID    int64     // the Conn it arrived on
	Received  time.Time // when its header was read
	Finished  time.Time // when the handler returned; zero while in flight
}

type record struct {
	Request
}

// begin records a new request and counts it in flight.
func (s *Server) begin(r *http.Request) *record {
	rec := &record{Request{
		Method:   r.Method,
		Path:     r.URL.Path,
		RawQuery: r.URL.RawQuery,
		Host:     r.Host,
		Header:   r.Header.Clone(),
		Received: time.Now(),
	}}
	if c := connOf(r.Context()); c != nil {
		rec.ConnID = c.rec.ID
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reqs = append(s.reqs, rec)
	if over := len(s.reqs) - s.cfg.RecordLimit; over > s.cfg.RecordLimit/4 {
		s.reqs = append([]*record(nil), s.reqs[over:]...)
	}
	s.st.Requests++
	s.st.InFlight++
	s.st.PeakInFlight = max(s.st.PeakInFlight, s.st.InFlight)
	return rec
}

// finish ends a request's record; x.gone says the client left early.
func (s *Server) finish(x *exchange) {
	if x.lease != nil {
		s.sched.release(x.lease, x.gone || x.aborted)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	x.rec.Finished = time.Now()
	if x.gone && !x.aborted && !s.closed.Load() {
		x.rec.Cancelled = true
		s.st.ClientCancelled++
	}
	s.st.InFlight--
}

// setBody records what was read of a request body.
func (s *Server) setBody(rec *record, body []byte, size int64) {
	if len(body) > MaxRecordedBody {
		body = bytes.Clone(body[:MaxRecordedBody])
	}
	s.mu.Lock()
	rec.Body, rec.BodySize = body, size
	s.mu.Unlock()
}

func (s *Server) setFault(rec *record, spec string) {
	s.mu.Lock()
	rec.Fault = spec
	s.mu.Unlock()
}

// readBody reads a request body whole, up to MaxParsedBody, discarding the
// rest, and records it.
func (s *Server) readBody(x *exchange) []byte {
	var buf bytes.Buffer
	n, err := io.Copy(&buf, io.LimitReader(x.r.Body, MaxParsedBody))
	if err == nil && n == MaxParsedBody {
		var m int64
		m, err = io.Copy(io.Discard, x.r.Body)
		n += m
	}
	if err != nil {
		x.clientGone()
	}
	s.setBody(x.rec, buf.Bytes(), n)
	return buf.Bytes()
}

// Stats returns a snapshot of the counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.st
}

// Requests returns the records of the requests received since start or
// ResetStats (at most Config.RecordLimit, the latest), in arrival order,
// including those still in flight.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	start := max(0, len(s.reqs)-s.cfg.RecordLimit)
	out := make([]Request, 0, len(s.reqs)-start)
	for _, rec := range s.reqs[start:] {
		out = append(out, rec.Request)
	}
	return out
}

// ResetStats zeroes the counters, sets the peaks to the live values and
// forgets recorded requests and connections.
func (s *Server) ResetStats() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.st = Stats{
		ConnsOpen:    s.st.ConnsOpen,
		PeakConns:    s.st.ConnsOpen,
		InFlight:     s.st.InFlight,
		PeakInFlight: s.st.InFlight,
	}
	s.reqs = nil
	s.conns = nil
}
