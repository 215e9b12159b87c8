// Command soak runs mixed streaming and non-streaming load, with faults
// injected on a schedule, through an in-process gateway in front of the fake
// Ollama, then reports resources and per-fault outcomes (RELIABILITY.md §5
// S-1). It exits 1 if a request was lost, duplicated or misreported, if the
// access log does not hold exactly one line per request, or if goroutines or
// open fds do not return to their baseline.
//
// Usage:
//
//	go run ./soak [-duration 30m] [-concurrency 50] [-seed 1] [-report FILE]
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime/pprof"
	"time"

	"github.com/rs/zerolog"

	"github.com/vega-gateway/vega-gateway/access"
	"github.com/vega-gateway/vega-gateway/fleet"
	"github.com/vega-gateway/vega-gateway/gateway"
	"github.com/vega-gateway/vega-gateway/ollamatest"
	"github.com/vega-gateway/vega-gateway/pool"
)

// Settings of the system under test (the brief's "realistic" values).
const (
	tokenDelay       = 10 * time.Millisecond // fake's pause between frames
	maxTokens        = 100                   // fake's default reply length
	firstByteTimeout = 3 * time.Second
	upstreamIdle     = 2 * time.Second
	settle           = 5 * time.Second  // wait after the load before the first leak check
	settleMore       = 20 * time.Second // then poll this much longer (fasthttp idle workers live 10–20 s)
	settlePoll       = 250 * time.Millisecond
	goroutineSlack   = 10
	fdSlack          = 5
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

type options struct {
	duration    time.Duration
	concurrency int
	seed        int64
	report      string
	keepLogs    bool
	// goroutineDump, if set, receives the goroutine profile at the end.
	goroutineDump string
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("soak", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o options
	fs.DurationVar(&o.duration, "duration", 2*time.Minute, "how long to run the load")
	fs.IntVar(&o.concurrency, "concurrency", 50, "concurrent client workers")
	fs.Int64Var(&o.seed, "seed", 1, "seed of the request mix")
	fs.StringVar(&o.report, "report", "", "also write the report as markdown to this file")
	fs.StringVar(&o.goroutineDump, "goroutines", "", "write the goroutines left at the end to this file")
	fs.BoolVar(&o.keepLogs, "keep-logs", false, "keep the temp dir with the gateway log")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if o.duration <= 0 || o.concurrency <= 0 {
		fmt.Fprintln(stderr, "soak: -duration and -concurrency must be positive")
		return 2
	}
	rep, err := soak(o, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "soak: %v\n", err)
		return 1
	}
	text := rep.text()
	fmt.Fprint(stdout, text)
	if o.report != "" {
		if err := os.WriteFile(o.report, []byte(rep.markdown()), 0o644); err != nil {
			fmt.Fprintf(stderr, "soak: write report: %v\n", err)
			return 1
		}
	}
	if len(rep.failures) > 0 {
		return 1
	}
	return 0
}

// env is the system under test: the fake, the pool and the gateway.
type env struct {
	fake    *ollamatest.Server
	pool    *pool.Pool
	gw      *gateway.Gateway
	url     string
	logPath string
	logFile *os.File
	dir     string
	served  chan struct{}
	health  context.CancelFunc
}

func start() (*env, error) {
	dir, err := os.MkdirTemp("", "vega-soak-")
	if err != nil {
		return nil, err
	}
	e := &env{dir: dir, logPath: filepath.Join(dir, "gateway.log"), served: make(chan struct{})}
	e.logFile, err = os.Create(e.logPath)
	if err != nil {
		return nil, err
	}
	e.fake, err = ollamatest.NewServer(ollamatest.Config{TokenDelay: tokenDelay, Tokens: maxTokens})
	if err != nil {
		return nil, err
	}
	e.pool, err = pool.New(
		pool.UpstreamConfig{URL: e.fake.URL(), FirstByteTimeout: firstByteTimeout, IdleTimeout: upstreamIdle},
		pool.Config{MaxConnections: 64, MaxWait: 2 * time.Second, MaxIdleConnDuration: upstreamIdle},
	)
	if err != nil {
		return nil, err
	}
	log := zerolog.New(zerolog.SyncWriter(e.logFile)).Level(zerolog.InfoLevel).With().Timestamp().Logger()
	e.gw, err = gateway.New(gateway.Config{}, gateway.ChatConfig{}, access.Config{}, fleet.Single(e.pool), log)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	e.url = "http://" + ln.Addr().String()
	go func() { defer close(e.served); _ = e.gw.Serve(ln) }()
	hctx, cancel := context.WithCancel(context.Background())
	e.health = cancel
	probed := make(chan struct{}, 1)
	go e.pool.RunHealth(hctx, func(pool.HealthChange) {
		select {
		case probed <- struct{}{}:
		default:
		}
	})
	select {
	case <-probed:
	case <-time.After(3 * time.Second):
	}
	return e, nil
}

// stop shuts everything down, each step bounded.
func (e *env) stop(keep bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = e.gw.Shutdown(ctx)
	e.health()
	e.pool.Close()
	select {
	case <-e.served:
	case <-time.After(5 * time.Second):
	}
	_ = e.fake.Close()
	_ = e.logFile.Close()
	if !keep {
		_ = os.RemoveAll(e.dir)
	}
}

// soak runs the whole thing and returns the report.
func soak(o options, stderr io.Writer) (*report, error) {
	e, err := start()
	if err != nil {
		return nil, fmt.Errorf("start: %w", err)
	}
	defer e.stop(o.keepLogs)
	fmt.Fprintf(stderr, "soak: gateway %s, fake %s, log %s; %s at concurrency %d, seed %d\n",
		e.url, e.fake.URL(), e.logPath, o.duration, o.concurrency, o.seed)

	smp := newSampler()
	base := smp.sample()
	sctx, stopSampling := context.WithCancel(context.Background())
	sampled := make(chan struct{})
	go func() { defer close(sampled); smp.run(sctx, time.Second) }()

	ld := newLoad(e.url, o.concurrency, o.seed)
	began := time.Now()
	ld.run(o.duration, stderr)
	elapsed := time.Since(began)

	ld.client.CloseIdleConnections()
	time.Sleep(settle)
	end5 := smp.sample()
	// fasthttp keeps idle server workers up to 2 × MaxIdleWorkerDuration (10 s by
	// default), so poll a while longer before calling it a leak.
	end, settledAfter := end5, settle
	for wait := time.Now().Add(settleMore); time.Now().Before(wait) && !withinSlack(base, end); settledAfter += settlePoll {
		time.Sleep(settlePoll)
		end = smp.sample()
	}
	stopSampling()
	<-sampled
	if o.goroutineDump != "" {
		if f, err := os.Create(o.goroutineDump); err == nil {
			_ = pprof.Lookup("goroutine").WriteTo(f, 1)
			_ = f.Close()
		}
	}

	rep := &report{opts: o, elapsed: elapsed, base: base, end5: end5, end: end, settledAfter: settledAfter, warmRSS: smp.rssAt(1.0 / 6), peak: smp.peakValues(), load: ld, fake: e.fake.Stats()}
	rep.logs, err = readAccessLog(e.logPath)
	if err != nil {
		return nil, err
	}
	rep.judge()
	return rep, nil
}

// withinSlack reports whether goroutines and fds are back near the baseline.
func withinSlack(base, now resources) bool {
	return now.goroutines <= base.goroutines+goroutineSlack && now.fds <= base.fds+fdSlack
}
