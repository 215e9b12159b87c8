package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/vega-gateway/vega-gateway/access"
	"github.com/vega-gateway/vega-gateway/fleet"
	"github.com/vega-gateway/vega-gateway/gateway"
	"github.com/vega-gateway/vega-gateway/ollamatest"
	"github.com/vega-gateway/vega-gateway/pool"
)

// The fleet case's children speak the protocol of serve.go — a "target"
// line, "ready", a "stats" line on stdin answered on stdout, stdin EOF to
// stop — with JSON for the answer: a fake Ollama answers with its
// scheduler's counters (fakeStats), the fleet gateway with its routing
// counters (gatewayStats), nginx with nothing ("{}").

// Roles of the fleet case's children.
const (
	roleFleetFake    = "fleet-fake"    // one fake Ollama in scheduler mode
	roleFleetGateway = "fleet-gateway" // the gateway in front of the fakes, at one routing policy
	roleFleetNginx   = "fleet-nginx"   // nginx round robin in front of the fakes
)

func isFleetRole(role string) bool {
	return role == roleFleetFake || role == roleFleetGateway || role == roleFleetNginx
}

// fleetServeConfig is a fleet child's settings (serveFlags.fleet, JSON).
type fleetServeConfig struct {
	Fake      ollamatest.Config // fleet-fake: Addr is where to listen (the same port again after an outage)
	Policy    string            // fleet-gateway: fleet.Config.Policy
	Upstreams []string          // the proxies: host:port of each fake, in order
	MaxConns  int               // the gateway's pool.max_connections per backend
	// AccessLog, when set, is where the gateway logs at info (every
	// request); otherwise it logs warnings and errors to a file in dir.
	AccessLog string
}

// fakeStats is what a fake reports: its scheduler's counters and the
// inference requests it received.
type fakeStats struct {
	ColdLoads, Evictions, BusyRejections int64
	PromptTokens, CachedPromptTokens     int64
	// Chats counts POST /api/chat received (busy-rejected ones included);
	// -1 once the fake's request record overflowed.
	Chats int64
}

// sub is s less an earlier reading o; Chats is -1 if either is unknown.
func (s fakeStats) sub(o fakeStats) fakeStats {
	return s.combine(o, -1)
}

// add is the sum of two readings (of two processes, or of a difference
// and a reading); Chats is -1 if either is unknown.
func (s fakeStats) add(o fakeStats) fakeStats {
	return s.combine(o, 1)
}

func (s fakeStats) combine(o fakeStats, sign int64) fakeStats {
	c := fakeStats{ColdLoads: s.ColdLoads + sign*o.ColdLoads, Evictions: s.Evictions + sign*o.Evictions,
		BusyRejections: s.BusyRejections + sign*o.BusyRejections, PromptTokens: s.PromptTokens + sign*o.PromptTokens,
		CachedPromptTokens: s.CachedPromptTokens + sign*o.CachedPromptTokens, Chats: s.Chats + sign*o.Chats}
	if s.Chats < 0 || o.Chats < 0 {
		c.Chats = -1
	}
	return c
}

// gatewayStats is the fleet gateway's view of its backends, for the log.
type gatewayStats struct {
	Backends  []gatewayBackendStats
	NoBackend int64 // requests that found no usable backend
}

// gatewayBackendStats is the gateway's view of one backend (fleet.BackendSnapshot).
type gatewayBackendStats struct {
	Name                      string
	Picks                     map[string]int64 // by reason
	ColdLoads, Busy, Failures int64
	BreakerOpens              int64
}

// fakeRecordLimit is the fake's request record: every request of a run,
// so that the inference requests can be counted (a run sends a few
// thousand per backend at most).
const fakeRecordLimit = 200_000

// serveFleet is a fleet child: start the server of its role, announce
// it, answer stats until stdin EOF.
func serveFleet(f serveFlags) error {
	var cfg fleetServeConfig
	if err := json.Unmarshal([]byte(f.fleet), &cfg); err != nil {
		return fmt.Errorf("-serve-fleet: %w", err)
	}
	var (
		name, addr string
		pid        = os.Getpid()
		stop       func()
		stats      func() any
		err        error
	)
	switch f.role {
	case roleFleetFake:
		cfg.Fake.RecordLimit = fakeRecordLimit
		var fake *ollamatest.Server
		if fake, err = ollamatest.NewServer(cfg.Fake); err == nil {
			name, addr, stop = "fake", fake.Addr(), func() { _ = fake.Close() }
			stats = func() any { return readFakeStats(fake) }
		}
	case roleFleetGateway:
		name = cfg.Policy
		addr, stop, stats, err = startFleetGateway(cfg, f.dir)
	case roleFleetNginx:
		name = "nginx"
		addr, pid, stop, err = startFleetNginx(cfg, f.dir)
		stats = func() any { return struct{}{} }
	}
	if err != nil {
		return err
	}
	defer stop()
	fmt.Printf("target\t%s\t%s\t%d\n", name, addr, pid)
	fmt.Println("ready")
	sc := bufio.NewScanner(os.Stdin) // the parent closes stdin to stop us
	for sc.Scan() {
		if sc.Text() == "stats" {
			b, _ := json.Marshal(stats())
			fmt.Printf("stats\t%s\n", b)
		}
	}
	return nil
}

