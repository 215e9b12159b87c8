// Package limits decides whether a request may start: per-key request
// rates, token budgets and concurrency, the per-IP budget of failed
// authentications, and a bound on requests in flight per backend. The
// counters live in the process, or in Redis so that every gateway replica
// shares them.
package limits

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/rs/zerolog"
)

// Reason says which limit refused a request; Admitted is no refusal.
type Reason uint8

// Reasons, in the order the checks are made.
const (
	Admitted Reason = iota
	// IPBlocked: the client IP used up its failed-authentication budget.
	IPBlocked
	// TokensPerDay: the key's tokens_per_day budget is used up.
	TokensPerDay
	// TokensPerMinute: the key's tokens_per_minute budget is used up.
	TokensPerMinute
	// RequestsPerMinute: the key made requests_per_minute requests this minute.
	RequestsPerMinute
	// Concurrency: the key has max_concurrent requests in flight.
	Concurrency
	// BackendBusy: the backend has backend_max_in_flight requests in flight.
	BackendBusy
	// Unavailable: Redis could not be asked and on_redis_error is deny.
	Unavailable
)

var reasonNames = [...]string{"admitted", "ip_blocked", "tokens_per_day", "tokens_per_minute", "requests_per_minute", "concurrency", "backend_busy", "unavailable"}

func (r Reason) String() string {
	if int(r) < len(reasonNames) {
		return reasonNames[r]
	}
	return "unknown"
}

// Decision is the answer to a check.
type Decision struct {
	Reason Reason
	// RetryAfter is the whole seconds until the refusing limit frees, at
	// least 1: the end of the minute or day window, or 1 for a slot.
	RetryAfter int64
}

// OK reports whether the request may go on.
func (d Decision) OK() bool { return d.Reason == Admitted }

// Reset is when the refusing window ends, seen from now.
func (d Decision) Reset(now time.Time) time.Time {
	return now.Add(time.Duration(d.RetryAfter) * time.Second).Truncate(time.Second)
}

// KeyLimits are one key's limits; zero fields are off.
type KeyLimits struct {
	// RequestsPerMinute caps the requests a key starts per clock minute.
	RequestsPerMinute int
	// MaxConcurrent caps the key's requests in flight.
	MaxConcurrent int
	// TokensPerMinute is the key's budget of prompt + completion tokens per
	// clock minute: requests are admitted while some is left, and charged
	// when they end, so one request may overdraw it.
	TokensPerMinute int64
	// TokensPerDay is the same per UTC day.
	TokensPerDay int64
}

func (k KeyLimits) any() bool {
	return k.RequestsPerMinute > 0 || k.MaxConcurrent > 0 || k.TokensPerMinute > 0 || k.TokensPerDay > 0
}

func (k KeyLimits) tokens() bool { return k.TokensPerMinute > 0 || k.TokensPerDay > 0 }

// keyEntry is a key's limits with what each store needs to find its
// counters.
type keyEntry struct {
	name string
	KeyLimits
	prefix string  // Redis key prefix
	mem    *memKey // in-process counters
}

// Stats are the limiter's own counters.
type Stats struct {
	// RedisErrors counts Redis calls that failed or timed out.
	RedisErrors atomic.Int64
	// AllowedUnchecked counts requests let through unchecked because Redis
	// failed (on_redis_error: allow).
	AllowedUnchecked atomic.Int64
	// Refused counts refusals by Reason.
	Refused [Unavailable + 1]atomic.Int64
}

// Limiter checks requests against the limits. Its methods are safe for
// concurrent use.
type Limiter struct {
	cfg   Config
	log   zerolog.Logger
	mem   *memStore   // without Redis
	redis *redisStore // with Redis
	keys  atomic.Pointer[map[string]*keyEntry]
	stats Stats

	// replica prefixes this process's lease IDs; seq numbers them.
	replica string
	seq     atomic.Uint64
	// leases are the Redis leases held (ID → sorted-set key), refreshed by
	// Run while their requests run.
	leaseMu sync.Mutex
	leases  map[string]string

	// lastLog is when a Redis failure was last logged (unix ns); down says
	// the last call failed, so the first success after is logged.
	lastLog    atomic.Int64
	suppressed atomic.Int64
	down       atomic.Bool
}

// New validates cfg and builds the limiter. With a Redis URL it opens no
// connection yet (go-redis dials on first use) and starts no goroutine:
// Run refreshes the leases.
func New(cfg Config, log zerolog.Logger) (*Limiter, error) {
	cfg = cfg.withDefaults()
	opt, err := cfg.validate()
	if err != nil {
		return nil, err
	}
	l := &Limiter{cfg: cfg, log: log, replica: uuid.NewString()[:8], leases: map[string]string{}}
	if opt != nil {
		l.redis = newRedisStore(opt, cfg.RedisTimeout)
		l.redis.withTTL(cfg.LeaseTTL)
	} else {
		l.mem = newMemStore(time.Now)
	}
	empty := map[string]*keyEntry{}
	l.keys.Store(&empty)
	return l, nil
}

