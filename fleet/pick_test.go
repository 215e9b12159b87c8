package fleet

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/vega-gateway/vega-gateway/pool"
)

// testFleet builds a fleet over pools that are never dialled (pool.New
// opens nothing), named b0, b1, ...
func testFleet(t testing.TB, cfg Config, weights ...int) *Fleet {
	t.Helper()
	var ms []Member
	for i, w := range weights {
		p, err := pool.New(pool.UpstreamConfig{URL: fmt.Sprintf("http://127.0.0.1:%d", 10000+i)}, pool.Config{})
		if err != nil {
			t.Fatal(err)
		}
		ms = append(ms, Member{Name: fmt.Sprintf("b%d", i), Weight: w, Pool: p})
	}
	f, err := New(cfg, ms)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// setCatalogue replaces b's catalogue with known installed and loaded sets.
func setCatalogue(b *Backend, installed, loaded []string) {
	m := &models{known: true, installed: map[string]bool{}, loaded: map[string]bool{}, pending: map[string]bool{}}
	for _, n := range installed {
		m.installed[NormalizeModel(n)] = true
	}
	for _, n := range loaded {
		m.loaded[NormalizeModel(n)] = true
	}
	b.cat.cur.Store(m)
}

func TestPickModelAware(t *testing.T) {
	tests := []struct {
		name       string
		installed  [3][]string
		loaded     [3][]string
		busyOn     map[int]int // backend -> outstanding requests for "m"
		model      string
		wantIn     []int // acceptable backends
		wantReason Reason
		wantErr    error
	}{
		{name: "only where installed", installed: [3][]string{{"x"}, {"m"}, {"x"}}, model: "m", wantIn: []int{1}, wantReason: ReasonLeastLoaded},
		{name: "loaded beats cold", installed: [3][]string{{"m"}, {"m"}, {"m"}}, loaded: [3][]string{nil, nil, {"m"}}, model: "m", wantIn: []int{2}, wantReason: ReasonLoaded},
		{name: "tag normalised", installed: [3][]string{{"m:latest"}, {"x"}, {"x"}}, loaded: [3][]string{{"m"}}, model: "M", wantIn: []int{0}, wantReason: ReasonLoaded},
		{name: "installed nowhere", installed: [3][]string{{"x"}, {"y"}, {"z"}}, model: "m", wantErr: ErrModelNotFound},
		{name: "saturated warm spills to cold", installed: [3][]string{{"m"}, {"m"}, {"x"}}, loaded: [3][]string{{"m"}}, busyOn: map[int]int{0: 4}, model: "m", wantIn: []int{1}, wantReason: ReasonLeastLoaded},
		{name: "saturated warm kept without a cold choice", installed: [3][]string{{"m"}, {"x"}, {"x"}}, loaded: [3][]string{{"m"}}, busyOn: map[int]int{0: 9}, model: "m", wantIn: []int{0}, wantReason: ReasonLoaded},
		{name: "warm and under the threshold", installed: [3][]string{{"m"}, {"m"}, {"m"}}, loaded: [3][]string{{"m"}, {"m"}}, busyOn: map[int]int{0: 3}, model: "m", wantIn: []int{0, 1}, wantReason: ReasonLoaded},
		{name: "no model: any", installed: [3][]string{{"x"}, {"y"}, {"z"}}, model: "", wantIn: []int{0, 1, 2}, wantReason: ReasonLeastLoaded},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := testFleet(t, Config{}, 1, 1, 1)
			for i, b := range f.Backends() {
				setCatalogue(b, tt.installed[i], tt.loaded[i])
				for range tt.busyOn[i] {
					b.Start("m")
				}
			}
			b, reason, err := f.Pick(Request{Model: tt.model, NeedModel: true, Inference: true})
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			ok := false
			for _, i := range tt.wantIn {
				ok = ok || b == f.Backends()[i]
			}
			if !ok || reason != tt.wantReason {
				t.Fatalf("picked %s (%s), want one of %v (%s)", b.Name, reason, tt.wantIn, tt.wantReason)
			}
		})
	}
}

