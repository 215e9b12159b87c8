package cache

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"sort"
	"sync"
	"sync/atomic"
)

// Key identifies an entry: the SHA-256 of everything that decides the
// answer (NewKey).
type Key [sha256.Size]byte

// NewKey hashes parts into a key. Each part is length-prefixed, so no two
// different lists of parts give the same input to the hash.
func NewKey(parts ...[]byte) Key {
	h := sha256.New()
	var n [8]byte
	for _, p := range parts {
		binary.BigEndian.PutUint64(n[:], uint64(len(p)))
		h.Write(n[:])
		h.Write(p)
	}
	var k Key
	h.Sum(k[:0])
	return k
}

// Derive returns the key of input under k: the SHA-256 of k and input,
// built in buf (grown as needed and returned for reuse), so keying each
// input of a batch under a common prefix hashes the prefix once and
// allocates nothing.
func (k Key) Derive(buf []byte, input string) (Key, []byte) {
	buf = append(append(buf[:0], k[:]...), input...)
	return sha256.Sum256(buf), buf
}

// Store keeps values by key. Get returns one value per key (nil: a miss);
// Set stores each value under its key. Neither reports an error: a store
// that cannot answer behaves as an empty one, so the cache can never fail
// a request. Returned values are not modified afterwards; stored values
// must not be modified by the caller.
type Store interface {
	Get(ctx context.Context, keys []Key) [][]byte
	Set(ctx context.Context, keys []Key, vals [][]byte)
	Close() error
}

// Result is what the cache did for a request (or for one input of a
// batch).
type Result uint8

const (
	// Hit: answered from the cache.
	Hit Result = iota
	// Miss: looked up, not found; the answer goes upstream and is stored.
	Miss
	// Bypass: not looked up (asked by the client, not deterministic, or
	// the model's digest is not known or not agreed on).
	Bypass
	numResults
)

var resultNames = [numResults]string{"hit", "miss", "bypass"}

// String is the result as logged, sent in X-Vega-Cache and exported.
func (r Result) String() string { return resultNames[r] }

// maxStatSeries bounds the (route, model) counters; further models share
// the model label "other".
const maxStatSeries = 256

// Cache is the response cache: a Store plus the numbers about it. Its
// methods are safe for concurrent use.
type Cache struct {
	cfg   Config
	store Store
	mem   *memory     // nil with Redis
	rds   *redisStore // nil in process
	// tooLarge counts answers not stored for being over MaxEntryBytes.
	tooLarge atomic.Int64

	mu     sync.RWMutex
	series map[seriesKey]*[numResults]atomic.Int64
}

type seriesKey struct{ route, model string }

// New builds the cache and its store. It dials nothing and starts no
// goroutine: a Redis connection is made at first use.
func New(cfg Config) (*Cache, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	c := &Cache{cfg: cfg, series: map[seriesKey]*[numResults]atomic.Int64{}}
	if cfg.RedisURL != "" {
		r, err := newRedis(cfg.RedisURL, cfg.TTL, cfg.RedisTimeout)
		if err != nil {
			return nil, err
		}
		c.rds, c.store = r, r
	} else {
		c.mem = newMemory(cfg.MaxBytes, cfg.TTL)
		c.store = c.mem
	}
	return c, nil
}

// Global reports whether entries are shared by every caller (cache.scope:
// global) rather than kept per API key.
func (c *Cache) Global() bool { return c.cfg.Scope == ScopeGlobal }

// MaxEntryBytes is the largest value the cache keeps.
func (c *Cache) MaxEntryBytes() int { return c.cfg.MaxEntryBytes }

// Get looks keys up (nil: a miss).
func (c *Cache) Get(ctx context.Context, keys []Key) [][]byte { return c.store.Get(ctx, keys) }

// Set stores values (the cache keeps them: the caller must not modify
// them); values over MaxEntryBytes are skipped.
func (c *Cache) Set(ctx context.Context, keys []Key, vals [][]byte) {
	var ks []Key
	var vs [][]byte
	for i := range keys {
		if len(vals[i]) > c.cfg.MaxEntryBytes {
			c.tooLarge.Add(1)
			continue
		}
		ks, vs = append(ks, keys[i]), append(vs, vals[i])
	}
	if len(ks) > 0 {
		c.store.Set(ctx, ks, vs)
	}
}

