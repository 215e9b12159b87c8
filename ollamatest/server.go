package ollamatest

import (
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Version is the Ollama version the fake reports on /api/version.
const Version = "0.17.4"

// Defaults and limits. Zero Config fields select the defaults.
const (
	// DefaultAddr is where the fake listens when Config.Addr is empty.
	DefaultAddr = "127.0.0.1:0"
	// DefaultTokens is the length, in tokens, of a generated reply.
	DefaultTokens = 8
	// DefaultRecordLimit is how many requests and connections are kept for
	// Requests and Conns; older ones are dropped first.
	DefaultRecordLimit = 10000
	// MaxRecordedBody caps the bytes of one request body kept in Request.Body.
	MaxRecordedBody = 1 << 20
	// MaxParsedBody caps the bytes of a JSON request body the fake decodes;
	// the rest is read and discarded, so the body then fails to decode.
	MaxParsedBody = 64 << 20
	// EmbeddingDimensions is the length of every embedding vector.
	EmbeddingDimensions = 8
)

// Request headers the fake understands. Stock clients never send them.
const (
	// FaultHeader selects a fault mode for one request, e.g. "stall_after=3".
	FaultHeader = "X-Ollamatest-Fault"
	// TokensHeader overrides the reply length (tokens) for one request.
	TokensHeader = "X-Ollamatest-Tokens"
	// FaultModelPrefix, at the start of a request's "model", selects a fault
	// mode the way FaultHeader does: "fault:die_after=2". Such models exist.
	FaultModelPrefix = "fault:"
)

// Config configures a fake Ollama. The zero value is usable.
type Config struct {
	// Addr is the TCP address to listen on. Default DefaultAddr (a free
	// loopback port).
	Addr string `mapstructure:"addr"`
	// TokenDelay is the pause between two streamed frames (NDJSON lines or
	// SSE events); a non-streamed reply waits TokenDelay per token before it
	// is sent. Zero means no pause.
	TokenDelay time.Duration `mapstructure:"token_delay"`
	// Tokens is the length of a generated reply. options.num_predict (or
	// max_tokens) lower than it cuts the reply with done_reason "length".
	// Default DefaultTokens.
	Tokens int `mapstructure:"tokens"`
	// Models are the names the fake knows; "x" and "x:latest" are the same
	// model, and "fault:..." names always exist. Default DefaultModels().
	Models []string `mapstructure:"models"`
	// LoadDelay is an extra wait before the first byte of the first
	// inference request for each model (a cold load), reported in
	// load_duration. Zero means models are loaded at once. Ignored when
	// Scheduler is set (SchedulerConfig.LoadTime applies).
	LoadDelay time.Duration `mapstructure:"load_delay"`
	// Scheduler, when set, makes the fake schedule like Ollama: a bounded
	// number of loaded models (evicted least recently used first) and of
	// requests running per model, a bounded queue past which requests get
	// 503 busy, per-slot prompt caches that shorten prefill, and models that
	// unload after their keep-alive. Nil means every model loads once
	// (LoadDelay) and any number of requests run at once.
	Scheduler *SchedulerConfig `mapstructure:"scheduler"`
	// IdleTimeout closes keep-alive connections idle this long (stale
	// keep-alive tests). Zero means never.
	IdleTimeout time.Duration `mapstructure:"idle_timeout"`
	// EmbedDelay is how long each embedding request (/api/embed,
	// /api/embeddings, /v1/embeddings) takes once its model is loaded,
	// whatever the batch size: what a small embedding model costs a GPU
	// per batch (about 5 ms). Zero means no wait.
	EmbedDelay time.Duration `mapstructure:"embed_delay"`
	// RecordLimit is how many requests and connections Requests and Conns
	// keep. Default DefaultRecordLimit.
	RecordLimit int `mapstructure:"record_limit"`
}

// DefaultModels returns the models a zero Config knows.
func DefaultModels() []string {
	return []string{"llama3.2", "llama3.2:latest", "qwen2.5:0.5b", "nomic-embed-text"}
}

// Server is a running fake Ollama. Its methods are safe for concurrent use.
type Server struct {
	cfg       Config
	ln        net.Listener
	srv       *http.Server
	checkHost bool

	done      chan struct{} // closed by Close; every wait in a handler selects on it
	served    chan struct{} // closed when the Serve goroutine returns
	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error
	gate      chan struct{} // one token per ReleaseFrame
	ids       atomic.Int64  // response ids (chatcmpl-, msg_)

	mu           sync.Mutex
	st           Stats // ConnsOpen, InFlight: live; the rest since start or ResetStats
	reqs         []*record
	conns        []*connRecord
	nextConn     int64
	connFault    string
	defaultFault fault
	models       map[string]*modelEntry // by normalized name
	modelOrder   []string
	loaded       map[string]*loadState // without a scheduler
	sched        *scheduler            // nil without Config.Scheduler; shares mu
	blobs        map[string]bool
}

// NewServer listens on cfg.Addr and serves at once on a goroutine of its own,
// which Close stops.
func NewServer(cfg Config) (*Server, error) {
	switch {
	case cfg.Tokens < 0:
		return nil, errors.New("ollamatest: tokens: must not be negative")
	case cfg.TokenDelay < 0:
		return nil, errors.New("ollamatest: token_delay: must not be negative")
	case cfg.LoadDelay < 0:
		return nil, errors.New("ollamatest: load_delay: must not be negative")
	case cfg.EmbedDelay < 0:
		return nil, errors.New("ollamatest: embed_delay: must not be negative")
	case cfg.IdleTimeout < 0:
		return nil, errors.New("ollamatest: idle_timeout: must not be negative")
	}
	if cfg.Addr == "" {
		cfg.Addr = DefaultAddr
	}
	if cfg.Tokens == 0 {
		cfg.Tokens = DefaultTokens
	}
	if cfg.RecordLimit <= 0 {
		cfg.RecordLimit = DefaultRecordLimit
	}
	models := cfg.Models
	if models == nil {
		models = DefaultModels()
	}
	cfg.Models = append([]string(nil), models...)
	if cfg.Scheduler != nil {
		sc, err := cfg.Scheduler.withDefaults()
		if err != nil {
			return nil, err
		}
		cfg.Scheduler = &sc // the caller's struct stays as it was
	}

	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("ollamatest: listen: %w", err)
	}
	s := &Server{
		cfg:    cfg,
		done:   make(chan struct{}),
		served: make(chan struct{}),
		gate:   make(chan struct{}, 1<<16),
		models: make(map[string]*modelEntry),
		loaded: make(map[string]*loadState),
		blobs:  make(map[string]bool),
	}
	if cfg.Scheduler != nil {
		s.sched = newScheduler(*cfg.Scheduler, &s.mu, &s.st, s.done)
	}
	for _, m := range cfg.Models {
		s.addModel(m)
	}
	// Like Ollama, check Host only when listening on loopback.
	if ta, ok := ln.Addr().(*net.TCPAddr); ok && ta.IP.IsLoopback() {
		s.checkHost = true
	}
	s.ln = &listener{Listener: ln, s: s}
	s.srv = &http.Server{
		Handler:           http.HandlerFunc(s.serveHTTP),
		ConnContext:       connContext,
		IdleTimeout:       cfg.IdleTimeout,
		ReadHeaderTimeout: time.Minute,
		ErrorLog:          log.New(io.Discard, "", 0),
	}
	go func() {
		defer close(s.served)
		_ = s.srv.Serve(s.ln)
	}()
	return s, nil
}

// URL returns the base URL, "http://127.0.0.1:PORT".
func (s *Server) URL() string { return "http://" + s.Addr() }

// Addr returns the listening address, "127.0.0.1:PORT".
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Port returns the listening TCP port.
func (s *Server) Port() int {
	_, p, _ := net.SplitHostPort(s.Addr())
	n, _ := strconv.Atoi(p)
	return n
}

// Close stops listening, closes every connection, ends every waiting handler
// and returns once handlers and connections are gone (at most 5 s). Requests
// still running are not counted as ClientCancelled. Close is idempotent.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		close(s.done)
		s.closeErr = s.srv.Close()
		<-s.served
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			st := s.Stats()
			if st.InFlight == 0 && st.ConnsOpen == 0 {
				break
			}
			time.Sleep(time.Millisecond)
		}
	})
	return s.closeErr
}
