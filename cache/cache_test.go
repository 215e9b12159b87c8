package cache_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/vega-gateway/vega-gateway/cache"
	"github.com/vega-gateway/vega-gateway/redistest"
)

func key(i int) cache.Key { return cache.NewKey([]byte("test"), []byte(fmt.Sprint(i))) }

func TestNewKeyIsUnambiguous(t *testing.T) {
	a := cache.NewKey([]byte("ab"), []byte("c"))
	b := cache.NewKey([]byte("a"), []byte("bc"))
	if a == b {
		t.Fatal(`("ab","c") and ("a","bc") gave the same key`)
	}
}

func TestConfigValidation(t *testing.T) {
	for _, tc := range []struct {
		cfg  cache.Config
		want string
	}{
		{cache.Config{Scope: "tenant"}, "cache.scope"},
		{cache.Config{MaxBytes: -1}, "cache.max_bytes"},
		{cache.Config{TTL: -time.Second}, "cache.ttl"},
		{cache.Config{MaxBytes: 1000, MaxEntryBytes: 2000}, "cache.max_entry_bytes"},
		{cache.Config{RedisURL: "http://secret@x"}, "cache.redis_url"},
	} {
		_, err := cache.New(tc.cfg)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%+v) = %v, want an error naming %s", tc.cfg, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), "secret") {
			t.Errorf("error %q shows the URL's credentials", err)
		}
	}
}

// TestMemoryBound fills a small store with more than it holds: the charge
// never passes max_bytes, the oldest entries go first, and a read keeps an
// entry.
func TestMemoryBound(t *testing.T) {
	// 96 bytes is a Go size class: each entry is charged 96 + EntryOverhead.
	const max = 100 * (96 + cache.EntryOverhead)
	c, err := cache.New(cache.Config{Enabled: true, MaxBytes: max, MaxEntryBytes: 100})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	val := make([]byte, 96)
	for i := range 1000 {
		c.Set(ctx, []cache.Key{key(i)}, [][]byte{val})
		if i == 500 {
			c.Get(ctx, []cache.Key{key(450)}) // touched: the newest again
		}
		if i == 560 {
			if got := c.Get(ctx, []cache.Key{key(450), key(451)}); got[0] == nil || got[1] != nil {
				t.Fatalf("after 561 inserts: touched entry present %v, its untouched neighbour %v; want true, false", got[0] != nil, got[1] != nil)
			}
		}
		if s := c.Snapshot(); s.Bytes > max {
			t.Fatalf("after %d inserts the store charges %d bytes, over max_bytes %d", i+1, s.Bytes, max)
		}
	}
	s := c.Snapshot()
	if s.Entries != 100 || s.Evictions != 900 {
		t.Errorf("entries %d evictions %d, want 100 and 900", s.Entries, s.Evictions)
	}
	got := c.Get(ctx, []cache.Key{key(0), key(999), key(900)})
	if got[0] != nil || got[1] == nil || got[2] == nil {
		t.Errorf("oldest present %v, newest present %v/%v; want false, true, true", got[0] != nil, got[1] != nil, got[2] != nil)
	}
	c.Set(ctx, []cache.Key{key(5000)}, [][]byte{make([]byte, 101)})
	if s := c.Snapshot(); s.TooLarge != 1 {
		t.Errorf("too_large = %d after a value over max_entry_bytes, want 1", s.TooLarge)
	}
}

func TestMemoryTTL(t *testing.T) {
	c, err := cache.New(cache.Config{Enabled: true, TTL: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	c.Set(ctx, []cache.Key{key(1)}, [][]byte{[]byte("v")})
	deadline := time.Now().Add(5 * time.Second)
	for c.Get(ctx, []cache.Key{key(1)})[0] != nil {
		if time.Now().After(deadline) {
			t.Fatal("entry still served 5 s after a 1 ms TTL")
		}
		time.Sleep(time.Millisecond)
	}
	if s := c.Snapshot(); s.Entries != 0 || s.Bytes != 0 {
		t.Errorf("expired entry still counted: %d entries, %d bytes", s.Entries, s.Bytes)
	}
}

// TestRedisStore runs the Redis store against a real redis-server, then
// stops it: every call still returns (as misses), within the timeout, and
// once Redis is back entries are stored again.
func TestRedisStore(t *testing.T) {
	srv := redistest.Start(t)
	// A generous timeout: a loaded test machine must not turn the first calls into misses.
	c, err := cache.New(cache.Config{Enabled: true, RedisURL: srv.URL(), TTL: time.Minute, MaxEntryBytes: 1 << 10, RedisTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	c.Set(ctx, []cache.Key{key(1), key(2)}, [][]byte{[]byte("one"), []byte("two")})
	got := c.Get(ctx, []cache.Key{key(2), key(3), key(1)})
	if string(got[0]) != "two" || got[1] != nil || string(got[2]) != "one" {
		t.Fatalf("Get = %q, want [two <nil> one]", got)
	}
	c.Set(ctx, []cache.Key{key(4)}, [][]byte{make([]byte, 2<<10)})
	if got := c.Get(ctx, []cache.Key{key(4)}); got[0] != nil {
		t.Error("a value over max_entry_bytes was stored")
	}

	srv.Stop()
	start := time.Now()
	for range 20 {
		if got := c.Get(ctx, []cache.Key{key(1)}); got[0] != nil {
			t.Fatal("a value came back from a stopped Redis")
		}
		c.Set(ctx, []cache.Key{key(5)}, [][]byte{[]byte("five")})
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("40 calls against a stopped Redis took %s", d)
	}
	if s := c.Snapshot(); s.StoreErrors == 0 || s.Store != "redis" {
		t.Errorf("snapshot %+v: want store redis with errors counted", s)
	}

	srv.Restart()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c.Set(ctx, []cache.Key{key(6)}, [][]byte{[]byte("six")})
		if got := c.Get(ctx, []cache.Key{key(6)}); string(got[0]) == "six" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("entries not stored 10 s after Redis came back")
		}
		time.Sleep(100 * time.Millisecond)
	}
}
