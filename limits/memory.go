package limits

import (
	"cmp"
	"net"
	"slices"
	"sync"
	"time"
)

// maxTrackedIPs bounds the failure table: past it the table starts over,
// so a spray of source addresses cannot grow memory without bound.
const maxTrackedIPs = 100_000

// memStore keeps the counters in the process: each replica enforces the
// limits on its own.
type memStore struct {
	now func() time.Time

	mu       sync.Mutex
	keys     map[string]*memKey // by key name, kept across SetKeys
	backends map[string]*int64  // requests in flight by backend name

	ipMu     sync.Mutex
	ipMinute int64
	ipCounts map[string]int64
}

// memKey is one key's counters, guarded by mu.
type memKey struct {
	mu                  sync.Mutex
	rpmWindow, rpmCount int64 // unix minute, requests started in it
	tpmWindow, tpmUsed  int64 // unix minute, tokens charged in it
	tpdWindow, tpdUsed  int64 // unix day, tokens charged in it
	inFlight            int64
}

func newMemStore(now func() time.Time) *memStore {
	return &memStore{now: now, keys: map[string]*memKey{}, backends: map[string]*int64{}, ipCounts: map[string]int64{}}
}

func (s *memStore) key(name string) *memKey {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.keys[name]
	if m == nil {
		m = &memKey{}
		s.keys[name] = m
	}
	return m
}

func untilMinute(sec int64) int64 { return 60 - sec%60 }
func untilDay(sec int64) int64    { return 86400 - sec%86400 }

func (s *memStore) rollIPs(sec int64) {
	if m := sec / 60; m != s.ipMinute || len(s.ipCounts) > maxTrackedIPs {
		s.ipMinute = m
		clear(s.ipCounts)
	}
}

func (s *memStore) admit(k *keyEntry, ip net.IP, ipLimit int, _ string) (Decision, bool, error) {
	sec := s.now().Unix()
	if ipLimit > 0 {
		s.ipMu.Lock()
		s.rollIPs(sec)
		n := s.ipCounts[string(ip)]
		s.ipMu.Unlock()
		if n >= int64(ipLimit) {
			return Decision{IPBlocked, untilMinute(sec)}, false, nil
		}
	}
	if k == nil {
		return Decision{}, false, nil
	}
	m := k.mem
	m.mu.Lock()
	defer m.mu.Unlock()
	minute, day := sec/60, sec/86400
	if k.TokensPerDay > 0 {
		if m.tpdWindow != day {
			m.tpdWindow, m.tpdUsed = day, 0
		}
		if m.tpdUsed >= k.TokensPerDay {
			return Decision{TokensPerDay, untilDay(sec)}, false, nil
		}
	}
	if k.TokensPerMinute > 0 {
		if m.tpmWindow != minute {
			m.tpmWindow, m.tpmUsed = minute, 0
		}
		if m.tpmUsed >= k.TokensPerMinute {
			return Decision{TokensPerMinute, untilMinute(sec)}, false, nil
		}
	}
	if k.RequestsPerMinute > 0 {
		if m.rpmWindow != minute {
			m.rpmWindow, m.rpmCount = minute, 0
		}
		// Counted even when refused here or below, as in Redis.
		m.rpmCount++
		if m.rpmCount > int64(k.RequestsPerMinute) {
			return Decision{RequestsPerMinute, untilMinute(sec)}, false, nil
		}
	}
	if k.MaxConcurrent > 0 {
		if m.inFlight >= int64(k.MaxConcurrent) {
			return Decision{Concurrency, 1}, false, nil
		}
		m.inFlight++
		return Decision{}, true, nil
	}
	return Decision{}, false, nil
}

func (s *memStore) end(k *keyEntry, tokens int64, _ string, leased bool) error {
	sec := s.now().Unix()
	m := k.mem
	m.mu.Lock()
	defer m.mu.Unlock()
	if leased {
		m.inFlight--
	}
	if tokens > 0 && k.TokensPerMinute > 0 {
		if minute := sec / 60; m.tpmWindow != minute {
			m.tpmWindow, m.tpmUsed = minute, 0
		}
		m.tpmUsed += tokens
	}
	if tokens > 0 && k.TokensPerDay > 0 {
		if day := sec / 86400; m.tpdWindow != day {
			m.tpdWindow, m.tpdUsed = day, 0
		}
		m.tpdUsed += tokens
	}
	return nil
}

func (s *memStore) fail(ip net.IP, limit int) (Decision, error) {
	sec := s.now().Unix()
	s.ipMu.Lock()
	defer s.ipMu.Unlock()
	s.rollIPs(sec)
	if s.ipCounts[string(ip)] >= int64(limit) {
		return Decision{IPBlocked, untilMinute(sec)}, nil
	}
	s.ipCounts[string(ip)]++
	return Decision{}, nil
}

func (s *memStore) acquireBackend(name string, limit int, _ string) (Decision, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.backends[name]
	if n == nil {
		n = new(int64)
		s.backends[name] = n
	}
	if *n >= int64(limit) {
		return Decision{BackendBusy, 1}, nil
	}
	*n++
	return Decision{}, nil
}

func (s *memStore) releaseBackend(name, _ string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n := s.backends[name]; n != nil {
		if *n--; *n <= 0 {
			// Discovered backends come and go (pod IPs): an idle one
			// takes no room.
			delete(s.backends, name)
		}
	}
	return nil
}

func (s *memStore) usage(keys []*keyEntry) ([]KeyUsage, error) {
	sec := s.now().Unix()
	minute, day := sec/60, sec/86400
	out := make([]KeyUsage, len(keys))
	for i, k := range keys {
		u := usageOf(k)
		m := k.mem
		m.mu.Lock()
		if m.rpmWindow == minute {
			u.RequestsThisMinute = m.rpmCount
		}
		if m.tpmWindow == minute {
			u.TokensThisMinute = m.tpmUsed
		}
		if m.tpdWindow == day {
			u.TokensToday = m.tpdUsed
		}
		u.InFlight = m.inFlight
		m.mu.Unlock()
		out[i] = u
	}
	return out, nil
}

func usageOf(k *keyEntry) KeyUsage {
	return KeyUsage{Name: k.name, RequestsPerMinute: k.RequestsPerMinute, MaxConcurrent: k.MaxConcurrent,
		TokensPerMinute: k.TokensPerMinute, TokensPerDay: k.TokensPerDay}
}

func sortKeys(keys []*keyEntry) {
	slices.SortFunc(keys, func(a, b *keyEntry) int { return cmp.Compare(a.name, b.name) })
}
