package pool

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
)

// Stats are the pool's counters, kept with atomics so the request path never
// takes a lock to count.
type Stats struct {
	ClientsCreated    atomic.Int64 // HTTP clients built for this upstream (1 for the life of the pool)
	RequestsMade      atomic.Int64 // upstream requests sent, retries included
	ConnectionsOpened atomic.Int64 // TCP connections dialled successfully
	ConnectionsClosed atomic.Int64 // TCP connections closed, by either side
	InFlight          atomic.Int64 // requests holding a connection slot now
	Waiting           atomic.Int64 // requests queued for a slot now
	WaitTimeouts      atomic.Int64 // requests refused after max_wait
	QueueRejections   atomic.Int64 // requests refused because the queue was full
	Errors            atomic.Int64 // upstream errors: connect, timeout, reset, protocol, mid-stream
	Retries           atomic.Int64 // requests sent a second time because the first never arrived
	ClientDisconnects atomic.Int64 // upstream connections closed because the client left
	Abandoned         atomic.Int64 // queued requests whose client left before a slot came free
	ProbePanics       atomic.Int64 // health probes that panicked (each is a bug; counted as a failed probe)
}

// Pool is one upstream behind a hard bound on connections. All of the
// gateway's traffic to that upstream goes through Do, between Acquire and
// the release it returns.
type Pool struct {
	cfg    Config
	up     UpstreamConfig
	target target
	client *fasthttp.HostClient
	// slots holds one token per request in flight; its capacity is the
	// connection bound. fasthttp's MaxConns equals it, so fasthttp never
	// queues (its waiter list is unbounded, valyala/fasthttp#2391).
	slots     chan struct{}
	closing   chan struct{}
	closeOnce sync.Once
	// releaseFn is p.release, bound once so Acquire does not allocate it.
	releaseFn func()
	stats     Stats
	health    health
	// watches maps the parent-id of a request's traceparent to its
	// client's "gone" check while DoWhile runs; watching counts them so a
	// connection skips the lookup when nobody watches.
	watchMu  sync.Mutex
	watches  map[[16]byte]func() bool
	watching atomic.Int64
}

// New validates the configs and builds the pool. It starts no goroutine:
// the health prober runs under RunHealth.
func New(up UpstreamConfig, cfg Config) (*Pool, error) {
	cfg = cfg.withDefaults()
	up = up.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	t, err := up.validate()
	if err != nil {
		return nil, err
	}
	p := &Pool{
		cfg:     cfg,
		up:      up,
		target:  t,
		slots:   make(chan struct{}, cfg.MaxConnections),
		closing: make(chan struct{}),
		watches: map[[16]byte]func() bool{},
	}
	p.client = &fasthttp.HostClient{
		Addr:                          t.addr,
		IsTLS:                         t.isTLS,
		Dial:                          p.dial,
		MaxConns:                      cfg.MaxConnections,
		MaxConnWaitTimeout:            0,
		MaxIdleConnDuration:           cfg.MaxIdleConnDuration,
		StreamResponseBody:            true,
		DisableHeaderNamesNormalizing: true,
		DisablePathNormalizing:        true,
		NoDefaultUserAgentHeader:      true,
		SecureErrorLogMessage:         true,
		// Response headers must fit; a streamed body is read through it
		// for the stream's whole life, so it is memory per stream. 4 KiB
		// is nginx's default proxy_buffer_size (one page), and Ollama's
		// headers are a few hundred bytes.
		ReadBufferSize: 4 << 10,
		// Retries are Do's decision, made with knowledge fasthttp lacks
		// (was the connection reused? did any byte come back?).
		RetryIfErr: func(*fasthttp.Request, int, error) (bool, bool) { return false, false },
	}
	p.releaseFn = p.release
	p.stats.ClientsCreated.Add(1)
	p.health.init(up)
	return p, nil
}