// Shared reports whether the counters are in Redis (shared by replicas).
func (l *Limiter) Shared() bool { return l.redis != nil }

// Where names the counters' store for a log line: "process", or the Redis
// address and database, never the URL's credentials.
func (l *Limiter) Where() string {
	if l.redis == nil {
		return "process"
	}
	return l.redis.where
}

// Stats are the limiter's counters.
func (l *Limiter) Stats() *Stats { return &l.stats }

// Config is the limiter's configuration with defaults applied.
func (l *Limiter) Config() Config { return l.cfg }

// SetKeys replaces the keys' limits (at start-up and on a keys reload).
// Counts are kept by name, so a reload does not reset them.
func (l *Limiter) SetKeys(keys map[string]KeyLimits) {
	m := make(map[string]*keyEntry, len(keys))
	for name, kl := range keys {
		if !kl.any() {
			continue
		}
		e := &keyEntry{name: name, KeyLimits: kl, prefix: "vega:key:" + name}
		if l.mem != nil {
			e.mem = l.mem.key(name)
		}
		m[name] = e
	}
	l.keys.Store(&m)
}

func (l *Limiter) store() store {
	if l.redis != nil {
		return l.redis
	}
	return l.mem
}

// Grant is what an admission holds until Done: a concurrency slot, and the
// key whose token budgets the request is charged to. The zero Grant holds
// nothing.
type Grant struct {
	key    *keyEntry
	lease  string // Redis lease ID
	leased bool   // holds a concurrency slot
}

// TokenBudget reports whether the request's key has a token budget, so
// the gateway knows to get the reply's counts even where the client did
// not ask for them.
func (g *Grant) TokenBudget() bool { return g.key != nil && g.key.tokens() }

// Admit checks a request from ip, made with the key named name ("" for an
// open gateway), against the IP's failure budget and the key's limits, in
// one Redis round trip at most. An admitted request holds its Grant until
// Done.
func (l *Limiter) Admit(ip net.IP, name string) (Grant, Decision) {
	k := (*l.keys.Load())[name]
	ipLimit := l.cfg.MaxFailuresPerIP
	if k == nil && ipLimit == 0 {
		return Grant{}, Decision{}
	}
	var lease string
	if k != nil && k.MaxConcurrent > 0 && l.redis != nil {
		lease = l.newLeaseID()
	}
	d, leased, err := l.store().admit(k, ip, ipLimit, lease)
	if err != nil {
		return Grant{}, l.failed("admit", err)
	}
	l.ok()
	if !d.OK() {
		l.stats.Refused[d.Reason].Add(1)
		return Grant{}, d
	}
	g := Grant{key: k, leased: leased}
	if leased && lease != "" {
		g.lease = lease
		l.track(lease, k.prefix+":conc")
	}
	return g, d
}

// Done ends an admitted request: it gives its concurrency slot back and
// charges tokens (prompt + completion) to the key's token budgets. It
// resets g, so a second call does nothing.
func (l *Limiter) Done(g *Grant, tokens int64) {
	k := g.key
	if k == nil {
		return
	}
	charge := tokens > 0 && k.tokens()
	if g.leased || charge {
		if g.lease != "" {
			l.untrack(g.lease)
		}
		if !charge {
			tokens = 0
		}
		if err := l.store().end(k, tokens, g.lease, g.leased); err != nil {
			l.noteError("end", err)
		} else {
			l.ok()
		}
	}
	*g = Grant{}
}

// Failed records a failed authentication from ip. A refusal means the IP
// had already used its budget: the request gets 429, not 401.
func (l *Limiter) Failed(ip net.IP) Decision {
	if l.cfg.MaxFailuresPerIP == 0 {
		return Decision{}
	}
	d, err := l.store().fail(ip, l.cfg.MaxFailuresPerIP)
	if err != nil {
		// A budget that cannot be counted refuses nothing: the request
		// gets its 401 either way.
		l.noteError("fail", err)
		return Decision{}
	}
	l.ok()
	if !d.OK() {
		l.stats.Refused[d.Reason].Add(1)
	}
	return d
}

// BackendLease is a slot of a backend's backend_max_in_flight, held until
// ReleaseBackend. The zero BackendLease holds nothing.
type BackendLease struct {
	name  string
	lease string
	held  bool
}

// AcquireBackend takes a slot of the backend's fleet-wide bound. A
// refusal (BackendBusy) means the backend is at the bound: try another.
func (l *Limiter) AcquireBackend(name string) (BackendLease, Decision) {
	limit := l.cfg.BackendMaxInFlight
	if limit == 0 {
		return BackendLease{}, Decision{}
	}
	var lease string
	if l.redis != nil {
		lease = l.newLeaseID()
	}
	d, err := l.store().acquireBackend(name, limit, lease)
	if err != nil {
		return BackendLease{}, l.failed("backend", err)
	}
	l.ok()
	if !d.OK() {
		l.stats.Refused[d.Reason].Add(1)
		return BackendLease{}, d
	}
	if lease != "" {
		l.track(lease, backendKey(name))
	}
	return BackendLease{name: name, lease: lease, held: true}, d
}

