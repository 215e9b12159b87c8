package admin

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"time"

	"github.com/google/uuid"
	"github.com/rs/zerolog"
	"github.com/valyala/fasthttp"

	"github.com/vega-gateway/vega-gateway/fleet"
	"github.com/vega-gateway/vega-gateway/pool"
	"github.com/vega-gateway/vega-gateway/tlsfiles"
)

// DefaultListen keeps the admin listener on loopback unless told otherwise.
const DefaultListen = "127.0.0.1:8001"

// Config is the admin listener's configuration (config keys admin.*).
type Config struct {
	// Listen is the admin listener's address. Default DefaultListen. A
	// non-loopback address requires admin keys (main enforces this).
	Listen string `mapstructure:"listen"`
	// Pprof serves net/http/pprof's /debug/pprof/* behind the admin key.
	// Default false: those paths are 404. A CPU or trace profile costs the
	// process while it runs; the heap and goroutine ones are snapshots.
	Pprof bool `mapstructure:"pprof"`
	// ProfileDir receives a CPU and a heap profile every ProfileInterval
	// (cpu-<UTC time>.pprof, heap-<UTC time>.pprof). Default "": none.
	ProfileDir string `mapstructure:"profile_dir"`
	// ProfileInterval is the time between two rounds of profiles, the
	// first one interval after start. Default DefaultProfileInterval (10m).
	ProfileInterval time.Duration `mapstructure:"profile_interval"`
	// ProfileSeconds is the length of each CPU profile, shorter than the
	// interval. Default DefaultProfileSeconds (30).
	ProfileSeconds int `mapstructure:"profile_seconds"`
	// ProfileKeep is how many profiles of each kind are kept, the newest.
	// Default DefaultProfileKeep (6).
	ProfileKeep int `mapstructure:"profile_keep"`
	// TLS is the admin listener's certificate and key (config keys
	// admin.tls.cert_file and key_file): both set, HTTPS (files reloaded
	// when they change); neither, plain HTTP (the default).
	TLS tlsfiles.Config `mapstructure:"tls"`
}

// Sources are the functions the admin server reads what it shows from.
// Ready and one of Pools and Fleet are required.
type Sources struct {
	// Pools returns a snapshot of every upstream pool, first one first.
	// Not read when Fleet is set.
	Pools func() []pool.Snapshot
	// Fleet returns every backend's routing state with its pool, first
	// configured first; /admin/resources/pools then shows both.
	Fleet func() fleet.Snapshot
	// Ready reports whether the gateway can serve (upstream healthy, not
	// draining): what /readyz answers.
	Ready func() bool
	// Authorize reports whether a request to a data route carries a valid
	// admin key; nil means admin routes are open.
	Authorize func(*fasthttp.RequestCtx) bool
	// Stats returns the resource statistics for /admin/resources/stats.
	Stats func() any
	// Metrics serves /metrics in Prometheus text format.
	Metrics fasthttp.RequestHandler
}

// Server is the admin listener.
type Server struct {
	cfg      Config
	src      Sources
	log      zerolog.Logger
	server   *fasthttp.Server
	loopback bool
	// profiler writes the periodic profiles (nil: off); RunProfiles runs it.
	profiler *profiler
	tls      *tls.Config // nil: plain HTTP
}

// New validates cfg and builds the server (and creates admin.profile_dir).
// It starts nothing: Serve serves, RunProfiles writes the profiles.
func New(cfg Config, src Sources, log zerolog.Logger) (*Server, error) {
	if cfg.Listen == "" {
		cfg.Listen = DefaultListen
	}
	if (src.Pools == nil && src.Fleet == nil) || src.Ready == nil {
		return nil, fmt.Errorf("admin: the Ready source and a Pools or Fleet source are required")
	}
	prof, err := newProfiler(cfg, log)
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, src: src, log: log, loopback: IsLoopback(cfg.Listen), profiler: prof}
	cert, err := tlsfiles.Load(cfg.TLS, "admin.tls", log)
	if err != nil {
		return nil, err
	}
	if cert != nil {
		s.tls = cert.ServerConfig()
	}
	s.server = &fasthttp.Server{
		Handler:               s.serve,
		Name:                  "vega-gateway-admin",
		NoDefaultServerHeader: true,
		ReadTimeout:           10 * time.Second,
		IdleTimeout:           60 * time.Second,
		MaxRequestBodySize:    4 << 10,
		SecureErrorLogMessage: true,
	}
	return s, nil
}

