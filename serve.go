package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"github.com/valyala/fasthttp"

	"github.com/vega-gateway/vega-gateway/access"
	"github.com/vega-gateway/vega-gateway/admin"
	"github.com/vega-gateway/vega-gateway/cache"
	"github.com/vega-gateway/vega-gateway/fleet"
	"github.com/vega-gateway/vega-gateway/gateway"
	"github.com/vega-gateway/vega-gateway/limits"
	"github.com/vega-gateway/vega-gateway/ollamatest"
	"github.com/vega-gateway/vega-gateway/otelx"
	"github.com/vega-gateway/vega-gateway/pool"
)

func serveCommand(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "config file (default ./config.yaml if present)")
	demo := fs.Bool("demo", false, "start three built-in fake Ollama servers (gpu-a, gpu-b, gpu-c) on loopback ports and use them as the upstreams")
	logLevel := fs.String("log-level", "", "override log.level")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	overrides := map[string]any{}
	if *logLevel != "" {
		overrides["log.level"] = *logLevel
	}
	var demoFleet []demoBackend
	if *demo {
		var err error
		if demoFleet, err = startDemo(); err != nil {
			fmt.Fprintf(stderr, "vega-gateway: demo backends: %v\n", err)
			return 1
		}
		defer func() {
			for _, d := range demoFleet {
				d.fake.Close()
			}
		}()
		upstreams := make([]map[string]any, len(demoFleet))
		for i, d := range demoFleet {
			upstreams[i] = map[string]any{"name": d.name, "url": d.fake.URL()}
		}
		overrides["upstreams"] = upstreams
		overrides["upstream.url"] = pool.DefaultURL // the demo backends replace any configured upstream
	}
	cfg, err := loadConfig(*configPath, overrides, os.Environ())
	if err != nil {
		fmt.Fprintf(stderr, "vega-gateway: %v\n", err)
		return 1
	}
	log, sink := newLogger(cfg.Log, stdout, stderr)
	defer sink.Close()
	for _, d := range demoFleet {
		log.Info().Str("backend", d.name).Str("upstream", d.fake.URL()).Strs("models", d.models).
			Msg("demo mode: serving a built-in fake Ollama")
	}
	app, err := newApp(cfg, log, sink)
	if err != nil {
		fmt.Fprintf(stderr, "vega-gateway: %v\n", err)
		return 1
	}
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	return app.run(sigs, hup)
}

// demoBackend is one of serve --demo's fake Ollama servers.
type demoBackend struct {
	name   string
	models []string
	fake   *ollamatest.Server // set by startDemo
}

// demoBackends: each fake has other models installed, holds one model
// loaded at a time and runs two requests per model at once, so routing by
// model, warmth and load shows from the first request.
var demoBackends = []demoBackend{
	{name: "gpu-a", models: []string{"llama3.2", "qwen2.5:0.5b"}},
	{name: "gpu-b", models: []string{"llama3.2", "nomic-embed-text"}},
	{name: "gpu-c", models: []string{"qwen2.5:0.5b", "nomic-embed-text"}},
}

// startDemo starts the demo backends on free loopback ports; on error none
// is left running.
func startDemo() ([]demoBackend, error) {
	var out []demoBackend
	for _, d := range demoBackends {
		fake, err := ollamatest.NewServer(ollamatest.Config{
			Models: d.models,
			Scheduler: &ollamatest.SchedulerConfig{
				NumParallel: 2, MaxLoadedModels: 1, LoadTime: 1500 * time.Millisecond, PromptTokenTime: 200 * time.Microsecond,
			},
			TokenDelay: 20 * time.Millisecond,
		})
		if err != nil {
			for _, o := range out {
				o.fake.Close()
			}
			return nil, fmt.Errorf("%s: %w", d.name, err)
		}
		d.fake = fake
		out = append(out, d)
	}
	return out, nil
}

// app is the wired process: listeners, gateway, admin and the fleet (which
// owns the pools).
type app struct {
	cfg     config
	log     zerolog.Logger
	fleet   *fleet.Fleet
	gw      *gateway.Gateway
	tracer  *otelx.Tracer
	cache   *cache.Cache // nil: cache.enabled is false
	limits  *limits.Limiter
	admin   *admin.Server
	gwLn    net.Listener
	adminLn net.Listener
}