// URL returns the upstream's base URL.
func (p *Pool) URL() string { return p.up.URL }

// Host returns the Host header the upstream expects.
func (p *Pool) Host() string { return p.target.host }

// Stats returns the live counters; callers read them with Load.
func (p *Pool) Stats() *Stats { return &p.stats }

// MaxResponseBytes is the cap on a non-streamed response body.
func (p *Pool) MaxResponseBytes() int { return p.up.MaxResponseBytes }

// Acquire waits for a connection slot: at once if one is free, else in the
// bounded queue for up to max_wait. cancel (may be nil) aborts the wait, for
// example on shutdown. The returned release must be called exactly once,
// after the upstream response is finished with. waited is the queue time.
func (p *Pool) Acquire(cancel <-chan struct{}) (release func(), waited time.Duration, err error) {
	return p.AcquireWhile(cancel, nil)
}

// clientPollInterval is how often a queued request checks that its client
// is still there.
const clientPollInterval = 50 * time.Millisecond

// AcquireWhile is Acquire for a request whose client may leave: while it
// waits in the queue, gone (may be nil) is polled every clientPollInterval
// and a true ends the wait with ErrAbandoned, so a vanished client never
// takes an upstream slot (HAProxy's abortonclose).
func (p *Pool) AcquireWhile(cancel <-chan struct{}, gone func() bool) (release func(), waited time.Duration, err error) {
	select {
	case <-p.closing:
		return nil, 0, ErrClosed
	default:
	}
	if p.health.failFast() {
		return nil, 0, ErrUnhealthy
	}
	select {
	case p.slots <- struct{}{}:
		p.stats.InFlight.Add(1)
		return p.releaseFn, 0, nil
	default:
	}
	if n := p.stats.Waiting.Add(1); n > int64(p.cfg.MaxQueue) {
		p.stats.Waiting.Add(-1)
		p.stats.QueueRejections.Add(1)
		return nil, 0, ErrQueueFull
	}
	start := time.Now()
	t := time.NewTimer(p.cfg.MaxWait)
	defer t.Stop()
	defer p.stats.Waiting.Add(-1)
	var poll <-chan time.Time
	if gone != nil {
		tk := time.NewTicker(clientPollInterval)
		defer tk.Stop()
		poll = tk.C
	}
	for {
		select {
		case p.slots <- struct{}{}:
			p.stats.InFlight.Add(1)
			return p.releaseFn, time.Since(start), nil
		case <-t.C:
			p.stats.WaitTimeouts.Add(1)
			return nil, time.Since(start), ErrPoolExhausted
		case <-p.closing:
			return nil, time.Since(start), ErrClosed
		case <-cancel:
			return nil, time.Since(start), ErrClosed
		case <-poll:
			if gone() {
				p.stats.Abandoned.Add(1)
				return nil, time.Since(start), ErrAbandoned
			}
		}
	}
}

func (p *Pool) release() {
	p.stats.InFlight.Add(-1)
	<-p.slots
}

// Do sends req and reads the response headers into resp; the body is left
// as a stream (resp.BodyStream) for the caller to read and close. Call it
// only while holding a slot from Acquire. It sets the upstream's Host and
// retries once, only when the request provably never reached the upstream:
// the dial failed (not by timeout), or a reused keep-alive connection failed
// before any response byte. Errors wrap ErrConnect, ErrFirstByteTimeout,
// ErrReset or ErrProtocol.
func (p *Pool) Do(req *fasthttp.Request, resp *fasthttp.Response) (retries int, err error) {
	return p.DoWhile(req, resp, nil)
}

