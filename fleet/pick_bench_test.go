package fleet

import (
	"sync"
	"testing"
)

// TestPickAllocationFree: choosing costs no memory while membership
// changes: the views (all three backends, and two of them) are built
// beforehand, since AllocsPerRun counts every goroutine's allocations, and
// swapped as publish does. (A model named without a tag costs its
// ":latest" string, in NormalizeModel.)
func TestPickAllocationFree(t *testing.T) {
	f := testFleet(t, Config{}, 1, 1, 1)
	for _, b := range f.Backends() {
		setCatalogue(b, []string{"m"}, []string{"m"})
	}
	three := f.cur.Load()
	two := &view{list: three.list[:2], byName: map[string]*Backend{}}
	for _, b := range two.list {
		two.slot[b.slot], two.byName[b.Name] = b, b
	}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if i%2 == 0 {
				f.cur.Store(two)
			} else {
				f.cur.Store(three)
			}
		}
	}()
	r := Request{Model: "m:latest", NeedModel: true, Inference: true, Conversation: Conversation{Key: 42}}
	allocs := testing.AllocsPerRun(1000, func() {
		if _, _, err := f.Pick(r); err != nil {
			t.Fatal(err)
		}
	})
	close(stop)
	wg.Wait()
	if allocs != 0 {
		t.Errorf("Pick allocates %v times, want 0", allocs)
	}
}

// BenchmarkPick is one choice among three warm backends.
func BenchmarkPick(b *testing.B) {
	f := testFleet(b, Config{}, 1, 1, 1)
	for _, bk := range f.Backends() {
		setCatalogue(bk, []string{"m"}, []string{"m"})
	}
	r := Request{Model: "m:latest", NeedModel: true, Inference: true, Conversation: Conversation{Key: 42}}
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := f.Pick(r); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPickSingle is the one-backend path: no choice.
func BenchmarkPickSingle(b *testing.B) {
	f := testFleet(b, Config{}, 1)
	r := Request{Model: "m:latest", NeedModel: true, Inference: true}
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := f.Pick(r); err != nil {
			b.Fatal(err)
		}
	}
}
