package access

import (
	"sync/atomic"
	"time"
)

// counters are one key's live admission state, enforcing its Limits within
// this process. They are kept apart from the Identity's configuration:
// they are the one part of a key that changes per request.
type counters struct {
	inFlight    atomic.Int64 // requests holding a concurrency slot
	window      atomic.Int64 // unix minute of the current rate window
	windowCount atomic.Int64 // requests admitted in that window
}

// Refusal says why Admit turned a request away.
type Refusal uint8

// The reasons Admit refuses.
const (
	Admitted        Refusal = iota // not refused
	OverRate                       // RequestsPerMinute reached in this minute
	OverConcurrency                // MaxConcurrent requests already in flight
)

// Admit takes a concurrency slot and a rate token for one request of the
// key; a request admitted must call Release once it ends. retryAfter is
// the seconds until the rate window ends (OverRate only).
func (id *Identity) Admit(now time.Time) (refused Refusal, retryAfter int64) {
	c := &id.counters
	if limit := id.Limits.RequestsPerMinute; limit > 0 {
		minute := now.Unix() / 60
		if w := c.window.Load(); w != minute && c.window.CompareAndSwap(w, minute) {
			c.windowCount.Store(0)
		}
		if c.windowCount.Add(1) > limit {
			return OverRate, 60 - now.Unix()%60
		}
	}
	if limit := id.Limits.MaxConcurrent; limit > 0 {
		if c.inFlight.Add(1) > limit {
			c.inFlight.Add(-1)
			return OverConcurrency, 0
		}
	}
	return Admitted, 0
}

// Release gives back the concurrency slot Admit took.
func (id *Identity) Release() {
	if id.Limits.MaxConcurrent > 0 {
		id.counters.inFlight.Add(-1)
	}
}
