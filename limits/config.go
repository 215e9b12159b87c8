package limits

import (
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// Defaults, applied where a Config field is zero.
const (
	// DefaultOnRedisError lets requests through while Redis cannot be
	// reached: an outage of the limits store does not become an outage of
	// the gateway.
	DefaultOnRedisError = OnErrorAllow
	// DefaultRedisTimeout bounds one Redis round trip (and a dial): long
	// enough for a Redis in the same zone, short enough that a Redis that
	// has gone away costs a request no more than this.
	DefaultRedisTimeout = 50 * time.Millisecond
	// DefaultLeaseTTL is how long a slot (max_concurrent,
	// backend_max_in_flight) outlives the replica that took it: a replica
	// refreshes its leases every third of it while the requests run.
	DefaultLeaseTTL = 30 * time.Second
	// DefaultErrorLogInterval is the most often a Redis failure is logged.
	DefaultErrorLogInterval = 10 * time.Second
)

// Values of Config.OnRedisError.
const (
	// OnErrorAllow admits requests while Redis cannot be reached.
	OnErrorAllow = "allow"
	// OnErrorDeny refuses them with 503 limits_unavailable.
	OnErrorDeny = "deny"
)

// Config is config key limits.*. The per-key limits themselves are fields
// of the keys (auth.keys); these say where their counters live.
type Config struct {
	// RedisURL is where the counters and leases live, shared by every
	// replica: redis://[user:pass@]host:port/db or rediss:// for TLS.
	// Empty (the default) keeps them in the process: each replica then
	// enforces every limit on its own, so N replicas admit N times a
	// key's limits.
	RedisURL string `mapstructure:"redis_url"`
	// OnRedisError is what a request gets while Redis cannot be reached
	// or answers too slowly: "allow" (the default) admits it unlimited,
	// "deny" refuses it with 503 limits_unavailable.
	OnRedisError string `mapstructure:"on_redis_error"`
	// RedisTimeout bounds a Redis dial and each round trip. Default
	// DefaultRedisTimeout.
	RedisTimeout time.Duration `mapstructure:"redis_timeout"`
	// LeaseTTL is how long a concurrency slot taken in Redis lives without
	// being refreshed: the time after which a crashed replica's slots come
	// back. Default DefaultLeaseTTL; at least 1s.
	LeaseTTL time.Duration `mapstructure:"lease_ttl"`
	// BackendMaxInFlight bounds the requests in flight to one backend
	// across every replica (with RedisURL; per replica without it): a
	// backend at the bound is passed over like a busy one. 0 (the
	// default) means no bound beyond each replica's pool.
	BackendMaxInFlight int `mapstructure:"backend_max_in_flight"`
	// MaxFailuresPerIP is config key auth.max_failures_per_ip, handed in by
	// main: failed authentications per client IP per minute, after which
	// the IP gets 429 until the minute ends. 0 means no budget.
	MaxFailuresPerIP int `mapstructure:"-"`
	// ErrorLogInterval is the most often a Redis failure is logged (the
	// rest are counted). Default DefaultErrorLogInterval.
	ErrorLogInterval time.Duration `mapstructure:"-"`
}

func (c Config) withDefaults() Config {
	if c.OnRedisError == "" {
		c.OnRedisError = DefaultOnRedisError
	}
	if c.RedisTimeout == 0 {
		c.RedisTimeout = DefaultRedisTimeout
	}
	if c.LeaseTTL == 0 {
		c.LeaseTTL = DefaultLeaseTTL
	}
	if c.ErrorLogInterval == 0 {
		c.ErrorLogInterval = DefaultErrorLogInterval
	}
	return c
}

// validate names the bad key. The URL is parsed but never quoted: it may
// hold a password.
func (c Config) validate() (*redis.Options, error) {
	switch c.OnRedisError {
	case OnErrorAllow, OnErrorDeny:
	default:
		return nil, fmt.Errorf("limits.on_redis_error: must be %q or %q, got %q", OnErrorAllow, OnErrorDeny, c.OnRedisError)
	}
	if c.RedisTimeout < 0 {
		return nil, fmt.Errorf("limits.redis_timeout: must be positive, got %s", c.RedisTimeout)
	}
	if c.LeaseTTL < time.Second {
		return nil, fmt.Errorf("limits.lease_ttl: must be at least 1s, got %s", c.LeaseTTL)
	}
	if c.BackendMaxInFlight < 0 {
		return nil, fmt.Errorf("limits.backend_max_in_flight: must not be negative, got %d", c.BackendMaxInFlight)
	}
	if c.MaxFailuresPerIP < 0 {
		return nil, fmt.Errorf("auth.max_failures_per_ip: must not be negative, got %d", c.MaxFailuresPerIP)
	}
	if c.RedisURL == "" {
		return nil, nil
	}
	opt, err := redis.ParseURL(c.RedisURL)
	if err != nil {
		// go-redis's messages may quote the URL: say only what is wanted.
		return nil, fmt.Errorf("limits.redis_url: want redis://[user:password@]host:port/db or rediss://…")
	}
	return opt, nil
}
