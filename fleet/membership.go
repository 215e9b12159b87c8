package fleet

import (
	"math/bits"
	"slices"
	"strings"
)

// view is the set of backends taking requests. It is immutable once
// published: a change builds a new one, and a request keeps the view it
// loaded for its whole choice, so a backend leaving mid-choice is harmless
// (its pool drains before it closes).
type view struct {
	// list is in order: configured backends, then discovered ones by
	// group and name.
	list []*Backend
	// slot maps a Bit index to its backend (nil: not in this view).
	slot   [MaxBackends]*Backend
	byName map[string]*Backend
}

// memberState is a backend's place in the fleet.
type memberState uint8

const (
	// stateJoining: discovered, probed until its health probe and its
	// catalogue both answer; it takes no request yet.
	stateJoining memberState = iota
	// stateMember: in the view, taking requests.
	stateMember
	// stateDraining: gone from DNS; out of the view, its open requests
	// finish before its pool closes.
	stateDraining
	// stateClosed: its pool is closed and its slot free.
	stateClosed
)

// publish builds the view from the members and stores it. Callers hold
// f.mu (New needs not: nothing runs yet).
func (f *Fleet) publish() {
	v := &view{byName: map[string]*Backend{}}
	add := func(b *Backend) {
		v.list = append(v.list, b)
		v.slot[b.slot] = b
		v.byName[b.Name] = b
	}
	for _, b := range f.static {
		add(b)
	}
	for _, g := range f.groups {
		var ms []*Backend
		for _, b := range g.members {
			if b.state == stateMember {
				ms = append(ms, b)
			}
		}
		slices.SortFunc(ms, func(a, b *Backend) int { return strings.Compare(a.Name, b.Name) })
		for _, b := range ms {
			add(b)
		}
	}
	f.cur.Store(v)
}

// allocSlot takes the lowest free slot; -1 when MaxBackends are in use.
// Callers hold f.mu.
func (f *Fleet) allocSlot() int {
	if f.used == ^uint64(0) {
		return -1
	}
	i := bits.TrailingZeros64(^f.used)
	f.used |= 1 << uint(i)
	return i
}

// freeSlot gives b's slot back. Callers hold f.mu.
func (f *Fleet) freeSlot(b *Backend) { f.used &^= 1 << uint(b.slot) }

// Close closes every backend's pool, draining and joining ones included:
// new requests are refused, queued ones woken with pool.ErrClosed, open
// streams finish. Discovery adds no backend after it. For shutdown.
func (f *Fleet) Close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	for _, b := range f.static {
		b.Pool.Close()
	}
	for _, g := range f.groups {
		for _, b := range g.members {
			b.Pool.Close()
		}
		for b := range g.draining {
			b.Pool.Close()
		}
	}
}