// newApp builds everything and binds both ports; nothing serves yet. On
// error no port is left bound.
func newApp(cfg config, log zerolog.Logger, sink *logSink) (*app, error) {
	f, err := cfg.newFleet(discoveryLogger(log))
	if err != nil {
		return nil, err
	}
	gcfg := cfg.Gateway
	gcfg.DefaultModel = cfg.Upstream.DefaultModel
	gw, err := gateway.New(gcfg, cfg.Chat, cfg.Auth, f, log)
	if err != nil {
		return nil, err
	}
	limits.SetClientLogger(log)
	lim, err := cfg.newLimiter(log)
	if err != nil {
		return nil, err
	}
	gw.SetLimiter(lim)
	adminKeys := cfg.Auth.AdminAPIKeys
	if len(adminKeys) == 0 {
		adminKeys = cfg.Auth.APIKeys
	}
	adminRing, err := access.NewKeyring(adminKeys, nil)
	if err != nil {
		return nil, fmt.Errorf("auth.admin_api_keys: %w", err)
	}
	a := &app{cfg: cfg, log: log, fleet: f, gw: gw, limits: lim}
	if cfg.Cache.Enabled {
		if a.cache, err = cache.New(cfg.Cache); err != nil {
			return nil, err
		}
		f.TrackDigests() // the cache keys on each model's digest
		gw.SetCache(a.cache)
	}
	src := admin.Sources{
		Fleet: f.Snapshot,
		Ready: func() bool { return anyReady(fleetPools(f)) },
	}
	if !adminRing.Open() {
		src.Authorize = adminRing.Allowed
	}
	obs, err := newObservability(cfg.Metrics, f, gw, sink)
	if err != nil {
		return nil, err
	}
	if a.cache != nil {
		obs.RegisterCache(a.cache.Snapshot)
	}
	src.Stats = func() any { return obs.Stats() }
	src.Metrics = obs.Handler()
	a.admin, err = admin.New(cfg.Admin, src, log)
	if err != nil {
		return nil, err
	}
	if a.gwLn, err = net.Listen("tcp", cfg.Gateway.Listen); err != nil {
		return nil, fmt.Errorf("gateway.listen: %w", err)
	}
	if a.adminLn, err = net.Listen("tcp", cfg.Admin.Listen); err != nil {
		a.gwLn.Close()
		return nil, fmt.Errorf("admin.listen: %w", err)
	}
	// Last, so that no error above leaves its exporter goroutine running.
	if a.tracer, err = otelx.New(cfg.Otel, os.Getenv); err != nil {
		a.gwLn.Close()
		a.adminLn.Close()
		return nil, err
	}
	if a.tracer != nil {
		otelx.LogErrors(log)
		gw.SetTracer(a.tracer)
	}
	return a, nil
}

// anyReady: some backend has answered its health probe and its pool is not
// closed; the fleet routes around the others.
func anyReady(pools []*pool.Pool) bool {
	for _, p := range pools {
		if p.Ready() && !p.Closed() {
			return true
		}
	}
	return false
}

