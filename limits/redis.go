package limits

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
	"github.com/rs/zerolog"
)

// The scripts run atomically in Redis, each in one round trip (EVALSHA,
// falling back to EVAL when Redis has not seen the script: go-redis's
// Script). They read Redis's clock (TIME), so every replica shares one
// minute and one day whatever its own clock says. Key names are built in
// the scripts from that clock, which ties them to a standalone Redis (or a
// primary with replicas), not a Redis Cluster.
//
// Keys: vega:key:NAME:rpm:MINUTE, :tpm:MINUTE and :tpd:DAY are counters
// that expire after their window; vega:key:NAME:conc and vega:backend:NAME
// are sorted sets of lease IDs scored by expiry (unix ms), pruned when full,
// so a lease nobody refreshes frees its slot by itself (the sets have no
// TTL: each holds at most its limit of stale IDs); vega:ip:IP:MINUTE counts
// failed authentications.
//
// Every redis.call costs the server more than the command itself (on a
// loaded 2-core machine, about 15 µs each), so the scripts make as few as
// they can: a counter's EXPIRE only when the counter is created, one MGET
// for both token budgets, and a prune of a lease set only when it is full.
var (
	// admitScript: ARGV prefix ("" = no key limits), ip key ("" = no
	// budget), ip limit, rpm, tpm, tpd, max concurrent, lease ID, lease TTL
	// ms. Returns {reason, retry after s, leased}.
	admitScript = redis.NewScript(`
local t = redis.call('TIME')
local sec = tonumber(t[1])
local minute = math.floor(sec / 60)
local toMinute = 60 - sec % 60
if ARGV[2] ~= '' then
  local n = tonumber(redis.call('GET', ARGV[2] .. ':' .. minute) or '0')
  if n >= tonumber(ARGV[3]) then return {1, toMinute, 0} end
end
local p = ARGV[1]
if p == '' then return {0, 0, 0} end
local tpm, tpd = tonumber(ARGV[5]), tonumber(ARGV[6])
if tpm > 0 or tpd > 0 then
  local used = redis.call('MGET', p .. ':tpd:' .. math.floor(sec / 86400), p .. ':tpm:' .. minute)
  if tpd > 0 and tonumber(used[1] or '0') >= tpd then return {2, 86400 - sec % 86400, 0} end
  if tpm > 0 and tonumber(used[2] or '0') >= tpm then return {3, toMinute, 0} end
end
local rpm = tonumber(ARGV[4])
if rpm > 0 then
  local k = p .. ':rpm:' .. minute
  local c = redis.call('INCR', k)
  if c == 1 then redis.call('EXPIRE', k, 120) end
  if c > rpm then return {4, toMinute, 0} end
end
local maxc = tonumber(ARGV[7])
if maxc > 0 then
  local z = p .. ':conc'
  local nowms = sec * 1000 + math.floor(tonumber(t[2]) / 1000)
  if redis.call('ZCARD', z) >= maxc then
    redis.call('ZREMRANGEBYSCORE', z, '-inf', nowms)
    if redis.call('ZCARD', z) >= maxc then return {5, 1, 0} end
  end
  redis.call('ZADD', z, nowms + tonumber(ARGV[9]), ARGV[8])
  return {0, 0, 1}
end
return {0, 0, 0}
`)

	// endScript: ARGV prefix, tokens, charge tpm ("1"), charge tpd ("1"),
	// lease ID ("" = none).
	endScript = redis.NewScript(`
local sec = tonumber(redis.call('TIME')[1])
local p = ARGV[1]
local n = tonumber(ARGV[2])
if n > 0 and ARGV[3] == '1' then
  local k = p .. ':tpm:' .. math.floor(sec / 60)
  if redis.call('INCRBY', k, n) == n then redis.call('EXPIRE', k, 120) end
end
if n > 0 and ARGV[4] == '1' then
  local k = p .. ':tpd:' .. math.floor(sec / 86400)
  if redis.call('INCRBY', k, n) == n then redis.call('EXPIRE', k, 172800) end
end
if ARGV[5] ~= '' then redis.call('ZREM', p .. ':conc', ARGV[5]) end
return 0
`)

	// failScript: ARGV ip key, limit. Counts a failure unless the IP is
	// over its budget already. Returns {reason, retry after s}.
	failScript = redis.NewScript(`
local sec = tonumber(redis.call('TIME')[1])
local k = ARGV[1] .. ':' .. math.floor(sec / 60)
if tonumber(redis.call('GET', k) or '0') >= tonumber(ARGV[2]) then return {1, 60 - sec % 60} end
if redis.call('INCR', k) == 1 then redis.call('EXPIRE', k, 120) end
return {0, 0}
`)

	// leaseScript: KEYS sorted set; ARGV limit, lease ID, TTL ms. Returns
	// 1 if the lease was taken.
	leaseScript = redis.NewScript(`
local t = redis.call('TIME')
local nowms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= limit then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', nowms)
  if redis.call('ZCARD', KEYS[1]) >= limit then return 0 end
end
redis.call('ZADD', KEYS[1], nowms + tonumber(ARGV[3]), ARGV[2])
return 1
`)

	// refreshScript: ARGV TTL ms, then pairs of sorted set and lease ID.
	// XX: a lease already released (or lost with Redis's data) is not
	// brought back.
	refreshScript = redis.NewScript(`
local t = redis.call('TIME')
local nowms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
  redis.call('ZADD', ARGV[i], 'XX', nowms + ttl, ARGV[i + 1])
end
return 0
`)

	// usageScript: ARGV key prefixes. Returns four numbers per key:
	// requests this minute, tokens this minute, tokens today, leases live.
	usageScript = redis.NewScript(`
local t = redis.call('TIME')
local sec = tonumber(t[1])
local nowms = sec * 1000 + math.floor(tonumber(t[2]) / 1000)
local minute, day = math.floor(sec / 60), math.floor(sec / 86400)
local out = {}
for i = 1, #ARGV do
  local p = ARGV[i]
  out[#out + 1] = tonumber(redis.call('GET', p .. ':rpm:' .. minute) or '0')
  out[#out + 1] = tonumber(redis.call('GET', p .. ':tpm:' .. minute) or '0')
  out[#out + 1] = tonumber(redis.call('GET', p .. ':tpd:' .. day) or '0')
  out[#out + 1] = redis.call('ZCOUNT', p .. ':conc', '(' .. nowms, '+inf')
end
return out
`)
)

