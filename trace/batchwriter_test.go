package trace

import (
	"bytes"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// gatedSink records every Write; while gate is set, each Write first
// waits for it, so a test can hold the drain goroutine inside a write.
type gatedSink struct {
	mu      sync.Mutex
	writes  [][]byte
	entered chan struct{}
	gate    chan struct{}
}

func newGatedSink() *gatedSink {
	return &gatedSink{entered: make(chan struct{}, 100), gate: make(chan struct{})}
}

func (s *gatedSink) Write(p []byte) (int, error) {
	select {
	case s.entered <- struct{}{}:
	default: // nobody is waiting for it
	}
	<-s.gate
	s.mu.Lock()
	s.writes = append(s.writes, bytes.Clone(p))
	s.mu.Unlock()
	return len(p), nil
}

func (s *gatedSink) all() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return string(bytes.Join(s.writes, nil))
}

func TestBatchWriterKeepsEveryLineInOrder(t *testing.T) {
	sink := newGatedSink()
	close(sink.gate)
	var dropped atomic.Int64
	w := NewBatchWriter(sink, 100000, func(n int) { dropped.Add(int64(n)) })
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 1000 {
				fmt.Fprintf(w, "{\"g\":%d,\"i\":%d}\n", g, i)
			}
		}()
	}
	wg.Wait()
	w.Close()
	lines := strings.Split(strings.TrimSuffix(sink.all(), "\n"), "\n")
	if len(lines) != 8000 || dropped.Load() != 0 {
		t.Fatalf("got %d lines, %d dropped; want 8000, 0", len(lines), dropped.Load())
	}
	next := make([]int, 8)
	for _, l := range lines {
		var g, i int
		if _, err := fmt.Sscanf(l, "{\"g\":%d,\"i\":%d}", &g, &i); err != nil || i != next[g] {
			t.Fatalf("line %q out of order or torn (want i=%d)", l, next[g])
		}
		next[g]++
	}
	if len(sink.writes) >= 8000 {
		t.Logf("no batching happened (%d writes); allowed, but unexpected", len(sink.writes))
	}
}

func TestBatchWriterDropsWhenFullAndAfterClose(t *testing.T) {
	sink := newGatedSink()
	var dropped atomic.Int64
	w := NewBatchWriter(sink, 10, func(n int) { dropped.Add(int64(n)) })
	fmt.Fprintln(w, "first")
	<-sink.entered // the drain goroutine now holds "first" and waits on the sink
	for i := range 15 {
		fmt.Fprintln(w, "queued", i)
	}
	if got := dropped.Load(); got != 5 {
		t.Fatalf("dropped %d lines with the queue full, want 5", got)
	}
	close(sink.gate)
	w.Close()
	fmt.Fprintln(w, "after close")
	if got := strings.Count(sink.all(), "\n"); got != 11 {
		t.Errorf("sink got %d lines, want 11 (first + 10 queued)", got)
	}
	if got := dropped.Load(); got != 6 {
		t.Errorf("dropped %d, want 6 (5 over the bound, 1 after Close)", got)
	}
	w.Close() // twice is fine
}

func TestBatchWriterCutsBigBatchesAtLineEnds(t *testing.T) {
	sink := newGatedSink()
	w := NewBatchWriter(sink, 1<<20, nil)
	fmt.Fprintln(w, "first")
	<-sink.entered
	line := strings.Repeat("x", 999) + "\n"
	for range 1000 { // ~1 MB queued behind the held write
		w.Write([]byte(line))
	}
	close(sink.gate)
	w.Close()
	for i, p := range sink.writes {
		if len(p) > maxWriteBytes || !bytes.HasSuffix(p, []byte("\n")) {
			t.Fatalf("write %d: %d bytes, ends %q", i, len(p), p[len(p)-1:])
		}
	}
	if got := strings.Count(sink.all(), line); got != 1000 {
		t.Errorf("%d whole lines arrived, want 1000", got)
	}
}

func TestLineWriter(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
	}{
		{"a\nb\n", []string{"a\n", "b\n"}},
		{"one\n", []string{"one\n"}},
		{"no newline", []string{"no newline"}},
		{"", nil},
	} {
		var got []string
		n, err := LineWriter{W: writerFunc(func(p []byte) (int, error) { got = append(got, string(p)); return len(p), nil })}.Write([]byte(tc.in))
		if err != nil || n != len(tc.in) || fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("%q: wrote %q (n=%d, err=%v), want %q", tc.in, got, n, err, tc.want)
		}
	}
}

type writerFunc func(p []byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// TestBatchWriterWritesAtMostOncePerInterval: lines arriving steadily go
// out in at most one write per WriteInterval, all of them, in order.
func TestBatchWriterWritesAtMostOncePerInterval(t *testing.T) {
	sink := newGatedSink()
	close(sink.gate)
	w := NewBatchWriter(sink, 100000, nil)
	start := time.Now()
	n := 0
	for time.Since(start) < 20*WriteInterval {
		fmt.Fprintf(w, "%d\n", n)
		n++
		time.Sleep(50 * time.Microsecond)
	}
	elapsed := time.Since(start)
	w.Close()
	sink.mu.Lock()
	writes := len(sink.writes)
	sink.mu.Unlock()
	// The first line goes out at once, then one write per interval at
	// most, and Close's.
	if limit := int(elapsed/WriteInterval) + 2; writes > limit {
		t.Errorf("%d writes for %d lines in %v, want at most %d", writes, n, elapsed, limit)
	}
	want := make([]string, n)
	for i := range want {
		want[i] = fmt.Sprint(i)
	}
	if got := strings.TrimSuffix(sink.all(), "\n"); got != strings.Join(want, "\n") {
		t.Errorf("lines lost or out of order: %d written, output %d bytes", n, len(got))
	}
}
