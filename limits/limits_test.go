package limits_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/vega-gateway/vega-gateway/limits"
	"github.com/vega-gateway/vega-gateway/redistest"
)

var (
	ip1 = net.ParseIP("192.0.2.1").To4()
	ip2 = net.ParseIP("192.0.2.2").To4()
)

// store is one way to build a limiter: in the process, or over a real
// redis-server (flushed before each case).
type store struct {
	name string
	new  func(t *testing.T, cfg limits.Config) *limits.Limiter
}

func stores(t *testing.T) []store {
	srv := redistest.Start(t)
	flush := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	t.Cleanup(func() { flush.Close() })
	build := func(t *testing.T, cfg limits.Config) *limits.Limiter {
		t.Helper()
		l, err := limits.New(cfg, zerolog.Nop())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		return l
	}
	return []store{
		{"memory", build},
		{"redis", func(t *testing.T, cfg limits.Config) *limits.Limiter {
			if err := flush.FlushDB(context.Background()).Err(); err != nil {
				t.Fatal(err)
			}
			cfg.RedisURL = srv.URL()
			// These cases are about what is counted, not about slow
			// answers: a loaded test machine must not turn them into
			// on_redis_error decisions.
			cfg.RedisTimeout = 2 * time.Second
			return build(t, cfg)
		}},
	}
}

// awayFromMinuteEdge waits out the last seconds of a clock minute, so a
// case's counts are not split by a window rolling over.
func awayFromMinuteEdge(t *testing.T, need time.Duration) {
	t.Helper()
	now := time.Now()
	left := now.Truncate(time.Minute).Add(time.Minute).Sub(now)
	if left < need {
		time.Sleep(left + 50*time.Millisecond)
	}
}

type step struct {
	op     string // admit, done, fail, backend, release
	ip     net.IP
	key    string
	tokens int64
	want   limits.Reason
}

