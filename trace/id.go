package trace

import (
	"github.com/google/uuid"
)

// HeaderCorrelationID is the header that carries the correlation ID in both
// directions: echoed to the client and sent to the upstream.
const HeaderCorrelationID = "X-Correlation-ID"

// HeaderRequestID is the alias some clients and load balancers send; it is
// used only when no valid X-Correlation-ID is present.
const HeaderRequestID = "X-Request-ID"

// MaxIDLength is the longest client-supplied ID that is kept.
const MaxIDLength = 128

// Reasons a client-supplied ID was replaced; logged instead of the raw value.
const (
	ReasonNone     = ""
	ReasonTooLong  = "too_long"
	ReasonBadChars = "invalid_characters"
)

// Valid reports whether id matches ^[A-Za-z0-9._-]{1,128}$, the only client
// IDs the gateway echoes: nothing that could split a header or a log line.
func Valid(id []byte) bool {
	return validReason(id) == ReasonNone
}

func validReason(id []byte) string {
	if len(id) == 0 {
		return ReasonBadChars
	}
	if len(id) > MaxIDLength {
		return ReasonTooLong
	}
	for _, c := range id {
		if !idChar[c] {
			return ReasonBadChars
		}
	}
	return ReasonNone
}

// idChar is the allowed byte set, as a table so the check is one load per byte.
var idChar = func() (t [256]bool) {
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
	}
	for c := 'A'; c <= 'Z'; c++ {
		t[c] = true
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	t['.'], t['_'], t['-'] = true, true, true
	return t
}()

// NewID returns a fresh random UUIDv4 string (RFC 9562 §5.4), formatted
// from the same syscall-free source as the trace IDs.
func NewID() string {
	var u uuid.UUID
	fillRandom(u[:])
	u[6] = (u[6] & 0x0f) | 0x40 // version 4
	u[8] = (u[8] & 0x3f) | 0x80 // variant 10
	return u.String()
}

// Resolution is the outcome of choosing a request's correlation ID.
type Resolution struct {
	// ID is the correlation ID the request carries from now on.
	ID string
	// Replaced is true when the client sent an ID that was not kept.
	Replaced bool
	// Reason says why it was replaced (ReasonTooLong, ReasonBadChars);
	// the rejected value itself is never kept.
	Reason string
	// RejectedLen is the length of the rejected value, for the log.
	RejectedLen int
}

// Pick chooses among the values of a header the client sent more than once
// (fasthttp's PeekAll): the first valid one, else the first one, so that
// Resolve can say why it was refused. It returns nil for no values. It does
// not allocate: the result is one of values.
func Pick(values [][]byte) []byte {
	var p Picker
	for _, v := range values {
		p.Add(v)
	}
	return p.Value()
}

// Picker is Pick fed one value at a time, for a caller that walks the
// request's headers once rather than looking each name up (a lookup
// normalises the name and scans every header).
type Picker struct {
	first, valid []byte
	seen         bool
}

// Add offers the next value of the header, in the order the client sent it.
func (p *Picker) Add(v []byte) {
	if !p.seen {
		p.first, p.seen = v, true
	}
	if p.valid == nil && Valid(v) {
		p.valid = v
	}
}

// Value is Pick's answer for the values added so far.
func (p *Picker) Value() []byte {
	if p.valid != nil {
		return p.valid
	}
	return p.first
}

// Resolve picks the request's correlation ID from the client's headers: the
// X-Correlation-ID if valid, else a valid X-Request-ID, else a new UUIDv4.
// correlation and requestID are the raw header values (nil when absent);
// for a repeated header pass Pick of its values, so the first valid
// X-Correlation-ID wins, then the first valid X-Request-ID (B-46).
func Resolve(correlation, requestID []byte) Resolution {
	if len(correlation) > 0 {
		reason := validReason(correlation)
		if reason == ReasonNone {
			return Resolution{ID: string(correlation)}
		}
		if len(requestID) > 0 && Valid(requestID) {
			return Resolution{ID: string(requestID), Replaced: true, Reason: reason, RejectedLen: len(correlation)}
		}
		return Resolution{ID: NewID(), Replaced: true, Reason: reason, RejectedLen: len(correlation)}
	}
	if len(requestID) > 0 {
		reason := validReason(requestID)
		if reason == ReasonNone {
			return Resolution{ID: string(requestID)}
		}
		return Resolution{ID: NewID(), Replaced: true, Reason: reason, RejectedLen: len(requestID)}
	}
	return Resolution{ID: NewID()}
}
