package pool

import "bytes"

// traceparentHeader is the W3C Trace Context header; its parent-id field
// names one upstream call (see DoWhile).
const traceparentHeader = "traceparent"

// traceKey returns the parent-id of a traceparent value
// ("00-<32 hex trace-id>-<16 hex parent-id>-<2 hex flags>").
func traceKey(v []byte) (key [16]byte, ok bool) {
	if len(v) < 55 || v[2] != '-' || v[35] != '-' || v[52] != '-' {
		return key, false
	}
	copy(key[:], v[36:52])
	return key, true
}

func (p *Pool) watch(key [16]byte, gone func() bool) {
	p.watchMu.Lock()
	p.watches[key] = gone
	p.watchMu.Unlock()
	p.watching.Add(1)
}

func (p *Pool) unwatch(key [16]byte) {
	p.watching.Add(-1)
	p.watchMu.Lock()
	delete(p.watches, key)
	p.watchMu.Unlock()
}

// traceparentTail is the header line after its first letter, which may be
// written in either case ("traceparent" or, normalised, "Traceparent").
var traceparentTail = []byte(traceparentHeader[1:] + ": ")

// watcherFor finds the watched request whose header block is in b.
func (p *Pool) watcherFor(b []byte) func() bool {
	i := bytes.Index(b, traceparentTail)
	if i < 2 || b[i-2] != '\n' || (b[i-1] != 't' && b[i-1] != 'T') {
		return nil
	}
	v := b[i+len(traceparentTail):]
	if j := bytes.IndexByte(v, '\r'); j >= 0 {
		v = v[:j]
	}
	key, ok := traceKey(v)
	if !ok {
		return nil
	}
	p.watchMu.Lock()
	gone := p.watches[key]
	p.watchMu.Unlock()
	return gone
}
