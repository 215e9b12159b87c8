package cache

import (
	"context"
	"sync"
	"time"
)

// EntryOverhead is what one in-process entry costs beyond its value, and
// what is charged against MaxBytes for it with the value's allocated size
// (its length rounded up to Go's size class): the entry (32-byte key,
// value header, expiry, two list links: 80 bytes) and its map slot (a
// 32-byte key and a pointer in Go's swiss table, which under constant
// insertion and eviction runs between half and seven eighths full, with
// tombstones: about 170 bytes measured). Values plus EntryOverhead per
// entry never exceed MaxBytes; the heap the store holds stays within a
// few per cent of it (go run ./bench -cases cache, the memory table).
const EntryOverhead = 256

// memory is the in-process store: a map and a doubly linked list in
// recency order, under one mutex (a lookup is a map read and two pointer
// moves; the lock is never held across I/O or an allocation of a value).
type memory struct {
	max int64
	ttl time.Duration

	mu    sync.Mutex
	items map[Key]*entry
	// head is the most recently used entry, tail the least.
	head, tail *entry
	used       int64
	evictions  int64
}

type entry struct {
	key        Key
	val        []byte
	expires    int64 // unix ns
	prev, next *entry
}

func newMemory(max int64, ttl time.Duration) *memory {
	return &memory{max: max, ttl: ttl, items: map[Key]*entry{}}
}

// Get returns the values stored under keys (nil for a miss). A returned
// value is never modified afterwards: the caller may keep it.
func (m *memory) Get(_ context.Context, keys []Key) [][]byte {
	out := make([][]byte, len(keys))
	now := time.Now().UnixNano()
	m.mu.Lock()
	defer m.mu.Unlock()
	for i, k := range keys {
		e := m.items[k]
		if e == nil {
			continue
		}
		if now >= e.expires {
			m.remove(e)
			continue
		}
		m.toFront(e)
		out[i] = e.val
	}
	return out
}

// Set stores a copy of each value under its key, evicting the least recently used entries to stay
// within max.
func (m *memory) Set(_ context.Context, keys []Key, vals [][]byte) {
	expires := time.Now().Add(m.ttl).UnixNano()
	m.mu.Lock()
	defer m.mu.Unlock()
	for i, k := range keys {
		// A copy of the exact size: its capacity is the allocation's (the
		// size class), which is what is charged.
		v := append([]byte(nil), vals[i]...)
		cost := int64(cap(v)) + EntryOverhead
		if cost > m.max {
			continue
		}
		if old := m.items[k]; old != nil {
			m.remove(old)
		}
		for m.used+cost > m.max && m.tail != nil {
			m.remove(m.tail)
			m.evictions++
		}
		e := &entry{key: k, val: v, expires: expires}
		m.items[k] = e
		m.used += cost
		m.pushFront(e)
	}
}

func (m *memory) remove(e *entry) {
	delete(m.items, e.key)
	m.used -= int64(cap(e.val)) + EntryOverhead
	m.unlink(e)
}

func (m *memory) unlink(e *entry) {
	if e.prev != nil {
		e.prev.next = e.next
	} else {
		m.head = e.next
	}
	if e.next != nil {
		e.next.prev = e.prev
	} else {
		m.tail = e.prev
	}
	e.prev, e.next = nil, nil
}

func (m *memory) pushFront(e *entry) {
	e.next = m.head
	if m.head != nil {
		m.head.prev = e
	}
	m.head = e
	if m.tail == nil {
		m.tail = e
	}
}

func (m *memory) toFront(e *entry) {
	if m.head == e {
		return
	}
	m.unlink(e)
	m.pushFront(e)
}

func (m *memory) usage() (bytes, entries, evictions int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.used, int64(len(m.items)), m.evictions
}

func (m *memory) Close() error { return nil }
