package fleet

import (
	"sync"
	"sync/atomic"
	"time"
)

// breaker takes a failing backend out of rotation. Closed, it counts
// consecutive failures; at Config.BreakerFailures it opens for a back-off
// that doubles at each reopening (up to BreakerMaxBackoff). Once the
// back-off has passed, the next good catalogue probe closes it; a failed
// one reopens it. The request path reads only open.
type breaker struct {
	open atomic.Bool
	// opens counts transitions to open.
	opens atomic.Int64

	mu       sync.Mutex
	failures int
	level    int       // reopenings since the last success
	until    time.Time // end of the current back-off
}

// BreakerState is a breaker's view for the admin listener.
type BreakerState struct {
	// State is "closed" or "open".
	State string
	// ConsecutiveFailures since the last success.
	ConsecutiveFailures int
	// OpenUntil is the end of the current back-off (zero when closed).
	OpenUntil time.Time
	// Opens counts how often the breaker opened.
	Opens int64
}

func (br *breaker) state() BreakerState {
	br.mu.Lock()
	defer br.mu.Unlock()
	s := BreakerState{State: "closed", ConsecutiveFailures: br.failures, Opens: br.opens.Load()}
	if br.open.Load() {
		s.State, s.OpenUntil = "open", br.until
	}
	return s
}

// success records a good answer: the failure run ends and the back-off
// starts again from its first step.
func (br *breaker) success() {
	if !br.open.Load() {
		br.mu.Lock()
		br.failures, br.level = 0, 0
		br.mu.Unlock()
	}
}

// failure records a failed attempt; it reports whether the breaker opened.
func (br *breaker) failure(cfg *Config, now time.Time) bool {
	br.mu.Lock()
	defer br.mu.Unlock()
	if br.open.Load() {
		return false
	}
	br.failures++
	if br.failures < cfg.BreakerFailures {
		return false
	}
	br.openLocked(cfg, now)
	return true
}

func (br *breaker) openLocked(cfg *Config, now time.Time) {
	backoff := cfg.BreakerBackoff << min(br.level, 20)
	if backoff > cfg.BreakerMaxBackoff || backoff <= 0 {
		backoff = cfg.BreakerMaxBackoff
	}
	br.level++
	br.until = now.Add(backoff)
	br.open.Store(true)
	br.opens.Add(1)
}

// probed applies a catalogue probe's result: after the back-off a good
// probe closes the breaker and a failed one reopens it for longer.
func (br *breaker) probed(cfg *Config, ok bool, now time.Time) {
	if !br.open.Load() {
		return
	}
	br.mu.Lock()
	defer br.mu.Unlock()
	if now.Before(br.until) {
		return
	}
	if ok {
		br.failures = 0
		br.open.Store(false)
		return
	}
	br.openLocked(cfg, now)
}
