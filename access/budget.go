package access

import (
	"net"
	"sync"
	"time"
)

// maxTrackedIPs bounds the failure table: past it the table starts over,
// so a spray of source addresses cannot grow memory without bound.
const maxTrackedIPs = 100_000

// FailureBudget counts authentication failures per client IP in one-minute
// windows; an IP over the budget gets 429 until the window ends (a brake on
// key guessing). A nil budget is off; it takes its lock only when on.
type FailureBudget struct {
	limit  int64
	mu     sync.Mutex
	minute int64
	counts map[string]int64
}

// NewFailureBudget allows limit failures per IP per minute (config key
// auth.max_failures_per_ip); limit <= 0 gives nil, no budget.
func NewFailureBudget(limit int) *FailureBudget {
	if limit <= 0 {
		return nil
	}
	return &FailureBudget{limit: int64(limit), counts: make(map[string]int64)}
}

func (b *FailureBudget) roll(now time.Time) {
	if m := now.Unix() / 60; m != b.minute || len(b.counts) > maxTrackedIPs {
		b.minute = m
		clear(b.counts)
	}
}

// Blocked reports whether ip has used up its budget in this window, and
// the seconds until the window ends.
func (b *FailureBudget) Blocked(ip net.IP, now time.Time) (bool, int64) {
	if b == nil {
		return false, 0
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.roll(now)
	return b.counts[string(ip)] >= b.limit, 60 - now.Unix()%60
}

// Fail records one authentication failure from ip.
func (b *FailureBudget) Fail(ip net.IP, now time.Time) {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.roll(now)
	b.counts[string(ip)]++
}
