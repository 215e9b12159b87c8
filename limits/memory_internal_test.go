package limits

import (
	"fmt"
	"testing"
	"time"
)

// TestMemBackendsForgetIdle: the in-process per-backend counts keep no
// entry for a backend with nothing in flight, so backends that discovery
// brought and took away (one name per pod IP) take no room.
func TestMemBackendsForgetIdle(t *testing.T) {
	s := newMemStore(time.Now)
	for i := range 100 {
		name := fmt.Sprintf("10.0.0.%d:11434", i)
		for range 2 {
			if d, err := s.acquireBackend(name, 2, ""); err != nil || !d.OK() {
				t.Fatalf("%s: %v %v", name, d, err)
			}
		}
		if d, _ := s.acquireBackend(name, 2, ""); d.OK() {
			t.Fatalf("%s: a third request admitted over a bound of 2", name)
		}
		for range 2 {
			if err := s.releaseBackend(name, ""); err != nil {
				t.Fatal(err)
			}
		}
	}
	if n := len(s.backends); n != 0 {
		t.Fatalf("%d idle backends still held", n)
	}
}
