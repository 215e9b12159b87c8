package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"github.com/valyala/fasthttp"

	"github.com/vega-gateway/vega-gateway/access"
	"github.com/vega-gateway/vega-gateway/fleet"
	"github.com/vega-gateway/vega-gateway/gateway"
	"github.com/vega-gateway/vega-gateway/metrics"
	"github.com/vega-gateway/vega-gateway/ollamatest"
	"github.com/vega-gateway/vega-gateway/otelx"
	"github.com/vega-gateway/vega-gateway/pool"
	"github.com/vega-gateway/vega-gateway/trace"
)

// nginxPath is where Debian's nginx-light puts the binary.
const nginxPath = "/usr/sbin/nginx"

// nginxWrapEnv, when set in a child's environment, is a command line
// nginx is started under (valgrind, for -instructions): nginx itself, not
// the Go child that starts it, whose signal handling callgrind trips on.
const nginxWrapEnv = "BENCH_NGINX_WRAP"

// target is one column of the table: an address the load generator hits.
type target struct {
	name string
	addr string
	pid  int    // the process whose RSS is the target's (nginx: its master, workers added)
	ctl  *child // the child serving it; nil inside the child
}

// stack is the fake Ollama and every proxy in front of it, for one case.
type stack struct {
	targets []target
	stops   []func() // run in reverse order by close
}

func (s *stack) close() {
	for i := len(s.stops) - 1; i >= 0; i-- {
		s.stops[i]()
	}
}

// startFake starts the fake Ollama alone: the "direct" target.
func startFake(cfg ollamatest.Config) (*stack, error) {
	cfg.RecordLimit = 1 // keep no request history: it would grow with the run
	fake, err := ollamatest.NewServer(cfg)
	if err != nil {
		return nil, err
	}
	return &stack{
		targets: []target{{name: "direct", addr: fake.Addr()}},
		stops:   []func(){func() { _ = fake.Close() }},
	}, nil
}

// startGateway serves the gateway at its defaults, but for the pool bound
// raised to maxConns, on a loopback port, with main's metrics observer;
// with otelEndpoint, every request's spans are exported there.
func startGateway(upstream string, logOn bool, dir string, maxConns, maxQueue int, otelEndpoint string) (string, func(), error) {
	p, err := pool.New(pool.UpstreamConfig{URL: upstream}, pool.Config{MaxConnections: maxConns, MaxQueue: maxQueue})
	if err != nil {
		return "", nil, err
	}
	log := zerolog.Nop()
	closeLog := func() {}
	if logOn {
		f, err := os.OpenFile(filepath.Join(dir, "gateway.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			return "", nil, err
		}
		w := trace.NewBatchWriter(f, 10000, nil) // main's log queue (logging.go)
		log = zerolog.New(w).Level(zerolog.InfoLevel).With().Timestamp().Logger()
		closeLog = func() { _ = w.Close(); _ = f.Close() }
	}
	gw, err := gateway.New(gateway.Config{}, gateway.ChatConfig{}, access.Config{}, fleet.Single(p), log)
	if err != nil {
		closeLog()
		return "", nil, err
	}
	// Metrics observe every request, as in main (observability.go).
	m, err := metrics.New(metrics.Config{}, "bench", func() []pool.Snapshot { return []pool.Snapshot{p.Snapshot()} })
	if err != nil {
		closeLog()
		return "", nil, err
	}
	m.SetStreamsSource(gw.Streams)
	gw.SetObserver(m.Observe)
	var tracer *otelx.Tracer
	if otelEndpoint != "" {
		// As main wires it, sampling every request: the worst case.
		if tracer, err = otelx.New(otelx.Config{Endpoint: otelEndpoint}, func(string) string { return "" }); err != nil {
			closeLog()
			return "", nil, err
		}
		gw.SetTracer(tracer)
		otelx.LogErrors(log) // as main does: failed exports to the access log's logger, not stderr
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		closeLog()
		return "", nil, err
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = gw.Serve(ln) }()
	stop := func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = gw.Shutdown(ctx)
		p.Close()
		<-done
		tctx, tcancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer tcancel()
		_ = tracer.Shutdown(tctx) // a silent collector: the spans queued are dropped
		closeLog()
	}
	return ln.Addr().String(), stop, nil
}

// startLiveCollector is an OTLP/HTTP collector that reads each export and
// answers 200 at once without decoding it: what a healthy collector costs
// the exporter, for a baseline against the silent one.
func startLiveCollector() (url string, stop func(), err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	srv := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
		ctx.SetContentType("application/x-protobuf") // an empty ExportTraceServiceResponse
	}}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ln) }()
	stop = func() {
		_ = srv.Shutdown()
		<-done
	}
	return "http://" + ln.Addr().String(), stop, nil
}

// startSilentCollector listens on loopback, accepts connections and never
// answers on them: a collector that is down but whose port takes
// connections, the worst case for an exporter (each export waits out its
// timeout). The accept goroutine holds the connections until stop.
func startSilentCollector() (url string, stop func(), err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	conns := make(chan net.Conn, 1024)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			select {
			case conns <- c:
			default:
				c.Close()
			}
		}
	}()
	stop = func() {
		ln.Close()
		<-done
		close(conns)
		for c := range conns {
			c.Close()
		}
	}
	return "http://" + ln.Addr().String(), stop, nil
}

