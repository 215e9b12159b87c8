package main

import (
	"bytes"
	"context"
	"os"
	"runtime"
	"strconv"
	"sync"
	"time"
)

// resources is one sample of the process's footprint. Fake, gateway and
// clients share the process, so fds count both ends of every loopback socket.
type resources struct {
	rssBytes   int64
	goroutines int
	fds        int
}

// sampler keeps the peak of each resource over its samples.
type sampler struct {
	mu      sync.Mutex
	peak    resources
	n       int
	rssSeen []int64 // one per sample, for the growth line of the report
}

func newSampler() *sampler { return &sampler{} }

// sample reads the current values and folds them into the peaks.
func (s *sampler) sample() resources {
	r := resources{rssBytes: rss(), goroutines: runtime.NumGoroutine(), fds: openFDs()}
	s.mu.Lock()
	s.peak.rssBytes = max(s.peak.rssBytes, r.rssBytes)
	s.peak.goroutines = max(s.peak.goroutines, r.goroutines)
	s.peak.fds = max(s.peak.fds, r.fds)
	s.rssSeen = append(s.rssSeen, r.rssBytes)
	s.n++
	s.mu.Unlock()
	return r
}

// run samples every interval until ctx is done.
func (s *sampler) run(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.sample()
		}
	}
}

func (s *sampler) peakValues() resources {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.peak
}

// rssAt returns the RSS sampled at fraction f (0..1) of the run.
func (s *sampler) rssAt(f float64) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.rssSeen) == 0 {
		return 0
	}
	return s.rssSeen[int(f*float64(len(s.rssSeen)-1))]
}

// rss reads the resident set size from /proc/self/statm (second field, pages).
func rss() int64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return -1
	}
	f := bytes.Fields(b)
	if len(f) < 2 {
		return -1
	}
	pages, err := strconv.ParseInt(string(f[1]), 10, 64)
	if err != nil {
		return -1
	}
	return pages * int64(os.Getpagesize())
}

// openFDs counts /proc/self/fd, less the one used to read it.
func openFDs() int {
	d, err := os.Open("/proc/self/fd")
	if err != nil {
		return -1
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return -1
	}
	return len(names) - 1
}