// run serves until a signal, then drains: /readyz turns 503 and queued
// requests are refused at once, in-flight ones get gateway.drain_timeout.
// A second signal exits at once.
func (a *app) run(sigs, hup <-chan os.Signal) int {
	log := a.log
	if a.gw.Open() {
		log.Warn().Msg("auth.api_keys is empty: the gateway is open to anyone who can reach it")
	}
	for _, k := range append(append([]string(nil), a.cfg.Auth.APIKeys...), a.cfg.Auth.AdminAPIKeys...) {
		if len(k) < 32 {
			log.Warn().Msg("an API key is shorter than 32 characters: use long random keys (openssl rand -hex 32)")
			break
		}
	}
	backends := zerolog.Arr()
	for _, b := range a.fleet.Backends() {
		backends.Dict(zerolog.Dict().Str("name", b.Name).Str("url", b.Pool.URL()).Int("weight", b.Weight))
	}
	started := log.Info().Str("gateway", a.gwLn.Addr().String()).Str("admin", a.adminLn.Addr().String())
	if a.fleet.Single() {
		started.Str("upstream", a.fleet.First().Pool.URL())
	} else {
		started.Str("routing_policy", a.fleet.Config().Policy)
	}
	if groups := a.fleet.Snapshot().Discovery; len(groups) > 0 {
		names := make([]string, len(groups))
		for i, g := range groups {
			names[i] = g.Name
		}
		started.Strs("discovery", names) // their backends are logged as they join
	}
	started.Array("backends", backends).Bool("tracing", a.tracer != nil).Str("limits", a.limits.Where()).Str("version", version).Msg("vega-gateway started")
	if !a.limits.Shared() {
		log.Debug().Msg("limits are kept in this process: with several replicas each enforces them on its own (set limits.redis_url to share them)")
	}

	// The fleet runs every backend's health prober (and, with several, its
	// catalogue refresher), and the admin server its periodic profiles,
	// until stopHealth; each returns once stopped.
	healthCtx, stopHealth := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(5)
	go func() { defer wg.Done(); a.admin.RunProfiles(healthCtx) }()
	// The limiter refreshes this replica's Redis leases until stopHealth.
	go func() { defer wg.Done(); a.limits.Run(healthCtx) }()
	go func() {
		defer wg.Done()
		several := !a.fleet.Single()
		a.fleet.Run(healthCtx, func(b *fleet.Backend, ch pool.HealthChange) {
			ev := log.Info()
			if !ch.Healthy {
				ev = log.Warn().AnErr("error", ch.Err)
			}
			ev.Bool("healthy", ch.Healthy).Bool("down", ch.Down).Str("backend", b.Name).Str("upstream", b.Pool.URL()).
				Msg(healthMessage(ch, several))
		})
	}()
	serveErr := make(chan error, 2)
	go func() { defer wg.Done(); serveErr <- a.gw.Serve(newRetryListener(a.gwLn, "gateway.listen", log)) }()
	go func() { defer wg.Done(); serveErr <- a.admin.Serve(newRetryListener(a.adminLn, "admin.listen", log)) }()

	code := 0
wait:
	for {
		select {
		case <-hup:
			if err := a.gw.ReloadKeys(); err != nil {
				log.Error().Err(err).Msg("key reload failed; the previous keys stay in force")
			} else {
				log.Info().Msg("keys reloaded")
			}
		case sig := <-sigs:
			log.Info().Str("signal", sig.String()).Dur("drain_timeout", a.cfg.Gateway.DrainTimeout).Msg("shutting down: draining")
			break wait
		case err := <-serveErr:
			log.Error().Err(err).Msg("listener failed")
			code = 1
			break wait
		}
	}
	a.fleet.Close() // readyz 503, queued requests 503 shutting_down
	done := make(chan struct{})
	go func() {
		drainCtx, cancel := context.WithTimeout(context.Background(), a.cfg.Gateway.DrainTimeout)
		defer cancel()
		if err := a.gw.Shutdown(drainCtx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
			log.Warn().Err(err).Msg("gateway shutdown")
		} else if err != nil {
			log.Warn().Msg("drain timeout reached with requests still running; closing them")
		}
		adminCtx, cancel2 := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel2()
		_ = a.admin.Shutdown(adminCtx)
		// The spans of the requests just drained go out, within a bound:
		// an absent collector must not hold the exit.
		traceCtx, cancel3 := context.WithTimeout(context.Background(), otelx.ExportTimeout)
		defer cancel3()
		if err := a.tracer.Shutdown(traceCtx); err != nil {
			log.Warn().Err(err).Msg("trace export at shutdown")
		}
		stopHealth()
		if a.cache != nil {
			_ = a.cache.Close()
		}
		close(done)
	}()
	select {
	case <-done:
	case sig := <-sigs:
		log.Warn().Str("signal", sig.String()).Msg("second signal: exiting now")
		return 1
	}
	wg.Wait()
	_ = a.limits.Close()
	log.Info().Msg("stopped")
	return code
}

// retryListener keeps a listener serving through resource exhaustion.
// fasthttp's Serve treats every accept error but a timeout as permanent and
// returns, so running out of file descriptors (EMFILE, ENFILE) or socket
// memory would stop the listener, and the process, for good. Like
// net/http's Server, Accept waits and tries again instead, backing off from
// acceptRetryMin to acceptRetryMax (no CPU spin while the pending
// connections wait in the kernel's backlog), with at most one warning per
// acceptRetryMax. Other errors, such as a closed listener, pass through.
type retryListener struct {
	net.Listener
	key string
	log zerolog.Logger
	// lastWarn is when the last warning was logged (unix ns); suppressed
	// counts the errors since then. Accept runs on one goroutine, but the
	// fields are atomics so that is not an invariant to keep.
	lastWarn   atomic.Int64
	suppressed atomic.Int64
}

const (
	acceptRetryMin = 5 * time.Millisecond
	acceptRetryMax = time.Second
)

func newRetryListener(ln net.Listener, key string, log zerolog.Logger) *retryListener {
	return &retryListener{Listener: ln, key: key, log: log}
}