// redisStore keeps the counters in Redis, shared by every replica.
type redisStore struct {
	c       *redis.Client
	timeout time.Duration
	ttlMS   string
	where   string // redis://host:port/db, no credentials
}

func newRedisStore(opt *redis.Options, timeout time.Duration) *redisStore {
	// Every wait is bounded by limits.redis_timeout: a dial, a read, a
	// write, a wait for a pooled connection. One retry (on a fresh
	// connection, no backoff) covers the connections a Redis restart left
	// broken; dials are not retried, so a Redis that is down costs a
	// request one refused dial, and once PoolSize dials have failed go-redis
	// answers at once and probes once a second in the background.
	opt.DialTimeout, opt.ReadTimeout, opt.WriteTimeout, opt.PoolTimeout = timeout, timeout, timeout, timeout
	opt.MaxRetries, opt.MinRetryBackoff, opt.MaxRetryBackoff = 1, -1, -1
	opt.DialerRetries = 1
	// The client announces itself with CLIENT SETINFO, which older Redis
	// servers refuse with a logged error; and maintenance notifications are
	// for Redis Enterprise / Cloud hand-overs, which these short-lived
	// counters do not need.
	opt.DisableIdentity = true
	opt.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
	scheme := "redis"
	if opt.TLSConfig != nil {
		scheme = "rediss"
	}
	where := scheme + "://" + opt.Addr + "/" + strconv.Itoa(opt.DB)
	return &redisStore{c: redis.NewClient(opt), timeout: timeout, where: where}
}

// ctx bounds one call: a try and its retry.
func (s *redisStore) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 3*s.timeout)
}

func (s *redisStore) close() error { return s.c.Close() }

func ms(d time.Duration) string { return strconv.FormatInt(d.Milliseconds(), 10) }

// leaseTTL is set by the limiter before first use.
func (s *redisStore) withTTL(ttl time.Duration) { s.ttlMS = ms(ttl) }