// IsLoopback reports whether a listen address binds loopback only.
func IsLoopback(listen string) bool {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Serve accepts connections on ln until Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	if s.tls != nil {
		ln = tls.NewListener(ln, s.tls)
	}
	return s.server.Serve(ln)
}

// Shutdown stops the listener and waits for open requests until ctx ends.
func (s *Server) Shutdown(ctx context.Context) error { return s.server.ShutdownWithContext(ctx) }

func (s *Server) serve(ctx *fasthttp.RequestCtx) {
	ctx.Response.Header.Set("X-Correlation-ID", uuid.NewString())
	ctx.Response.Header.Set("Cache-Control", "no-store")
	if s.loopback && !loopbackHost(ctx.Host()) {
		// DNS rebinding: a page on another origin must not read the admin
		// data through a name that resolves to 127.0.0.1.
		writeJSONError(ctx, 403, "host_not_allowed", "the admin listener answers loopback host names only")
		return
	}
	path := string(ctx.Path())
	switch path {
	case "/healthz":
		writeJSON(ctx, 200, map[string]string{"status": "ok"})
		return
	case "/readyz":
		if s.src.Ready() {
			writeJSON(ctx, 200, map[string]string{"status": "ready"})
		} else {
			writeJSON(ctx, 503, map[string]string{"status": "not_ready"})
		}
		return
	}
	// The page holds no data (it fetches the JSON routes with the key the
	// operator types in), so a browser can load it without a key.
	if (ctx.IsGet() || ctx.IsHead()) && s.servePage(ctx, path) {
		return
	}
	if s.src.Authorize != nil && !s.src.Authorize(ctx) {
		ctx.Response.Header.Set("WWW-Authenticate", "Bearer")
		writeJSONError(ctx, 401, "unauthorized", "missing or invalid admin API key")
		return
	}
	if !ctx.IsGet() && !ctx.IsHead() {
		ctx.Response.Header.Set("Allow", "GET, HEAD")
		writeJSONError(ctx, 405, "method_not_allowed", "use GET")
		return
	}
	if s.servePprof(ctx, path) {
		return
	}
	switch path {
	case "/admin/resources/pools":
		if s.src.Fleet != nil {
			writeJSON(ctx, 200, fleetView(s.src.Fleet(), time.Now()))
			return
		}
		writeJSON(ctx, 200, poolsView(s.src.Pools()))
	case "/admin/resources/stats":
		if s.src.Stats == nil {
			writeJSONError(ctx, 404, "not_found", "statistics are not enabled")
			return
		}
		writeJSON(ctx, 200, s.src.Stats())
	case "/metrics":
		if s.src.Metrics == nil {
			writeJSONError(ctx, 404, "not_found", "metrics are not enabled")
			return
		}
		s.src.Metrics(ctx)
	default:
		writeJSONError(ctx, 404, "not_found", "no such admin route")
	}
}

// loopbackHost reports whether a Host header names loopback.
func loopbackHost(h []byte) bool {
	host := string(h)
	if hh, _, err := net.SplitHostPort(host); err == nil {
		host = hh
	}
	if host == "localhost" || host == "" {
		return true
	}
	if len(host) > 2 && host[0] == '[' && host[len(host)-1] == ']' {
		host = host[1 : len(host)-1]
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func writeJSON(ctx *fasthttp.RequestCtx, status int, v any) {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		status, b = 500, []byte(`{"error":"internal_error"}`)
	}
	ctx.SetStatusCode(status)
	ctx.SetContentType("application/json; charset=utf-8")
	ctx.SetBody(append(b, '\n'))
}

func writeJSONError(ctx *fasthttp.RequestCtx, status int, code, msg string) {
	writeJSON(ctx, status, map[string]string{
		"error": msg, "code": code, "correlation_id": string(ctx.Response.Header.Peek("X-Correlation-ID")),
	})
}
