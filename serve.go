package main

import (
	"context"
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

	"github.com/vega-gateway/vega-gateway/admin"
	"github.com/vega-gateway/vega-gateway/fleet"
	"github.com/vega-gateway/vega-gateway/gateway"
	"github.com/vega-gateway/vega-gateway/ollamatest"
	"github.com/vega-gateway/vega-gateway/pool"
)

func serveCommand(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "config file (default ./config.yaml if present)")
	demo := fs.Bool("demo", false, "start a built-in fake Ollama on a loopback port and use it as the upstream")
	logLevel := fs.String("log-level", "", "override log.level")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	overrides := map[string]any{}
	if *logLevel != "" {
		overrides["log.level"] = *logLevel
	}
	var fake *ollamatest.Server
	if *demo {
		var err error
		fake, err = ollamatest.NewServer(ollamatest.Config{TokenDelay: 20 * time.Millisecond})
		if err != nil {
			fmt.Fprintf(stderr, "vega-gateway: demo backend: %v\n", err)
			return 1
		}
		defer fake.Close()
		overrides["upstream.url"] = fake.URL()
	}
	cfg, err := loadConfig(*configPath, overrides, os.Environ())
	if err != nil {
		fmt.Fprintf(stderr, "vega-gateway: %v\n", err)
		return 1
	}
	log, sink := newLogger(cfg.Log, stdout, stderr)
	defer sink.Close()
	if fake != nil {
		log.Info().Str("upstream", fake.URL()).Msg("demo mode: serving a built-in fake Ollama")
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

// app is the wired process: listeners, gateway, admin, pool, prober.
type app struct {
	cfg     config
	log     zerolog.Logger
	pool    *pool.Pool
	gw      *gateway.Gateway
	admin   *admin.Server
	gwLn    net.Listener
	adminLn net.Listener
}

// newApp builds everything and binds both ports; nothing serves yet. On
// error no port is left bound.
func newApp(cfg config, log zerolog.Logger, sink *logSink) (*app, error) {
	p, err := pool.New(cfg.Upstream.UpstreamConfig, cfg.Pool)
	if err != nil {
		return nil, err
	}
	gcfg := cfg.Gateway
	gcfg.DefaultModel = cfg.Upstream.DefaultModel
	gw, err := gateway.New(gcfg, cfg.Chat, cfg.Auth, fleet.Single(p), log)
	if err != nil {
		return nil, err
	}
	adminKeys := cfg.Auth.AdminAPIKeys
	if len(adminKeys) == 0 {
		adminKeys = cfg.Auth.APIKeys
	}
	adminRing, err := gateway.NewKeyring(adminKeys, nil)
	if err != nil {
		return nil, fmt.Errorf("auth.admin_api_keys: %w", err)
	}
	a := &app{cfg: cfg, log: log, pool: p, gw: gw}
	src := admin.Sources{
		Pools: func() []pool.Snapshot { return []pool.Snapshot{p.Snapshot()} },
		Ready: func() bool { return p.Ready() && !p.Closed() },
	}
	if !adminRing.Open() {
		src.Authorize = adminRing.Allowed
	}
	obs, err := newObservability(cfg.Metrics, p, gw, sink)
	if err != nil {
		return nil, err
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
	return a, nil
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
	log.Info().Str("gateway", a.gwLn.Addr().String()).Str("admin", a.adminLn.Addr().String()).
		Str("upstream", a.pool.URL()).Str("version", version).Msg("vega-gateway started")

	healthCtx, stopHealth := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(3)
	go func() {
		defer wg.Done()
		a.pool.RunHealth(healthCtx, func(ch pool.HealthChange) {
			ev := log.Info()
			if !ch.Healthy {
				ev = log.Warn().AnErr("error", ch.Err)
			}
			ev.Bool("healthy", ch.Healthy).Bool("down", ch.Down).Str("upstream", a.pool.URL()).Msg(healthMessage(ch))
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
	a.pool.Close() // readyz 503, queued requests 503 shutting_down
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
		stopHealth()
		close(done)
	}()
	select {
	case <-done:
	case sig := <-sigs:
		log.Warn().Str("signal", sig.String()).Msg("second signal: exiting now")
		return 1
	}
	wg.Wait()
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

func healthMessage(ch pool.HealthChange) string {
	switch {
	case ch.Healthy:
		return "upstream is healthy"
	case ch.Down:
		return "upstream marked down after failed health probes; requests fail fast with 503"
	}
	return "upstream not reachable yet; /readyz answers 503 until it is"
}

func healthcheckCommand(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("healthcheck", flag.ContinueOnError)
	fs.SetOutput(stderr)
	url := fs.String("url", defaultHealthURL(os.Getenv("VEGA_GATEWAY_LISTEN")), "URL to probe (default: the port of VEGA_GATEWAY_LISTEN, else 8000)")
	timeout := fs.Duration("timeout", 2*time.Second, "probe timeout")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	status, _, err := fasthttp.GetTimeout(nil, *url, *timeout)
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
// container that moves the port with VEGA_GATEWAY_LISTEN keeps a working
// HEALTHCHECK without a shell to rewrite the command.
func defaultHealthURL(listen string) string {
	port := "8000"
	if _, p, err := net.SplitHostPort(listen); err == nil && p != "" {
		port = p
	}
	return "http://127.0.0.1:" + port + "/healthz"
}