func TestStores(t *testing.T) {
	keys := map[string]limits.KeyLimits{
		"rpm":   {RequestsPerMinute: 3},
		"conc":  {MaxConcurrent: 2},
		"tpm":   {TokensPerMinute: 100},
		"tpd":   {TokensPerDay: 50},
		"both":  {RequestsPerMinute: 3, MaxConcurrent: 1},
		"plain": {},
	}
	cases := []struct {
		name      string
		ipBudget  int
		backend   int
		steps     []step
		wantRetry map[int][2]int64 // step index → RetryAfter range
	}{
		{name: "requests per minute", steps: []step{
			{op: "admit", key: "rpm"}, {op: "admit", key: "rpm"}, {op: "admit", key: "rpm"},
			{op: "admit", key: "rpm", want: limits.RequestsPerMinute},
			{op: "admit", key: "plain"}, // other keys are not affected
		}, wantRetry: map[int][2]int64{3: {1, 60}}},
		{name: "max concurrent frees on done", steps: []step{
			{op: "admit", key: "conc"}, {op: "admit", key: "conc"},
			{op: "admit", key: "conc", want: limits.Concurrency},
			{op: "done"},
			{op: "admit", key: "conc"},
			{op: "admit", key: "conc", want: limits.Concurrency},
		}, wantRetry: map[int][2]int64{2: {1, 1}}},
		{name: "tokens per minute: admitted while positive, charged at the end", steps: []step{
			{op: "admit", key: "tpm"}, {op: "done", tokens: 60},
			{op: "admit", key: "tpm"}, {op: "done", tokens: 60}, // overdraws by one request
			{op: "admit", key: "tpm", want: limits.TokensPerMinute},
		}, wantRetry: map[int][2]int64{4: {1, 60}}},
		{name: "tokens per day", steps: []step{
			{op: "admit", key: "tpd"}, {op: "done", tokens: 49},
			{op: "admit", key: "tpd"}, {op: "done", tokens: 1},
			{op: "admit", key: "tpd", want: limits.TokensPerDay},
		}, wantRetry: map[int][2]int64{4: {1, 86400}}},
		{name: "a refused request still counts against the rate", steps: []step{
			{op: "admit", key: "both"},
			{op: "admit", key: "both", want: limits.Concurrency},
			{op: "admit", key: "both", want: limits.Concurrency},
			{op: "done"},
			{op: "admit", key: "both", want: limits.RequestsPerMinute},
		}},
		{name: "failed authentications per IP", ipBudget: 2, steps: []step{
			{op: "fail", ip: ip1}, {op: "fail", ip: ip1},
			{op: "fail", ip: ip1, want: limits.IPBlocked},
			{op: "admit", ip: ip1, key: "plain", want: limits.IPBlocked},
			{op: "admit", ip: ip1, key: "rpm", want: limits.IPBlocked},
			{op: "admit", ip: ip2, key: "plain"},
			{op: "fail", ip: ip2},
		}, wantRetry: map[int][2]int64{2: {1, 60}, 3: {1, 60}}},
		{name: "a blocked IP does not use the key's rate", ipBudget: 1, steps: []step{
			{op: "fail", ip: ip1},
			{op: "admit", ip: ip1, key: "rpm", want: limits.IPBlocked},
			{op: "admit", ip: ip2, key: "rpm"}, {op: "admit", ip: ip2, key: "rpm"}, {op: "admit", ip: ip2, key: "rpm"},
			{op: "admit", ip: ip2, key: "rpm", want: limits.RequestsPerMinute},
		}},
		{name: "backend bound", backend: 2, steps: []step{
			{op: "backend", key: "gpu-a"}, {op: "backend", key: "gpu-a"},
			{op: "backend", key: "gpu-a", want: limits.BackendBusy},
			{op: "backend", key: "gpu-b"},
			{op: "release"},
			{op: "backend", key: "gpu-a", want: limits.BackendBusy}, // released gpu-b's
			{op: "release"}, {op: "release"},
			{op: "backend", key: "gpu-a"},
		}},
		{name: "no limits", steps: []step{
			{op: "admit", key: "plain"}, {op: "admit", key: "unknown"}, {op: "admit", key: ""},
			{op: "fail", ip: ip1}, {op: "backend", key: "gpu-a"},
		}},
	}
	for _, st := range stores(t) {
		t.Run(st.name, func(t *testing.T) {
			for _, tc := range cases {
				t.Run(tc.name, func(t *testing.T) {
					awayFromMinuteEdge(t, 3*time.Second)
					l := st.new(t, limits.Config{MaxFailuresPerIP: tc.ipBudget, BackendMaxInFlight: tc.backend})
					l.SetKeys(keys)
					var grants []limits.Grant
					var leases []limits.BackendLease
					for i, s := range tc.steps {
						ip := s.ip
						if ip == nil {
							ip = ip1
						}
						var d limits.Decision
						switch s.op {
						case "admit":
							var g limits.Grant
							g, d = l.Admit(ip, s.key)
							if d.OK() {
								grants = append(grants, g)
							}
						case "done":
							l.Done(&grants[0], s.tokens)
							grants = grants[1:]
							continue
						case "fail":
							d = l.Failed(ip)
						case "backend":
							var b limits.BackendLease
							b, d = l.AcquireBackend(s.key)
							if d.OK() {
								leases = append(leases, b)
							}
						case "release":
							l.ReleaseBackend(&leases[len(leases)-1])
							leases = leases[:len(leases)-1]
							continue
						}
						if d.Reason != s.want {
							t.Fatalf("step %d (%s %s): %s, want %s", i, s.op, s.key, d.Reason, s.want)
						}
						if r, ok := tc.wantRetry[i]; ok && (d.RetryAfter < r[0] || d.RetryAfter > r[1]) {
							t.Fatalf("step %d: Retry-After %d s, want %d..%d", i, d.RetryAfter, r[0], r[1])
						}
					}
					if n := l.Stats().RedisErrors.Load(); n != 0 {
						t.Fatalf("%d Redis errors", n)
					}
				})
			}
		})
	}
}