func TestPickColdLoadEvictsNoModelInUse(t *testing.T) {
	f := testFleet(t, Config{}, 1, 1)
	warm, other := f.Backends()[0], f.Backends()[1]
	setCatalogue(warm, []string{"m", "n"}, []string{"m"})
	setCatalogue(other, []string{"m", "n"}, []string{"n"})
	other.cat.maxLoaded.Store(1) // other holds one model at a time
	for range 5 {
		warm.Start("m") // m saturated on warm
	}
	busyN := other.Start("n") // n in use on other
	if b, _, _ := f.Pick(Request{Model: "m", NeedModel: true, Inference: true}); b != warm {
		t.Fatalf("picked %s: loading m there would evict n while in use; want the warm %s", b.Name, warm.Name)
	}
	busyN.End(Success, 0) // n idle now: evicting it delays nobody
	b, _, _ := f.Pick(Request{Model: "m", NeedModel: true, Inference: true})
	if b != other {
		t.Fatalf("picked %s, want %s (n idle)", b.Name, other.Name)
	}
	// The load evicts n there: the view says so before any refresh.
	if got := other.Loaded(); len(got) != 1 || got[0] != "m:latest" {
		t.Fatalf("loaded on %s: %v, want [m:latest]", other.Name, got)
	}
}

func TestAffinityKeepsConversationAtLowLoad(t *testing.T) {
	f := testFleet(t, Config{}, 1, 1, 1)
	key := Conversation{Key: 7, Continues: true}
	home := f.affinity(f.cur.Load(), all(f), key)
	home.Start("m")
	home.Start("m") // two in flight, the others idle: under saturated_at (4)
	if got := f.affinity(f.cur.Load(), all(f), key); got != home {
		t.Fatalf("conversation moved to %s at 2 outstanding", got.Name)
	}
}

func TestPickUnknownCatalogueForwards(t *testing.T) {
	f := testFleet(t, Config{}, 1, 1)
	setCatalogue(f.Backends()[0], []string{"x"}, nil)
	// b1's catalogue is not known yet: the request may go there.
	b, _, err := f.Pick(Request{Model: "m", NeedModel: true, Inference: true})
	if err != nil || b != f.Backends()[1] {
		t.Fatalf("got %v, %v; want b1", b, err)
	}
}

func TestPickColdLoadConcentrates(t *testing.T) {
	// A model loaded nowhere is loaded on one backend, and the requests
	// that follow while it loads go there too.
	f := testFleet(t, Config{}, 1, 1, 1)
	for _, b := range f.Backends() {
		setCatalogue(b, []string{"m"}, nil)
	}
	first, _, _ := f.Pick(Request{Model: "m", NeedModel: true, Inference: true})
	first.Start("m")
	// Past saturated_at too: while the load is under way, a second load
	// elsewhere would serve the queue no sooner.
	for range 6 {
		b, reason, _ := f.Pick(Request{Model: "m", NeedModel: true, Inference: true})
		if b != first || reason != ReasonLoaded {
			t.Fatalf("picked %s (%s), want %s (loaded)", b.Name, reason, first.Name)
		}
		b.Start("m")
	}
}

func TestPickSkipsTriedBrokenAndBusy(t *testing.T) {
	f := testFleet(t, Config{BreakerFailures: 2}, 1, 1, 1)
	bs := f.Backends()
	for _, b := range bs {
		setCatalogue(b, []string{"m"}, []string{"m"})
	}
	// b0 fails twice: its breaker opens.
	for range 2 {
		bs[0].Start("m").End(Failure, 0)
	}
	bs[1].Start("m").End(Busy, 0)
	for range 20 {
		b, _, err := f.Pick(Request{Model: "m", NeedModel: true, Inference: true})
		if err != nil || b != bs[2] {
			t.Fatalf("got %v, %v; want b2 (b0 broken, b1 busy)", b, err)
		}
	}
	// With b2 tried, the busy one is the last resort; the reason says failover.
	b, reason, err := f.Pick(Request{Model: "m", NeedModel: true, Tried: bs[2].Bit()})
	if err != nil || b != bs[1] || reason != ReasonFailover {
		t.Fatalf("got %v %s %v; want b1 failover", b, reason, err)
	}
	if _, _, err := f.Pick(Request{Model: "m", Tried: bs[1].Bit() | bs[2].Bit()}); !errors.Is(err, ErrNoBackend) {
		t.Fatalf("err = %v, want ErrNoBackend", err)
	}
}