// Note counts n results of one kind for a route and model.
func (c *Cache) Note(route, model string, r Result, n int) {
	if n <= 0 {
		return
	}
	k := seriesKey{route, model}
	c.mu.RLock()
	s := c.series[k]
	c.mu.RUnlock()
	if s == nil {
		c.mu.Lock()
		if s = c.series[k]; s == nil {
			if len(c.series) >= maxStatSeries {
				k.model = "other"
			}
			if s = c.series[k]; s == nil {
				s = new([numResults]atomic.Int64)
				c.series[k] = s
			}
		}
		c.mu.Unlock()
	}
	s[r].Add(int64(n))
}

// Close releases the store's connections.
func (c *Cache) Close() error { return c.store.Close() }

// Snapshot is the cache's numbers at one moment. Hits, misses and
// bypasses count inputs on the embedding routes (a batch of 32 is 32) and
// requests on the completion routes.
type Snapshot struct {
	// Store is "memory" or "redis".
	Store string `json:"store"`
	// Bytes is the in-process store's charge against MaxBytes (values
	// plus EntryOverhead per entry); Entries its entry count; Evictions
	// the entries dropped to make room. Zero with Redis.
	Bytes     int64 `json:"bytes"`
	MaxBytes  int64 `json:"max_bytes"`
	Entries   int64 `json:"entries"`
	Evictions int64 `json:"evictions"`
	// TooLarge counts answers not stored for being over max_entry_bytes.
	TooLarge int64 `json:"too_large"`
	// StoreErrors counts failed Redis calls (each served uncached).
	StoreErrors int64   `json:"store_errors"`
	Hits        int64   `json:"hits"`
	Misses      int64   `json:"misses"`
	Bypasses    int64   `json:"bypasses"`
	HitRate     float64 `json:"hit_rate"`
	// Routes are the counts by route and model, sorted.
	Routes []RouteSnapshot `json:"routes"`
}

// RouteSnapshot is one route and model's counts. HitRate is hits over
// hits and misses (bypasses are not looked up).
type RouteSnapshot struct {
	Route    string  `json:"route"`
	Model    string  `json:"model"`
	Hits     int64   `json:"hits"`
	Misses   int64   `json:"misses"`
	Bypasses int64   `json:"bypasses"`
	HitRate  float64 `json:"hit_rate"`
}

func hitRate(h, m int64) float64 {
	if h+m == 0 {
		return 0
	}
	return float64(h) / float64(h+m)
}

// Snapshot reads the numbers; its cost is bounded by the series bound.
func (c *Cache) Snapshot() Snapshot {
	s := Snapshot{Store: "memory", TooLarge: c.tooLarge.Load()}
	if c.mem != nil {
		s.MaxBytes = c.cfg.MaxBytes
		s.Bytes, s.Entries, s.Evictions = c.mem.usage()
	} else {
		s.Store = "redis"
		s.StoreErrors = c.rds.errors.Load()
	}
	c.mu.RLock()
	for k, v := range c.series {
		r := RouteSnapshot{Route: k.route, Model: k.model, Hits: v[Hit].Load(), Misses: v[Miss].Load(), Bypasses: v[Bypass].Load()}
		r.HitRate = hitRate(r.Hits, r.Misses)
		s.Hits += r.Hits
		s.Misses += r.Misses
		s.Bypasses += r.Bypasses
		s.Routes = append(s.Routes, r)
	}
	c.mu.RUnlock()
	s.HitRate = hitRate(s.Hits, s.Misses)
	sort.Slice(s.Routes, func(i, j int) bool {
		if s.Routes[i].Route != s.Routes[j].Route {
			return s.Routes[i].Route < s.Routes[j].Route
		}
		return s.Routes[i].Model < s.Routes[j].Model
	})
	return s
}
