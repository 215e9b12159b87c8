// Package cache keeps the gateway's response cache: answers to requests
// that give the same output for the same input (embeddings, deterministic
// completions), in an in-process LRU bounded by bytes or in Redis shared
// by replicas. It stores opaque bytes under keys the gateway derives; it
// knows nothing of routes' wire formats.
package cache

import (
	"fmt"
	"net/url"
	"time"
)

// Defaults. Zero Config fields select them.
const (
	// DefaultMaxBytes bounds the in-process store (256 MiB).
	DefaultMaxBytes = 256 << 20
	// DefaultTTL is how long an entry lives.
	DefaultTTL = 24 * time.Hour
	// DefaultMaxEntryBytes is the largest value stored (1 MiB): a bigger
	// answer is served but not kept.
	DefaultMaxEntryBytes = 1 << 20
	// DefaultRedisTimeout bounds every Redis call: a slow Redis costs a
	// request this much at most, then the request goes on uncached.
	DefaultRedisTimeout = 100 * time.Millisecond
)

// Scopes: who shares entries.
const (
	// ScopeKey gives each API key name its own entries, so one tenant
	// cannot learn by timing what another sent.
	ScopeKey = "key"
	// ScopeGlobal shares entries between every caller.
	ScopeGlobal = "global"
)

// Config is the cache configuration (config keys cache.*).
type Config struct {
	// Enabled turns the cache on. Default false: every request goes
	// upstream.
	Enabled bool `mapstructure:"enabled"`
	// MaxBytes bounds the in-process store: values plus EntryOverhead per
	// entry. Default DefaultMaxBytes; zero selects the default. Unused
	// with RedisURL (Redis's own maxmemory applies).
	MaxBytes int64 `mapstructure:"max_bytes"`
	// TTL is how long an entry is served after it was stored. Default
	// DefaultTTL; zero selects the default.
	TTL time.Duration `mapstructure:"ttl"`
	// Scope is ScopeKey (default) or ScopeGlobal.
	Scope string `mapstructure:"scope"`
	// RedisURL, when set, keeps entries in Redis (redis://host:port/db,
	// rediss:// for TLS) instead of in process. Empty: in process.
	RedisURL string `mapstructure:"redis_url"`
	// RedisTimeout bounds each Redis call (dial, read, write, pool wait).
	// Default DefaultRedisTimeout; zero selects the default.
	RedisTimeout time.Duration `mapstructure:"redis_timeout"`
	// MaxEntryBytes is the largest value stored; larger answers are
	// served uncached. Default DefaultMaxEntryBytes; zero selects the
	// default.
	MaxEntryBytes int `mapstructure:"max_entry_bytes"`
}

func (c Config) withDefaults() Config {
	if c.MaxBytes == 0 {
		c.MaxBytes = DefaultMaxBytes
	}
	if c.TTL == 0 {
		c.TTL = DefaultTTL
	}
	if c.Scope == "" {
		c.Scope = ScopeKey
	}
	if c.RedisTimeout == 0 {
		c.RedisTimeout = DefaultRedisTimeout
	}
	if c.MaxEntryBytes == 0 {
		c.MaxEntryBytes = DefaultMaxEntryBytes
	}
	return c
}

func (c Config) validate() error {
	switch {
	case c.MaxBytes < 0:
		return fmt.Errorf("cache.max_bytes: must not be negative, got %d", c.MaxBytes)
	case c.TTL < 0:
		return fmt.Errorf("cache.ttl: must not be negative, got %s", c.TTL)
	case c.Scope != ScopeKey && c.Scope != ScopeGlobal:
		return fmt.Errorf("cache.scope: must be %q or %q, got %q", ScopeKey, ScopeGlobal, c.Scope)
	case c.RedisTimeout < 0:
		return fmt.Errorf("cache.redis_timeout: must not be negative, got %s", c.RedisTimeout)
	case c.MaxEntryBytes < 0:
		return fmt.Errorf("cache.max_entry_bytes: must not be negative, got %d", c.MaxEntryBytes)
	case c.RedisURL == "" && int64(c.MaxEntryBytes)+EntryOverhead > c.MaxBytes:
		return fmt.Errorf("cache.max_entry_bytes: %d does not fit in cache.max_bytes %d", c.MaxEntryBytes, c.MaxBytes)
	}
	if c.RedisURL != "" {
		u, err := url.Parse(c.RedisURL)
		if err != nil || (u.Scheme != "redis" && u.Scheme != "rediss" && u.Scheme != "unix") {
			return fmt.Errorf("cache.redis_url: want redis://host:port/db (or rediss://, unix://)")
		}
	}
	return nil
}