func TestBreakerBackoffAndProbe(t *testing.T) {
	cfg := Config{BreakerFailures: 1, BreakerBackoff: time.Second, BreakerMaxBackoff: 4 * time.Second}.withDefaults()
	var br breaker
	now := time.Unix(1000, 0)
	steps := []struct {
		what     string
		at       time.Duration
		ok       bool
		wantOpen bool
	}{
		{"failure opens", 0, false, true},
		{"good probe inside the back-off: still open", 500 * time.Millisecond, true, true},
		{"failed probe after it: reopened for 2 s", 1100 * time.Millisecond, false, true},
		{"good probe at +2.5 s: still inside 2 s from 1.1", 2500 * time.Millisecond, true, true},
		{"good probe after: closed", 3200 * time.Millisecond, true, false},
	}
	for i, s := range steps {
		at := now.Add(s.at)
		if i == 0 {
			br.failure(&cfg, at)
		} else {
			br.probed(&cfg, s.ok, at)
		}
		if got := br.open.Load(); got != s.wantOpen {
			t.Fatalf("%s: open = %v, want %v", s.what, got, s.wantOpen)
		}
	}
	if got := br.state().Opens; got != 2 {
		t.Fatalf("opens = %d, want 2", got)
	}
}

func TestAffinitySameAcrossReplicasAndBounded(t *testing.T) {
	a := testFleet(t, Config{}, 1, 1, 1)
	b := testFleet(t, Config{}, 1, 1, 1) // another replica: same names, no shared state
	counts := map[string]int{}
	for k := uint64(1); k <= 3000; k++ {
		x, y := a.affinity(a.cur.Load(), all(a), Conversation{Key: k}), b.affinity(b.cur.Load(), all(b), Conversation{Key: k})
		if x.Name != y.Name {
			t.Fatalf("key %d: replicas disagree: %s vs %s", k, x.Name, y.Name)
		}
		counts[x.Name]++
	}
	for name, n := range counts {
		if n < 800 || n > 1200 {
			t.Fatalf("%s got %d of 3000 keys, want about 1000", name, n)
		}
	}
	// The key's backend is passed over once it carries more than its
	// bounded share.
	key := Conversation{Key: 42, Continues: true}
	home := a.affinity(a.cur.Load(), all(a), key)
	for range 10 {
		home.Start("m")
	}
	if got := a.affinity(a.cur.Load(), all(a), key); got == home {
		t.Fatalf("key stayed on %s with 10 outstanding and the others idle", home.Name)
	}
}

func TestAffinityFollowsWeight(t *testing.T) {
	f := testFleet(t, Config{}, 1, 3)
	counts := map[string]int{}
	for k := uint64(1); k <= 4000; k++ {
		counts[f.affinity(f.cur.Load(), all(f), Conversation{Key: k}).Name]++
	}
	if n := counts["b1"]; n < 2700 || n > 3300 {
		t.Fatalf("weight 3 of 4 got %d of 4000 keys", n)
	}
}

func TestRoundRobinByWeight(t *testing.T) {
	f := testFleet(t, Config{Policy: PolicyRoundRobin}, 1, 2)
	counts := map[string]int{}
	for range 300 {
		b, reason, err := f.Pick(Request{})
		if err != nil || reason != ReasonRoundRobin {
			t.Fatal(err, reason)
		}
		counts[b.Name]++
	}
	if counts["b0"] != 100 || counts["b1"] != 200 {
		t.Fatalf("counts = %v, want 100/200", counts)
	}
}