func (l *retryListener) Accept() (net.Conn, error) {
	var delay time.Duration
	for {
		c, err := l.Listener.Accept()
		if err == nil || !resourceExhausted(err) {
			return c, err
		}
		delay = min(max(2*delay, acceptRetryMin), acceptRetryMax)
		now := time.Now()
		if now.Sub(time.Unix(0, l.lastWarn.Load())) >= acceptRetryMax {
			l.lastWarn.Store(now.UnixNano())
			l.log.Warn().Str("listener", l.key).Err(err).Int64("suppressed", l.suppressed.Swap(0)).
				Msg("cannot accept connections (out of file descriptors or memory); retrying")
		} else {
			l.suppressed.Add(1)
		}
		time.Sleep(delay)
	}
}

// resourceExhausted reports an accept error that passes once resources free.
func resourceExhausted(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.ENOMEM)
}

// healthMessage describes a backend's health transition; several says the
// fleet has other backends to route to.
func healthMessage(ch pool.HealthChange, several bool) string {
	switch {
	case ch.Healthy:
		return "upstream is healthy"
	case ch.Down && several:
		return "upstream marked down after failed health probes; requests go to the other backends"
	case ch.Down:
		return "upstream marked down after failed health probes; requests fail fast with 503"
	case several:
		return "upstream not reachable yet; requests go to the other backends"
	}
	return "upstream not reachable yet; /readyz answers 503 until it is"
}

// discoveryLogger logs a discovery group's events: one line per change,
// and one per failed lookup (so at most one per refresh while the resolver
// is away).
func discoveryLogger(log zerolog.Logger) func(fleet.Event) {
	return func(e fleet.Event) {
		var ev *zerolog.Event
		switch e.Kind {
		case fleet.EventLookupFailed, fleet.EventRejected:
			ev = log.Warn().AnErr("error", e.Err)
		default:
			ev = log.Info()
		}
		if e.Backend != "" {
			ev.Str("backend", e.Backend).Str("upstream", e.URL)
		}
		ev.Str("discovery", e.Group).Str("event", e.Kind.String()).Int("backends", e.Backends).Int64("lookup", e.Lookup).
			Msg(discoveryMessage(e.Kind))
	}
}

func discoveryMessage(k fleet.EventKind) string {
	switch k {
	case fleet.EventFound:
		return "backend found in DNS; probing it before it takes requests"
	case fleet.EventJoined:
		return "discovered backend answered its probes; it takes requests"
	case fleet.EventLeft:
		return "backend gone from DNS; it takes no new request and drains"
	case fleet.EventReturned:
		return "draining backend is in DNS again; it takes requests again"
	case fleet.EventClosed:
		return "backend gone from DNS has no request left; its pool is closed"
	case fleet.EventLookupFailed:
		return "DNS lookup failed; the backends stay as they were"
	}
	return "discovered backend not added"
}

func healthcheckCommand(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("healthcheck", flag.ContinueOnError)
	fs.SetOutput(stderr)
	url := fs.String("url", defaultHealthURL(os.Getenv("VEGA_GATEWAY_LISTEN"), os.Getenv("VEGA_GATEWAY_TLS_CERT_FILE") != ""),
		"URL to probe (default: the port of VEGA_GATEWAY_LISTEN, else 8000; https when VEGA_GATEWAY_TLS_CERT_FILE is set)")
	timeout := fs.Duration("timeout", 2*time.Second, "probe timeout")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	// The probe asks the process itself whether it serves, on loopback:
	// the certificate names the service, not 127.0.0.1, and is not checked.
	client := &fasthttp.Client{TLSConfig: &tls.Config{InsecureSkipVerify: true}} //nolint:gosec // liveness probe of our own loopback listener
	status, _, err := client.GetTimeout(nil, *url, *timeout)
	if err != nil {
		fmt.Fprintf(stderr, "healthcheck: %v\n", err)
		return 1
	}
	if status != fasthttp.StatusOK {
		fmt.Fprintf(stderr, "healthcheck: status %d\n", status)
		return 1
	}
	return 0
}

// defaultHealthURL probes the data listener's port on loopback, so a
// container that moves the port with VEGA_GATEWAY_LISTEN (or turns on TLS
// with VEGA_GATEWAY_TLS_CERT_FILE) keeps a working HEALTHCHECK without a
// shell to rewrite the command.
func defaultHealthURL(listen string, https bool) string {
	port := "8000"
	if _, p, err := net.SplitHostPort(listen); err == nil && p != "" {
		port = p
	}
	scheme := "http"
	if https {
		scheme = "https"
	}
	return scheme + "://127.0.0.1:" + port + "/healthz"
}