// startBare serves the smallest proxy fasthttp allows — the handler hands
// the client's request to a HostClient and the answer back, streaming
// bodies through — with none of the gateway's work (auth, IDs, logs,
// metrics, limits, header filtering). It is not a usable proxy; it is the
// floor fasthttp's server and client put under any gateway built on them.
func startBare(upstream string, maxConns int) (string, func(), error) {
	hc := &fasthttp.HostClient{Addr: upstream, MaxConns: maxConns, StreamResponseBody: true,
		DisableHeaderNamesNormalizing: true, DisablePathNormalizing: true, NoDefaultUserAgentHeader: true}
	srv := &fasthttp.Server{
		Handler: func(ctx *fasthttp.RequestCtx) {
			if err := hc.Do(&ctx.Request, &ctx.Response); err != nil {
				ctx.Error(err.Error(), fasthttp.StatusBadGateway)
				return
			}
			ctx.Response.Header.Del("Connection")
		},
		NoDefaultServerHeader: true, NoDefaultDate: true, NoDefaultContentType: true,
		DisableHeaderNamesNormalizing: true, StreamRequestBody: false,
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ln) }()
	return ln.Addr().String(), func() { _ = srv.Shutdown(); <-done }, nil
}

// nginxConf is the reference nginx's config: one worker, upstream
// keep-alive, proxy_buffering off, an access log to a file. Arguments: the
// directory, the upstream block's server lines, the listen address, the
// open-file limit, worker_connections, and the Host sent upstream.
const nginxConf = `worker_processes 1;
daemon off;
pid %[1]s/nginx.pid;
error_log %[1]s/nginx-error.log warn;
worker_rlimit_nofile %[4]d;
events { worker_connections %[5]d; }
http {
    access_log %[1]s/nginx-access.log;
    client_body_temp_path %[1]s/client_body;
    proxy_temp_path %[1]s/proxy;
    fastcgi_temp_path %[1]s/fastcgi;
    uwsgi_temp_path %[1]s/uwsgi;
    scgi_temp_path %[1]s/scgi;
    keepalive_requests 1000000;
    upstream ollama {
%[2]s        keepalive 512;
        keepalive_requests 1000000;
    }
    server {
        listen %[3]s backlog=4096;
        location / {
            proxy_pass http://ollama;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host %[6]s;
            proxy_buffering off;
            proxy_read_timeout 60s;
        }
    }
}
`

// startNginx runs nginx as a reference proxy in front of upstream, with a
// generated config in dir: one worker, proxy_buffering off, upstream
// keep-alive, an access log to a file.
func startNginx(dir, upstream string, workerConns int) (addr string, pid int, stop func(), err error) {
	addr, err = freePort()
	if err != nil {
		return "", 0, nil, err
	}
	ndir, err := os.MkdirTemp(dir, "nginx-")
	if err != nil {
		return "", 0, nil, err
	}
	workerConns = max(workerConns, 8192) // a connection each to the client and to the upstream
	pid, stop, err = runNginx(ndir, fmt.Sprintf(nginxConf, ndir, "        server "+upstream+";\n", addr, workerConns+1000, workerConns, upstream), addr)
	return addr, pid, stop, err
}

// runNginx writes conf to ndir and runs nginx with it until stop, once it
// listens on addr.
func runNginx(ndir, confText, addr string) (pid int, stop func(), err error) {
	conf := filepath.Join(ndir, "nginx.conf")
	if err := os.WriteFile(conf, []byte(confText), 0o644); err != nil {
		return 0, nil, err
	}
	args := []string{nginxPath, "-c", conf, "-p", ndir, "-e", filepath.Join(ndir, "nginx-error.log")}
	ready := 5 * time.Second
	if wrap := os.Getenv(nginxWrapEnv); wrap != "" {
		args = append(strings.Fields(wrap), args...)
		ready = 30 * time.Second
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		return 0, nil, err
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	stop = func() {
		_ = cmd.Process.Signal(syscall.SIGTERM) // fast shutdown of the master we started, and its worker
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		// Surface nginx's complaints (at most a few lines): failures the
		// load generator sees as resets are explained there.
		if b, err := os.ReadFile(filepath.Join(ndir, "nginx-error.log")); err == nil {
			lines := strings.Split(strings.TrimSpace(string(b)), "\n")
			for i, l := range lines {
				if i == 5 {
					fmt.Fprintf(os.Stderr, "nginx error.log: … %d lines in all\n", len(lines))
					break
				}
				if l != "" {
					fmt.Fprintln(os.Stderr, "nginx error.log:", l)
				}
			}
		}
	}
	if err := waitListening(addr, ready, exited); err != nil {
		stop()
		log, _ := os.ReadFile(filepath.Join(ndir, "nginx-error.log"))
		return 0, nil, fmt.Errorf("%w: %s", err, log)
	}
	return cmd.Process.Pid, stop, nil
}

// freePort returns a loopback address nothing listens on just now.
func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	addr := ln.Addr().String()
	return addr, ln.Close()
}

// waitListening polls addr until it accepts a connection, the process
// exits, or d passes.
func waitListening(addr string, d time.Duration, exited <-chan struct{}) error {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return errors.New("exited at start")
		default:
		}
		if c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond); err == nil {
			return c.Close()
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("not listening on %s after %s", addr, d)
}
