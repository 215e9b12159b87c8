package main

import (
	"slices"
	"time"
)

// pct returns the q-quantile (0..1) of sorted durations, 0 for none.
func pct(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q * float64(len(sorted)-1))
	return sorted[i]
}

// median returns the median of xs (the lower middle for an even count).
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[(len(s)-1)/2]
}

// result is one target's numbers for one case in one run. Fields that do
// not apply to the case stay zero.
type result struct {
	// non-streaming
	rps           float64
	cpuPerReq     float64 // µs of the target's CPU (user + system) per request; -1: unknown
	p50, p90, p99 time.Duration
	// streaming
	cpuPerFrame    float64 // µs of the target's CPU per frame relayed; -1: unknown
	ttfc50, ttfc99 time.Duration
	gap50, gap99   time.Duration
	gapMax         time.Duration
	stalls         int
	streams        int
	// scale (-1: does not apply to the target)
	peakConc     int     // most streams open at once
	rssPeakMB    float64 // the target's process(es) at peak
	rssPerStream float64 // KiB: (peak - idle) / streams
	gorPerStream float64 // goroutines: (peak - idle) / streams
	// non-streaming and streaming, with -syscalls: per request or frame
	syscalls *syscallCounts
	// all
	failed int
	errMsg string // the first failure, for the log
}

// metric names one number of a result, for the table and for medians.
type metric struct {
	name    string
	get     func(r result) float64
	dur     bool // a duration in ns, printed in ms
	added   bool // also print the difference to direct
	ratio   bool // also print the ratio to direct
	integer bool
	prec    int  // decimals of a plain number
	na      bool // a negative value means "does not apply": print –
}

var nonStreamMetrics = []metric{
	{name: "req/s", get: func(r result) float64 { return r.rps }, ratio: true},
	{name: "CPU µs/req", get: func(r result) float64 { return r.cpuPerReq }, prec: 1, na: true},
	{name: "p50", get: func(r result) float64 { return float64(r.p50) }, dur: true, added: true},
	{name: "p90", get: func(r result) float64 { return float64(r.p90) }, dur: true, added: true},
	{name: "p99", get: func(r result) float64 { return float64(r.p99) }, dur: true, added: true},
	{name: "failed", get: func(r result) float64 { return float64(r.failed) }, integer: true},
}

var streamMetrics = []metric{
	{name: "streams", get: func(r result) float64 { return float64(r.streams) }, integer: true},
	{name: "CPU µs/frame", get: func(r result) float64 { return r.cpuPerFrame }, prec: 1, na: true},
	{name: "TTFC p50", get: func(r result) float64 { return float64(r.ttfc50) }, dur: true, added: true},
	{name: "TTFC p99", get: func(r result) float64 { return float64(r.ttfc99) }, dur: true, added: true},
	{name: "gap p50", get: func(r result) float64 { return float64(r.gap50) }, dur: true, added: true},
	{name: "gap p99", get: func(r result) float64 { return float64(r.gap99) }, dur: true, added: true},
	{name: "gap max", get: func(r result) float64 { return float64(r.gapMax) }, dur: true},
	{name: "stalls", get: func(r result) float64 { return float64(r.stalls) }, integer: true},
	{name: "failed", get: func(r result) float64 { return float64(r.failed) }, integer: true},
}

var scaleMetrics = []metric{
	{name: "streams ok", get: func(r result) float64 { return float64(r.streams) }, integer: true},
	{name: "peak concurrent", get: func(r result) float64 { return float64(r.peakConc) }, integer: true},
	{name: "failed", get: func(r result) float64 { return float64(r.failed) }, integer: true},
	{name: "TTFC p50", get: func(r result) float64 { return float64(r.ttfc50) }, dur: true, added: true},
	{name: "TTFC p99", get: func(r result) float64 { return float64(r.ttfc99) }, dur: true, added: true},
	{name: "gap p50", get: func(r result) float64 { return float64(r.gap50) }, dur: true, added: true},
	{name: "gap p99", get: func(r result) float64 { return float64(r.gap99) }, dur: true, added: true},
	{name: "stalls", get: func(r result) float64 { return float64(r.stalls) }, integer: true},
	{name: "peak RSS MiB", get: func(r result) float64 { return r.rssPeakMB }, prec: 1, na: true},
	{name: "RSS/stream KiB", get: func(r result) float64 { return r.rssPerStream }, prec: 1, na: true},
	{name: "goroutines/stream", get: func(r result) float64 { return r.gorPerStream }, prec: 2, na: true},
}