// TestUsage: both stores report the same use per key.
func TestUsage(t *testing.T) {
	for _, st := range stores(t) {
		t.Run(st.name, func(t *testing.T) {
			awayFromMinuteEdge(t, 3*time.Second)
			l := st.new(t, limits.Config{})
			l.SetKeys(map[string]limits.KeyLimits{
				"b": {RequestsPerMinute: 10, MaxConcurrent: 5, TokensPerMinute: 1000, TokensPerDay: 9000},
				"a": {RequestsPerMinute: 7},
				"z": {},
			})
			g1, _ := l.Admit(ip1, "b")
			_, _ = l.Admit(ip1, "b")
			l.Done(&g1, 42)
			_, _ = l.Admit(ip1, "a")
			got, err := l.Usage()
			if err != nil {
				t.Fatal(err)
			}
			want := []limits.KeyUsage{
				{Name: "a", RequestsThisMinute: 1, RequestsPerMinute: 7},
				{Name: "b", RequestsThisMinute: 2, RequestsPerMinute: 10, InFlight: 1, MaxConcurrent: 5,
					TokensThisMinute: 42, TokensPerMinute: 1000, TokensToday: 42, TokensPerDay: 9000},
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("usage\n got %+v\nwant %+v", got, want)
			}
		})
	}
}

// TestSharedRateExact: two limiters (two replicas) on one Redis, 16
// goroutines each, admit exactly requests_per_minute between them.
func TestSharedRateExact(t *testing.T) {
	srv := redistest.Start(t)
	awayFromMinuteEdge(t, 10*time.Second)
	const limit = 500
	var admitted atomic.Int64
	var wg sync.WaitGroup
	for range 2 {
		l, err := limits.New(limits.Config{RedisURL: srv.URL(), RedisTimeout: time.Second}, zerolog.Nop())
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		l.SetKeys(map[string]limits.KeyLimits{"k": {RequestsPerMinute: limit}})
		for range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range 50 {
					if _, d := l.Admit(ip1, "k"); d.OK() {
						admitted.Add(1)
					}
				}
			}()
		}
	}
	wg.Wait()
	if n := admitted.Load(); n != limit {
		t.Fatalf("admitted %d of %d attempts, want exactly %d", n, 2*16*50, limit)
	}
}