// DoWhile is Do for a request whose client may leave while the upstream
// prepares its first byte (a cold model load can take minutes): until that
// byte comes, gone (may be nil) is polled every clientPollInterval, and a
// true closes the upstream connection — which is how Ollama learns to stop
// — and returns ErrClientGone. fasthttp has no per-request cancel, so the
// connection recognises its request by the parent-id of the W3C
// traceparent header, unique per upstream call; a request without one is
// not watched.
func (p *Pool) DoWhile(req *fasthttp.Request, resp *fasthttp.Response, gone func() bool) (retries int, err error) {
	if gone != nil {
		if key, ok := traceKey(req.Header.Peek(traceparentHeader)); ok {
			p.watch(key, gone)
			defer p.unwatch(key)
		}
	}
	// fasthttp drops a streamed body once it has been written (or failed
	// to be): ask now whether there is one, not after a failure.
	streamed := req.IsBodyStream()
	req.URI().SetSchemeBytes(schemeOf(p.target.isTLS))
	req.URI().SetHost(p.target.host)
	req.Header.SetHost(p.target.host)
	for {
		p.stats.RequestsMade.Add(1)
		err = p.client.Do(req, resp)
		if err == nil {
			if c := connOf(resp); c != nil && c.ambiguous {
				// Both Content-Length and Transfer-Encoding: framed by the
				// latter (RFC 9112 §6.3), relayed, and the connection is
				// closed after this exchange, never reused — the sender's
				// framing cannot be trusted for the next response.
				resp.SetConnectionClose()
			}
			if resp.StatusCode() < 200 {
				// A 1xx/101 answer (never relayed) leaves the connection in
				// another protocol or mis-framed, and fasthttp has already
				// put it back in its idle list: close it under fasthttp's
				// feet; its next user fails at once and, the connection
				// being reused and silent, retries on a fresh one.
				if c := connOf(resp); c != nil {
					_ = c.Close()
				}
			}
			return retries, nil
		}
		if c := connOf(resp); c != nil && c.clientLeft {
			p.stats.ClientDisconnects.Add(1)
			return retries, fmt.Errorf("%s %s: %w", req.Header.Method(), req.URI().Path(), ErrClientGone)
		}
		if retries == 0 && !streamed && p.safeToRetry(req, resp, err) {
			retries++
			p.stats.Retries.Add(1)
			continue
		}
		p.stats.Errors.Add(1)
		return retries, fmt.Errorf("%s %s: %w", req.Header.Method(), req.URI().Path(), classify(err))
	}
}

// safeToRetry: the request provably never reached the upstream. A
// streamed body (which cannot be sent twice) is never retried; DoWhile
// checks that before sending.
func (p *Pool) safeToRetry(req *fasthttp.Request, resp *fasthttp.Response, err error) bool {
	var de *dialError
	if errors.As(err, &de) {
		return !isTimeout(err) // a second connect timeout would double the wait
	}
	if ca, ok := resp.LocalAddr().(connAddr); ok && isReset(err) {
		return ca.c.reusedAndSilent()
	}
	return false
}

// NoteError counts an upstream error met after Do returned (mid-stream).
func (p *Pool) NoteError() { p.stats.Errors.Add(1) }

// NoteClientDisconnect counts an upstream connection closed because the
// client went away.
func (p *Pool) NoteClientDisconnect() { p.stats.ClientDisconnects.Add(1) }

// Close refuses new requests, wakes queued ones with ErrClosed and closes
// idle upstream connections. Busy ones close as their streams end.
func (p *Pool) Close() {
	p.closeOnce.Do(func() {
		close(p.closing)
		p.client.CloseIdleConnections()
	})
}

// Closed reports whether Close was called.
func (p *Pool) Closed() bool {
	select {
	case <-p.closing:
		return true
	default:
		return false
	}
}

var (
	schemeHTTP  = []byte("http")
	schemeHTTPS = []byte("https")
)

func schemeOf(tls bool) []byte {
	if tls {
		return schemeHTTPS
	}
	return schemeHTTP
}

// HealthTimeout is the bound on one health probe, which other probes of
// the same upstream (a catalogue fetch) share.
func (p *Pool) HealthTimeout() time.Duration { return p.up.HealthTimeout }
