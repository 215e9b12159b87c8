package cache

import (
	"context"
	"encoding/hex"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// redisPrefix namespaces the gateway's keys in a Redis shared with other
// uses (the shared limits use their own prefix).
const redisPrefix = "vega:cache:"

// redisDownFor is how long the store stops asking Redis after a failed
// call: requests meanwhile are served uncached at no cost, and one call
// after it finds out whether Redis is back.
const redisDownFor = time.Second

// redisStore keeps entries in Redis, shared by every replica. Every call
// is bounded by the timeout; a failure is a miss (Get) or a dropped write
// (Set), never an error for the request.
type redisStore struct {
	client  *redis.Client
	ttl     time.Duration
	timeout time.Duration
	// downUntil (unix ns): Redis failed; calls are skipped until then.
	downUntil atomic.Int64
	// errors counts failed Redis calls.
	errors atomic.Int64
}

func newRedis(rawURL string, ttl, timeout time.Duration) (*redisStore, error) {
	opt, err := redis.ParseURL(rawURL)
	if err != nil {
		// The URL may hold a password: name the key, not the value.
		return nil, fmt.Errorf("cache.redis_url: cannot parse")
	}
	opt.DialTimeout, opt.ReadTimeout, opt.WriteTimeout, opt.PoolTimeout = timeout, timeout, timeout, timeout
	opt.ContextTimeoutEnabled = true
	opt.MaxRetries = -1   // a retry doubles the time a request waits on a failing Redis
	opt.DialerRetries = 1 // likewise a second dial (go-redis tries 5, 100 ms apart)
	opt.DisableIdentity = true
	return &redisStore{client: redis.NewClient(opt), ttl: ttl, timeout: timeout}, nil
}

func redisKey(k Key) string {
	var buf [len(redisPrefix) + 2*len(Key{})]byte
	copy(buf[:], redisPrefix)
	hex.Encode(buf[len(redisPrefix):], k[:])
	return string(buf[:])
}

func (r *redisStore) up() bool { return time.Now().UnixNano() >= r.downUntil.Load() }

func (r *redisStore) failed() {
	r.errors.Add(1)
	r.downUntil.Store(time.Now().Add(redisDownFor).UnixNano())
}

// Get fetches every key in one MGET.
func (r *redisStore) Get(ctx context.Context, keys []Key) [][]byte {
	out := make([][]byte, len(keys))
	if len(keys) == 0 || !r.up() {
		return out
	}
	names := make([]string, len(keys))
	for i, k := range keys {
		names[i] = redisKey(k)
	}
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	vals, err := r.client.MGet(ctx, names...).Result()
	if err != nil {
		r.failed()
		return out
	}
	for i, v := range vals {
		if s, ok := v.(string); ok && i < len(out) {
			out[i] = []byte(s)
		}
	}
	return out
}

// Set writes every entry in one pipeline, each with the TTL.
func (r *redisStore) Set(ctx context.Context, keys []Key, vals [][]byte) {
	if len(keys) == 0 || !r.up() {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	_, err := r.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, k := range keys {
			p.Set(ctx, redisKey(k), vals[i], r.ttl)
		}
		return nil
	})
	if err != nil {
		r.failed()
	}
}

func (r *redisStore) Close() error { return r.client.Close() }