// TestLeaseExpiry: a replica that dies holding slots (no refresh) frees
// them within limits.lease_ttl; a live replica's refreshed lease holds.
func TestLeaseExpiry(t *testing.T) {
	srv := redistest.Start(t)
	cfg := limits.Config{RedisURL: srv.URL(), LeaseTTL: 2 * time.Second, RedisTimeout: time.Second, BackendMaxInFlight: 1}
	newL := func() *limits.Limiter {
		l, err := limits.New(cfg, zerolog.Nop())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		l.SetKeys(map[string]limits.KeyLimits{"dead": {MaxConcurrent: 1}, "live": {MaxConcurrent: 1}})
		return l
	}
	crashed, live, other := newL(), newL(), newL()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go live.Run(ctx)
	if _, d := crashed.Admit(ip1, "dead"); !d.OK() {
		t.Fatal(d.Reason)
	}
	if _, d := crashed.AcquireBackend("gpu-a"); !d.OK() {
		t.Fatal(d.Reason)
	}
	if _, d := live.Admit(ip1, "live"); !d.OK() {
		t.Fatal(d.Reason)
	}
	if _, d := other.Admit(ip1, "dead"); d.Reason != limits.Concurrency {
		t.Fatalf("while the lease is live: %s", d.Reason)
	}
	start := time.Now()
	for {
		// Whatever one probe takes it gives back, so a slot freed before
		// the other is not then held by the probe itself.
		g, d := other.Admit(ip1, "dead")
		l, b := other.AcquireBackend("gpu-a")
		other.Done(&g, 0)
		other.ReleaseBackend(&l)
		if d.OK() && b.OK() {
			break
		}
		if time.Since(start) > 2*cfg.LeaseTTL {
			t.Fatalf("the dead replica's slots still held after %s (lease_ttl %s)", time.Since(start), cfg.LeaseTTL)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("dead replica's slots freed after %s", time.Since(start).Round(time.Millisecond))
	time.Sleep(cfg.LeaseTTL + cfg.LeaseTTL/2) // past the TTL: only the refresh keeps it
	if _, d := other.Admit(ip1, "live"); d.Reason != limits.Concurrency {
		t.Fatalf("a refreshed lease was lost: %s", d.Reason)
	}
}

// TestRedisOutage: while Redis is gone, allow admits every request and
// deny refuses it, each counted; after it returns, limits are enforced
// again within 5 s, and the log has one line per interval, no password.
func TestRedisOutage(t *testing.T) {
	for _, mode := range []string{limits.OnErrorAllow, limits.OnErrorDeny} {
		t.Run(mode, func(t *testing.T) {
			srv := redistest.Start(t)
			var logs bytes.Buffer
			var logMu sync.Mutex
			log := zerolog.New(zerolog.SyncWriter(&lockedWriter{w: &logs, mu: &logMu}))
			url := strings.Replace(srv.URL(), "redis://", "redis://:s3cret-pass@", 1)
			l, err := limits.New(limits.Config{RedisURL: url, OnRedisError: mode, RedisTimeout: 100 * time.Millisecond}, log)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			l.SetKeys(map[string]limits.KeyLimits{"k": {RequestsPerMinute: 1}})
			srv.Stop()
			for i := range 50 {
				_, d := l.Admit(ip1, "k")
				want := limits.Admitted
				if mode == limits.OnErrorDeny {
					want = limits.Unavailable
				}
				if d.Reason != want {
					t.Fatalf("request %d with Redis down: %s, want %s", i, d.Reason, want)
				}
			}
			if n := l.Stats().RedisErrors.Load(); n != 50 {
				t.Fatalf("Redis errors counted %d, want 50", n)
			}
			srv.Restart()
			back := time.Now()
			for {
				// Counting has resumed once the second of two requests is
				// refused by the key's limit of 1 a minute. (The first may
				// itself be refused: a probe the returning Redis answered
				// only for its second request has taken the slot.)
				_, d1 := l.Admit(ip1, "k")
				_, d2 := l.Admit(ip1, "k")
				if d2.Reason == limits.RequestsPerMinute && (d1.OK() || d1.Reason == limits.RequestsPerMinute) {
					break
				}
				if time.Since(back) > 5*time.Second {
					t.Fatalf("limits not enforced 5 s after Redis returned: %s %s", d1.Reason, d2.Reason)
				}
				awayFromMinuteEdge(t, 2*time.Second)
				time.Sleep(50 * time.Millisecond)
			}
			t.Logf("limits enforced %s after Redis returned", time.Since(back).Round(time.Millisecond))
			logMu.Lock()
			out := logs.String()
			logMu.Unlock()
			if strings.Contains(out, "s3cret") {
				t.Fatalf("the log holds the Redis password:\n%s", out)
			}
			if n := strings.Count(out, "Redis did not answer"); n != 1 {
				t.Fatalf("%d failure lines for one outage, want 1:\n%s", n, out)
			}
			if !strings.Contains(out, "Redis answers again") {
				t.Fatalf("the return is not logged:\n%s", out)
			}
		})
	}
}

func TestConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		cfg  limits.Config
		want string
	}{
		{limits.Config{OnRedisError: "maybe"}, "limits.on_redis_error"},
		{limits.Config{LeaseTTL: 10 * time.Millisecond}, "limits.lease_ttl"},
		{limits.Config{BackendMaxInFlight: -1}, "limits.backend_max_in_flight"},
		{limits.Config{RedisTimeout: -time.Second}, "limits.redis_timeout"},
		{limits.Config{MaxFailuresPerIP: -1}, "auth.max_failures_per_ip"},
		{limits.Config{RedisURL: "http://user:hunter2@host:6379"}, "limits.redis_url"},
	} {
		_, err := limits.New(tc.cfg, zerolog.Nop())
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "hunter2") {
			t.Errorf("%+v: error %v, want one naming %s without the password", tc.cfg, err, tc.want)
		}
	}
}

type lockedWriter struct {
	w  *bytes.Buffer
	mu *sync.Mutex
}

func (w *lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.w.Write(p)
}

func TestMain(m *testing.M) {
	limits.SetClientLogger(zerolog.Nop()) // the dial errors of the outage tests
	m.Run()
}