func readFakeStats(fake *ollamatest.Server) fakeStats {
	st := fake.Stats()
	s := fakeStats{ColdLoads: st.ColdLoads, Evictions: st.Evictions, BusyRejections: st.BusyRejections,
		PromptTokens: st.PromptTokens, CachedPromptTokens: st.CachedPromptTokens, Chats: -1}
	if st.Requests < fakeRecordLimit {
		s.Chats = 0
		for _, r := range fake.Requests() {
			if r.Method == "POST" && r.Path == "/api/chat" {
				s.Chats++
			}
		}
	}
	return s
}

// startFleetGateway serves the gateway in front of every upstream, one
// pool each, at cfg.Policy and otherwise the defaults, logging warnings
// and errors to a file in dir. It returns once every backend's catalogue
// has been fetched (or 5 s have passed), so the first requests are routed
// on what the backends hold.
func startFleetGateway(cfg fleetServeConfig, dir string) (string, func(), func() any, error) {
	var members []fleet.Member
	var pools []*pool.Pool
	closePools := func() {
		for _, p := range pools {
			p.Close()
		}
	}
	for i, up := range cfg.Upstreams {
		p, err := pool.New(pool.UpstreamConfig{URL: "http://" + up}, pool.Config{MaxConnections: cfg.MaxConns})
		if err != nil {
			closePools()
			return "", nil, nil, err
		}
		pools = append(pools, p)
		members = append(members, fleet.Member{Name: fmt.Sprintf("b%d", i+1), Pool: p})
	}
	f, err := fleet.New(fleet.Config{Policy: cfg.Policy}, members)
	if err != nil {
		closePools()
		return "", nil, nil, err
	}
	logPath, level := filepath.Join(dir, "fleet-gateway-"+cfg.Policy+".log"), zerolog.WarnLevel
	if cfg.AccessLog != "" {
		logPath, level = cfg.AccessLog, zerolog.InfoLevel
	}
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		closePools()
		return "", nil, nil, err
	}
	log := zerolog.New(logFile).Level(level).With().Timestamp().Logger()
	gw, err := gateway.New(gateway.Config{}, gateway.ChatConfig{}, access.Config{}, f, log)
	if err != nil {
		closePools()
		_ = logFile.Close()
		return "", nil, nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		closePools()
		_ = logFile.Close()
		return "", nil, nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() { defer close(ran); f.Run(ctx, nil) }() // stops with cancel
	served := make(chan struct{})
	go func() { defer close(served); _ = gw.Serve(ln) }() // stops with Shutdown
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline) && !cataloguesKnown(f); {
		time.Sleep(20 * time.Millisecond)
	}
	stop := func() {
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		_ = gw.Shutdown(sctx)
		<-served
		cancel()
		<-ran
		closePools()
		_ = logFile.Close()
	}
	stats := func() any {
		snap := f.Snapshot()
		var s gatewayStats
		s.NoBackend = snap.NoBackend
		for _, b := range snap.Backends {
			s.Backends = append(s.Backends, gatewayBackendStats{Name: b.Name, Picks: b.Picks,
				ColdLoads: b.ColdLoads, Busy: b.Busy, Failures: b.Failures, BreakerOpens: b.Breaker.Opens})
		}
		return s
	}
	return ln.Addr().String(), stop, stats, nil
}

func cataloguesKnown(f *fleet.Fleet) bool {
	for _, b := range f.Backends() {
		if _, known := b.Installed(); !known {
			return false
		}
	}
	return true
}

// startFleetNginx runs nginx round robin over the fakes with nginxConf:
// nginx's default balancing and failover (proxy_next_upstream error
// timeout; a server that fails once is left out for 10 s). The fakes, like
// Ollama on loopback, accept only a local Host.
func startFleetNginx(cfg fleetServeConfig, dir string) (addr string, pid int, stop func(), err error) {
	if len(cfg.Upstreams) == 0 {
		return "", 0, nil, errors.New("no upstream")
	}
	if addr, err = freePort(); err != nil {
		return "", 0, nil, err
	}
	ndir, err := os.MkdirTemp(dir, "nginx-fleet-")
	if err != nil {
		return "", 0, nil, err
	}
	var servers strings.Builder
	for _, up := range cfg.Upstreams {
		fmt.Fprintf(&servers, "        server %s;\n", up)
	}
	pid, stop, err = runNginx(ndir, fmt.Sprintf(nginxConf, ndir, servers.String(), addr, 10000, 8192, "127.0.0.1"), addr)
	return addr, pid, stop, err
}