// ReleaseBackend gives the slot back and resets b.
func (l *Limiter) ReleaseBackend(b *BackendLease) {
	if !b.held {
		return
	}
	if b.lease != "" {
		l.untrack(b.lease)
	}
	if err := l.store().releaseBackend(b.name, b.lease); err != nil {
		l.noteError("backend_release", err)
	} else {
		l.ok()
	}
	*b = BackendLease{}
}

func backendKey(name string) string { return "vega:backend:" + name }

// KeyUsage is how much of its limits a key has used, fleet-wide with Redis.
type KeyUsage struct {
	Name               string `json:"name"`
	RequestsThisMinute int64  `json:"requests_this_minute"`
	RequestsPerMinute  int    `json:"requests_per_minute"`
	InFlight           int64  `json:"in_flight"`
	MaxConcurrent      int    `json:"max_concurrent"`
	TokensThisMinute   int64  `json:"tokens_this_minute"`
	TokensPerMinute    int64  `json:"tokens_per_minute"`
	TokensToday        int64  `json:"tokens_today"`
	TokensPerDay       int64  `json:"tokens_per_day"`
}

// Usage reads every limited key's use in one Redis round trip (without
// Redis, from the process), sorted by name.
func (l *Limiter) Usage() ([]KeyUsage, error) {
	m := *l.keys.Load()
	keys := make([]*keyEntry, 0, len(m))
	for _, k := range m {
		keys = append(keys, k)
	}
	sortKeys(keys)
	out, err := l.store().usage(keys)
	if err != nil {
		l.noteError("usage", err)
		return nil, fmt.Errorf("limits usage: %w", err)
	}
	return out, nil
}

// Run refreshes the Redis leases this replica holds, every third of
// limits.lease_ttl, until ctx ends; without Redis it returns at once.
func (l *Limiter) Run(ctx context.Context) {
	if l.redis == nil {
		return
	}
	t := time.NewTicker(l.cfg.LeaseTTL / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			l.leaseMu.Lock()
			held := make(map[string]string, len(l.leases))
			for id, z := range l.leases {
				held[id] = z
			}
			l.leaseMu.Unlock()
			if len(held) == 0 {
				continue
			}
			if err := l.redis.refresh(held, l.cfg.LeaseTTL); err != nil {
				l.noteError("refresh", err)
			} else {
				l.ok()
			}
		}
	}
}

// Close closes the Redis connections.
func (l *Limiter) Close() error {
	if l.redis == nil {
		return nil
	}
	return l.redis.close()
}

func (l *Limiter) newLeaseID() string {
	return l.replica + "-" + strconv.FormatUint(l.seq.Add(1), 36)
}

func (l *Limiter) track(lease, zkey string) {
	l.leaseMu.Lock()
	l.leases[lease] = zkey
	l.leaseMu.Unlock()
}

func (l *Limiter) untrack(lease string) {
	l.leaseMu.Lock()
	delete(l.leases, lease)
	l.leaseMu.Unlock()
}

// failed notes a Redis failure of an admission and answers as
// limits.on_redis_error says.
func (l *Limiter) failed(op string, err error) Decision {
	l.noteError(op, err)
	if l.cfg.OnRedisError == OnErrorDeny {
		l.stats.Refused[Unavailable].Add(1)
		return Decision{Reason: Unavailable, RetryAfter: 1}
	}
	l.stats.AllowedUnchecked.Add(1)
	return Decision{}
}

// noteError counts a Redis failure and logs at most one line per interval.
func (l *Limiter) noteError(op string, err error) {
	l.stats.RedisErrors.Add(1)
	l.down.Store(true)
	now := time.Now().UnixNano()
	last := l.lastLog.Load()
	if now-last >= int64(l.cfg.ErrorLogInterval) && l.lastLog.CompareAndSwap(last, now) {
		// The error names the address at most, never the URL's password.
		l.log.Warn().Str("component", "limits").Str("op", op).Err(err).Int64("suppressed", l.suppressed.Swap(0)).
			Str("on_redis_error", l.cfg.OnRedisError).Msg("limits: Redis did not answer; requests follow limits.on_redis_error")
	} else {
		l.suppressed.Add(1)
	}
}

// ok notes a Redis call that succeeded, logging the first after failures.
func (l *Limiter) ok() {
	if l.down.Load() && l.down.CompareAndSwap(true, false) {
		l.log.Info().Str("component", "limits").Msg("limits: Redis answers again; limits are enforced")
	}
}

// store is where the counters live: the process (memStore) or Redis
// (redisStore). Both make the checks in the same order with the same
// windows: clock minutes and UTC days, Redis's clock for Redis.
type store interface {
	admit(k *keyEntry, ip net.IP, ipLimit int, lease string) (d Decision, leased bool, err error)
	end(k *keyEntry, tokens int64, lease string, leased bool) error
	fail(ip net.IP, limit int) (Decision, error)
	acquireBackend(name string, limit int, lease string) (Decision, error)
	releaseBackend(name, lease string) error
	usage(keys []*keyEntry) ([]KeyUsage, error)
}
