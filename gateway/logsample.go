package gateway

import (
	"sync/atomic"
	"time"
)

// lineSampler lets at most a given number of log lines through per
// wall-clock second and counts the rest (F-43). Its zero value is ready.
type lineSampler struct {
	// window is the current second (high 32 bits, Unix time) and the
	// lines let through in it (low 32 bits), updated by one CAS so the
	// count is exact under concurrency.
	window atomic.Uint64
	// suppressed counts the lines not written, since start.
	suppressed atomic.Int64
}

// allow reports whether a line at now may be written under limit lines a
// second; limit <= 0 allows every line.
func (s *lineSampler) allow(limit int, now time.Time) bool {
	if limit <= 0 {
		return true
	}
	sec := uint64(uint32(now.Unix()))
	for {
		old := s.window.Load()
		next := sec<<32 | 1
		if old>>32 == sec {
			if old&0xffffffff >= uint64(limit) {
				s.suppressed.Add(1)
				return false
			}
			next = old + 1
		}
		if s.window.CompareAndSwap(old, next) {
			return true
		}
	}
}

// SuppressedLogLines is the number of access-log lines of failed
// authentications not written because of auth.failure_log_lines_per_second.
func (g *Gateway) SuppressedLogLines() int64 { return g.authLines.suppressed.Load() }

// logLine reports whether x's access-log line is written: every line but
// failed authentications over the sampling rate. The observer (metrics)
// sees every request either way.
func (x *exchange) logLine() bool {
	return x.outcome != outcomeAuthFailed || x.g.authLines.allow(x.g.auth.FailureLogLinesPerSecond, x.start)
}