func TestSingleBackendAlwaysChosen(t *testing.T) {
	f := testFleet(t, Config{}, 1)
	setCatalogue(f.First(), []string{"x"}, nil)
	b, reason, err := f.Pick(Request{Model: "m", NeedModel: true, Inference: true})
	if err != nil || b != f.First() || reason != ReasonOnly {
		t.Fatalf("got %v %s %v; want the only backend", b, reason, err)
	}
}

func TestNewRejects(t *testing.T) {
	p1, _ := pool.New(pool.UpstreamConfig{URL: "http://127.0.0.1:1"}, pool.Config{})
	p2, _ := pool.New(pool.UpstreamConfig{URL: "http://127.0.0.1:2"}, pool.Config{})
	p1again, _ := pool.New(pool.UpstreamConfig{URL: "http://127.0.0.1:1/"}, pool.Config{})
	tests := []struct {
		name    string
		cfg     Config
		members []Member
		want    string
	}{
		{"none", Config{}, nil, "no backend"},
		{"duplicate name", Config{}, []Member{{Name: "a", Pool: p1}, {Name: "a", Pool: p2}}, "used twice"},
		{"duplicate url", Config{}, []Member{{Pool: p1}, {Name: "b", Pool: p1again}}, "url"},
		{"negative weight", Config{}, []Member{{Pool: p1, Weight: -1}}, "weight"},
		{"bad name", Config{}, []Member{{Name: "a b", Pool: p1}}, "name"},
		{"bad policy", Config{Policy: "random"}, []Member{{Pool: p1}}, "routing.policy"},
		{"load factor below 1", Config{AffinityLoadFactor: 0.5}, []Member{{Pool: p1}}, "routing.affinity_load_factor"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.cfg, tt.members)
			if err == nil || !contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want one naming %q", err, tt.want)
			}
		})
	}
}

func contains(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}

// TestConcurrentPicksAndRefreshes races picks, tickets and catalogue
// changes (run under -race): no lock is held across them and the counters
// end at zero.
func TestConcurrentPicksAndRefreshes(t *testing.T) {
	f := testFleet(t, Config{}, 1, 1, 1)
	for _, b := range f.Backends() {
		setCatalogue(b, []string{"m", "n"}, []string{"m"})
	}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for _, b := range f.Backends() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				switch i % 3 {
				case 0:
					setCatalogue(b, []string{"m", "n"}, []string{"n"})
				case 1:
					b.cat.noteLoaded("m")
				case 2:
					b.cat.noteMissing("n")
				}
				_ = b.Snapshot()
			}
		}()
	}
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 2000 {
				model := []string{"m", "n"}[i%2]
				b, _, err := f.Pick(Request{Model: model, Conversation: Conversation{Key: uint64(g*1000 + i%7 + 1)}, NeedModel: true, Inference: true})
				if err != nil {
					continue // n may be missing everywhere for a moment
				}
				b.Start(model).End(Result(i%5), time.Duration(i%3)*time.Second)
			}
		}()
	}
	time.Sleep(200 * time.Millisecond)
	close(stop)
	wg.Wait()
	for _, b := range f.Backends() {
		if n := b.Outstanding(); n != 0 {
			t.Fatalf("%s: %d outstanding after all tickets ended", b.Name, n)
		}
	}
}

// all is the set of every backend of f.
func all(f *Fleet) set { return set(1)<<f.Len() - 1 }

func TestPickBurstLoadsOnce(t *testing.T) {
	for range 50 {
		f := testFleet(t, Config{}, 1, 1, 1)
		for _, b := range f.Backends() {
			setCatalogue(b, []string{"m"}, nil)
		}
		var wg sync.WaitGroup
		got := make([]*Backend, 6)
		for i := range got {
			wg.Add(1)
			go func() {
				defer wg.Done()
				got[i], _, _ = f.Pick(Request{Model: "m", NeedModel: true, Inference: true})
			}()
		}
		wg.Wait()
		for _, b := range got[1:] {
			if b != got[0] {
				t.Fatalf("a burst for a model loaded nowhere went to %s and %s", got[0].Name, b.Name)
			}
		}
	}
}