func (s *redisStore) admit(k *keyEntry, ip net.IP, ipLimit int, lease string) (Decision, bool, error) {
	ipKey := ""
	if ipLimit > 0 {
		ipKey = "vega:ip:" + ip.String()
	}
	var prefix string
	var kl KeyLimits
	if k != nil {
		prefix, kl = k.prefix, k.KeyLimits
	}
	ctx, cancel := s.ctx()
	defer cancel()
	res, err := admitScript.Run(ctx, s.c, nil, prefix, ipKey, ipLimit, kl.RequestsPerMinute, kl.TokensPerMinute,
		kl.TokensPerDay, kl.MaxConcurrent, lease, s.ttlMS).Int64Slice()
	if err != nil {
		return Decision{}, false, fmt.Errorf("redis admit: %w", err)
	}
	if len(res) != 3 {
		return Decision{}, false, fmt.Errorf("redis admit: %d values, want 3", len(res))
	}
	return Decision{Reason(res[0]), res[1]}, res[2] == 1, nil
}

func (s *redisStore) end(k *keyEntry, tokens int64, lease string, _ bool) error {
	flag := func(on bool) string {
		if on {
			return "1"
		}
		return "0"
	}
	ctx, cancel := s.ctx()
	defer cancel()
	if err := endScript.Run(ctx, s.c, nil, k.prefix, tokens, flag(k.TokensPerMinute > 0), flag(k.TokensPerDay > 0), lease).Err(); err != nil {
		return fmt.Errorf("redis end: %w", err)
	}
	return nil
}

func (s *redisStore) fail(ip net.IP, limit int) (Decision, error) {
	ctx, cancel := s.ctx()
	defer cancel()
	res, err := failScript.Run(ctx, s.c, nil, "vega:ip:"+ip.String(), limit).Int64Slice()
	if err != nil {
		return Decision{}, fmt.Errorf("redis fail: %w", err)
	}
	if len(res) != 2 {
		return Decision{}, fmt.Errorf("redis fail: %d values, want 2", len(res))
	}
	return Decision{Reason(res[0]), res[1]}, nil
}

func (s *redisStore) acquireBackend(name string, limit int, lease string) (Decision, error) {
	ctx, cancel := s.ctx()
	defer cancel()
	n, err := leaseScript.Run(ctx, s.c, []string{backendKey(name)}, limit, lease, s.ttlMS).Int64()
	if err != nil {
		return Decision{}, fmt.Errorf("redis backend lease: %w", err)
	}
	if n != 1 {
		return Decision{BackendBusy, 1}, nil
	}
	return Decision{}, nil
}

func (s *redisStore) releaseBackend(name, lease string) error {
	ctx, cancel := s.ctx()
	defer cancel()
	if err := s.c.ZRem(ctx, backendKey(name), lease).Err(); err != nil {
		return fmt.Errorf("redis backend release: %w", err)
	}
	return nil
}

func (s *redisStore) refresh(leases map[string]string, ttl time.Duration) error {
	args := make([]any, 0, 1+2*len(leases))
	args = append(args, ttl.Milliseconds())
	for id, z := range leases {
		args = append(args, z, id)
	}
	ctx, cancel := s.ctx()
	defer cancel()
	if err := refreshScript.Run(ctx, s.c, nil, args...).Err(); err != nil {
		return fmt.Errorf("redis lease refresh: %w", err)
	}
	return nil
}

func (s *redisStore) usage(keys []*keyEntry) ([]KeyUsage, error) {
	if len(keys) == 0 {
		return nil, nil
	}
	args := make([]any, len(keys))
	for i, k := range keys {
		args[i] = k.prefix
	}
	ctx, cancel := s.ctx()
	defer cancel()
	res, err := usageScript.Run(ctx, s.c, nil, args...).Int64Slice()
	if err != nil {
		return nil, fmt.Errorf("redis usage: %w", err)
	}
	if len(res) != 4*len(keys) {
		return nil, fmt.Errorf("redis usage: %d values, want %d", len(res), 4*len(keys))
	}
	out := make([]KeyUsage, len(keys))
	for i, k := range keys {
		u := usageOf(k)
		u.RequestsThisMinute, u.TokensThisMinute, u.TokensToday, u.InFlight = res[4*i], res[4*i+1], res[4*i+2], res[4*i+3]
		out[i] = u
	}
	return out, nil
}

// SetClientLogger sends go-redis's own messages (a failed dial, per
// connection) to log at debug level: the limiter already logs a Redis
// failure once per interval at warn. go-redis has one logger per process,
// so main sets it once, before the first call.
func SetClientLogger(log zerolog.Logger) { redis.SetLogger(clientLogger{log}) }

type clientLogger struct{ log zerolog.Logger }

func (c clientLogger) Printf(_ context.Context, format string, v ...any) {
	c.log.Debug().Str("component", "go-redis").Msgf(format, v...)
}
