package ollamatest

import (
	"cmp"
	"errors"
	"math"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
)

// Scheduler defaults, selected by zero SchedulerConfig fields.
const (
	// DefaultNumParallel is how many requests run at once per loaded model
	// (OLLAMA_NUM_PARALLEL's default).
	DefaultNumParallel = 1
	// DefaultMaxQueue is how many requests may wait server-wide
	// (OLLAMA_MAX_QUEUE's default).
	DefaultMaxQueue = 512
	// DefaultMaxLoadedModels is how many models stay loaded at once. Ollama's
	// own default is 3 per GPU; one makes model switches visible.
	DefaultMaxLoadedModels = 1
	// DefaultKeepAlive is how long an idle model stays loaded
	// (OLLAMA_KEEP_ALIVE's default).
	DefaultKeepAlive = 5 * time.Minute
)

// SchedulerConfig makes the fake schedule inference requests like Ollama's
// server/sched.go and its runners' parallel slots. Zero fields select the
// defaults. "fault:" models are not scheduled: they are always loaded and
// never wait.
type SchedulerConfig struct {
	// NumParallel is how many requests run at once per loaded model, each in
	// a slot of its own (OLLAMA_NUM_PARALLEL); more wait for a slot, first
	// come first served. Models that only embed get one slot, as in Ollama.
	// Default DefaultNumParallel.
	NumParallel int `mapstructure:"num_parallel"`
	// MaxQueue is how many requests may wait server-wide (for a model load or
	// a slot) before a further one is answered at once with 503 and
	// BusyMessage (OLLAMA_MAX_QUEUE). Ollama itself bounds only the requests
	// waiting for its scheduler (their model is not loaded yet) and lets
	// requests for a loaded model wait for a slot without bound; the fake
	// counts both, so a backlog on one model also ends in 503s. Default
	// DefaultMaxQueue.
	MaxQueue int `mapstructure:"max_queue"`
	// MaxLoadedModels is how many models are loaded at once
	// (OLLAMA_MAX_LOADED_MODELS). A request for another model waits until a
	// loaded one is idle, unloads the least recently used idle one and loads
	// its own; requests for loaded models are served meanwhile, so, as in
	// Ollama, a model that never goes idle is never evicted. Default
	// DefaultMaxLoadedModels.
	MaxLoadedModels int `mapstructure:"max_loaded_models"`
	// LoadTime is how long a cold load takes; the requests that waited for
	// it report the wait as load_duration. Loads happen one at a time, as in
	// Ollama. Zero means loads are instant (but still counted).
	LoadTime time.Duration `mapstructure:"load_time"`
	// PromptTokenTime is the prefill time per prompt token not found in the
	// slot's prompt cache: it delays the first token and is reported as
	// prompt_eval_duration. Zero means prefill is instant.
	PromptTokenTime time.Duration `mapstructure:"prompt_token_time"`
	// KeepAlive is how long a model stays loaded after its last request
	// (OLLAMA_KEEP_ALIVE); a request's keep_alive replaces it for its model,
	// and keep_alive 0 unloads the model once it is idle. Negative means
	// never. Default DefaultKeepAlive.
	KeepAlive time.Duration `mapstructure:"keep_alive"`
	// MultiUserCache chooses slots as Ollama does with
	// OLLAMA_MULTIUSER_CACHE=1 (runner/ollamarunner/cache.go,
	// findBestCacheSlot): a free slot whose whole cache the prompt extends
	// is reused; otherwise the least recently used free slot is taken and
	// given the longest prefix any slot holds (a shared system prompt stays
	// cached). Off (Ollama's default, findLongestCacheSlot): the free slot
	// with the longest common prefix, the first on a tie, so a new
	// conversation overwrites the first slot's.
	MultiUserCache bool `mapstructure:"multi_user_cache"`
}

// withDefaults validates c and fills in its defaults.
func (c SchedulerConfig) withDefaults() (SchedulerConfig, error) {
	switch {
	case c.NumParallel < 0:
		return c, errors.New("ollamatest: scheduler.num_parallel: must not be negative")
	case c.MaxQueue < 0:
		return c, errors.New("ollamatest: scheduler.max_queue: must not be negative")
	case c.MaxLoadedModels < 0:
		return c, errors.New("ollamatest: scheduler.max_loaded_models: must not be negative")
	case c.LoadTime < 0:
		return c, errors.New("ollamatest: scheduler.load_time: must not be negative")
	case c.PromptTokenTime < 0:
		return c, errors.New("ollamatest: scheduler.prompt_token_time: must not be negative")
	}
	if c.NumParallel == 0 {
		c.NumParallel = DefaultNumParallel
	}
	if c.MaxQueue == 0 {
		c.MaxQueue = DefaultMaxQueue
	}
	if c.MaxLoadedModels == 0 {
		c.MaxLoadedModels = DefaultMaxLoadedModels
	}
	switch {
	case c.KeepAlive == 0:
		c.KeepAlive = DefaultKeepAlive
	case c.KeepAlive < 0:
		c.KeepAlive = math.MaxInt64
	}
	return c, nil
}

// scheduler admits, loads, evicts and queues inference requests. Its state
// is guarded by the Server's mu. It starts no goroutine and keeps no timer:
// a request waits on its own handler goroutine, selecting on the request's
// context and the server's done channel as well, and an idle model expires
// lazily, when the scheduler next looks at it.
type scheduler struct {
	cfg  SchedulerConfig
	mu   *sync.Mutex // the Server's
	st   *Stats      // the Server's counters
	done <-chan struct{}

	// uses counts slot grants: the clock of slot.lastUsed.
	uses    int64
	pending int                // leases admitted and not yet running
	runners map[string]*runner // loaded or loading, by normalized model name
	loadQ   []*lease           // leases that need a load, in arrival order; only the head evicts and loads
	changed chan struct{}      // closed and replaced when a runner loads, unloads or goes idle, or loadQ's head leaves
}

// runner is one loaded (or loading) model, Ollama's runnerRef.
type runner struct {
	model     *modelEntry
	ready     chan struct{} // closed when the load ends, done or abandoned
	loaded    bool
	refs      int // leases holding it, queued for a slot or running; it is idle at 0
	slots     []slot
	queue     []*lease // waiting for a slot, first come first served
	keepAlive time.Duration
	lastUsed  time.Time // when it was loaded or last went idle
}

// lease is one request's passage through the scheduler, from admission to
// the end of its handler.
type lease struct {
	loadOnly bool          // a load request: holds the runner but needs no slot
	noCache  bool          // embeddings do not reuse a slot's cache
	prompt   []string      // prompt tokens
	after    []string      // the slot's cache once the request completes: prompt and reply
	pending  bool          // counted in scheduler.pending
	r        *runner       // set once the model is loaded
	slot     int           // index in r.slots once running; -1 before
	cached   int           // prompt tokens found in the slot's cache
	granted  chan struct{} // closed when slot is set
}

func newScheduler(cfg SchedulerConfig, mu *sync.Mutex, st *Stats, done <-chan struct{}) *scheduler {
	return &scheduler{cfg: cfg, mu: mu, st: st, done: done, runners: make(map[string]*runner), changed: make(chan struct{})}
}

// broadcast wakes every request waiting on changed. Callers hold mu.
func (sc *scheduler) broadcast() {
	close(sc.changed)
	sc.changed = make(chan struct{})
}

// admit counts a new lease as pending, or answers 503 busy if MaxQueue
// leases already wait, as Ollama does when its pending queue is full.
func (sc *scheduler) admit(x *exchange, l *lease) bool {
	sc.mu.Lock()
	if sc.pending >= sc.cfg.MaxQueue {
		sc.st.BusyRejections++
		sc.mu.Unlock()
		x.fail(http.StatusServiceUnavailable, BusyMessage)
		return false
	}
	sc.pending++
	l.pending, l.slot = true, -1
	sc.mu.Unlock()
	x.lease = l // from here, Server.finish releases it
	return true
}

// hold admits a load request (no messages, no prompt) and waits for its
// model. The model cannot be evicted until the request ends.
func (sc *scheduler) hold(x *exchange, name string, keepAlive *time.Duration) bool {
	l := &lease{loadOnly: true}
	return sc.admit(x, l) && sc.waitRunner(x, l, name, keepAlive)
}

// acquire admits g, waits for its model and a slot, and waits out the
// prefill of the prompt tokens the slot has not cached. It fills in g's
// clock and prompt accounting.
func (sc *scheduler) acquire(x *exchange, g *gen) bool {
	l := &lease{prompt: g.prompt, after: g.processed(), noCache: g.embed, granted: make(chan struct{})}
	if !sc.admit(x, l) || !sc.waitRunner(x, l, g.model, g.keepAlive) {
		return false
	}
	g.loaded = time.Now()
	sc.mu.Lock()
	l.r.queue = append(l.r.queue, l)
	sc.grant(l.r)
	sc.mu.Unlock()
	select {
	case <-l.granted:
	case <-x.r.Context().Done():
		x.clientGone()
		return false
	case <-sc.done:
		return false
	}
	prefill := time.Duration(len(l.prompt)-l.cached) * sc.cfg.PromptTokenTime
	g.promptToks, g.promptEval = len(l.prompt), max(prefill, 1)
	if !x.pause(prefill) {
		return false
	}
	g.evalStart = time.Now()
	return true
}

// waitRunner waits until l's model is loaded and takes a reference on it.
// A request whose model is loading shares that load; one whose model is not
// loaded queues for the scheduler's turn (one load at a time, like Ollama's
// processPending), and at the head of the queue evicts the least recently
// used idle model if MaxLoadedModels are loaded, waiting for one to go idle
// if none is, then loads its own.
func (sc *scheduler) waitRunner(x *exchange, l *lease, name string, keepAlive *time.Duration) bool {
	m, ok := x.s.model(name)
	if !ok { // deleted since the handler looked
		m = describeModel(normalizeModel(name))
	}
	for {
		sc.mu.Lock()
		sc.expire(time.Now())
		r := sc.runners[m.name]
		var wait <-chan struct{}
		switch {
		case r != nil && r.loaded:
			sc.take(l, r, keepAlive)
			sc.mu.Unlock()
			return true
		case r != nil: // loading: share the load
			sc.leaveLoadQ(l)
			wait = r.ready
		default:
			if !slices.Contains(sc.loadQ, l) {
				sc.loadQ = append(sc.loadQ, l)
			}
			if sc.loadQ[0] != l {
				wait = sc.changed
				break
			}
			if len(sc.runners) >= sc.cfg.MaxLoadedModels {
				victim := sc.leastRecentlyUsedIdle()
				if victim == nil {
					wait = sc.changed
					break
				}
				sc.unload(victim)
				sc.st.Evictions++
			}
			slots := sc.cfg.NumParallel
			if m.embedding {
				slots = 1
			}
			r = &runner{model: m, ready: make(chan struct{}), slots: make([]slot, slots), keepAlive: sc.cfg.KeepAlive}
			sc.runners[m.name] = r
			sc.mu.Unlock()
			return sc.load(x, l, r, keepAlive)
		}
		sc.mu.Unlock()
		select {
		case <-wait:
		case <-x.r.Context().Done():
			x.clientGone()
			return false
		case <-sc.done:
			return false
		}
	}
}

// load loads r, just registered, for l at the head of loadQ, taking
// LoadTime. If l's request ends first the load is abandoned and the next
// request for the model starts it again, as Ollama's load follows the
// requesting context.
func (sc *scheduler) load(x *exchange, l *lease, r *runner, keepAlive *time.Duration) bool {
	ok := x.pause(sc.cfg.LoadTime)

	sc.mu.Lock()
	defer sc.mu.Unlock()
	sc.leaveLoadQ(l)
	close(r.ready)
	if !ok {
		sc.unload(r)
		return false
	}
	r.loaded, r.lastUsed = true, time.Now()
	sc.st.ColdLoads++
	sc.take(l, r, keepAlive)
	sc.broadcast()
	return true
}

// take gives l a reference on r. A load request stops being pending here;
// an inference request when it gets a slot. Callers hold mu.
func (sc *scheduler) take(l *lease, r *runner, keepAlive *time.Duration) {
	sc.leaveLoadQ(l)
	l.r = r
	r.refs++
	if keepAlive != nil {
		r.keepAlive = *keepAlive
	}
	if l.loadOnly {
		sc.started(l)
	}
}

// started ends l's pending time. Callers hold mu.
func (sc *scheduler) started(l *lease) {
	if l.pending {
		l.pending = false
		sc.pending--
	}
}

// leaveLoadQ removes l from loadQ, waking the rest if it was the head.
// Callers hold mu.
func (sc *scheduler) leaveLoadQ(l *lease) {
	i := slices.Index(sc.loadQ, l)
	if i < 0 {
		return
	}
	sc.loadQ = slices.Delete(sc.loadQ, i, i+1)
	if i == 0 {
		sc.broadcast()
	}
}

// release ends l, wherever it got to: it leaves the load queue or its
// runner's queue, or frees its slot, which then keeps the prompt and reply
// in its cache (only the prompt if the request was cut short). A model whose
// last reference goes and whose keep-alive is zero unloads.
func (sc *scheduler) release(l *lease, cut bool) {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	sc.leaveLoadQ(l)
	sc.started(l)
	r := l.r
	if r == nil {
		return
	}
	if l.slot >= 0 {
		s := &r.slots[l.slot]
		s.busy = false
		if !cut && l.after != nil {
			s.cache = l.after
		}
		sc.grant(r)
	} else if i := slices.Index(r.queue, l); i >= 0 {
		r.queue = slices.Delete(r.queue, i, i+1)
	}
	r.refs--
	if r.refs > 0 {
		return
	}
	r.lastUsed = time.Now()
	if r.keepAlive <= 0 {
		sc.unload(r)
	}
	sc.broadcast()
}

// leastRecentlyUsedIdle returns the loaded idle runner used longest ago,
// or nil. (Ollama picks by shortest keep-alive, then by name.) Callers hold
// mu.
func (sc *scheduler) leastRecentlyUsedIdle() *runner {
	var lru *runner
	for _, r := range sc.runners {
		if r.loaded && r.refs == 0 && (lru == nil || r.lastUsed.Before(lru.lastUsed)) {
			lru = r
		}
	}
	return lru
}

// expire unloads the idle runners whose keep-alive has run out. Callers
// hold mu.
func (sc *scheduler) expire(now time.Time) {
	for _, r := range sc.runners {
		if r.loaded && r.refs == 0 && !now.Before(r.expiresAt(now)) {
			sc.unload(r)
		}
	}
}

// expiresAt is when r unloads if nothing uses it meanwhile.
func (r *runner) expiresAt(now time.Time) time.Time {
	if r.refs > 0 {
		return now.Add(r.keepAlive)
	}
	return r.lastUsed.Add(r.keepAlive)
}

// unload removes r and wakes the requests waiting for room. Callers hold mu.
func (sc *scheduler) unload(r *runner) {
	if sc.runners[r.model.name] == r {
		delete(sc.runners, r.model.name)
		sc.broadcast()
	}
}

// expireModel unloads a model now if it is idle, else once it goes idle, as
// Ollama's expireRunner does for keep_alive 0 and deletions.
func (sc *scheduler) expireModel(name string) {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if r := sc.runners[normalizeModel(name)]; r != nil {
		sc.expireRunner(r)
	}
}

// expireAll expires every model, as expireModel does.
func (sc *scheduler) expireAll() {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	for _, r := range sc.runners {
		sc.expireRunner(r)
	}
}

// expireRunner sets r's keep-alive to zero and unloads it if it is idle.
// Callers hold mu.
func (sc *scheduler) expireRunner(r *runner) {
	r.keepAlive = 0
	if r.loaded && r.refs == 0 {
		sc.unload(r)
	}
}

// ps lists the loaded models as Ollama's /api/ps does: the longest time to
// expiry first.
func (sc *scheduler) ps() []processModel {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	now := time.Now()
	sc.expire(now)
	list := []processModel{}
	for _, r := range sc.runners {
		if r.loaded {
			list = append(list, r.model.process(r.expiresAt(now)))
		}
	}
	slices.SortFunc(list, func(a, b processModel) int { return strings.Compare(a.Name, b.Name) })
	slices.SortStableFunc(list, func(a, b processModel) int { return cmp.Compare(b.ExpiresAt.Unix(), a.ExpiresAt.Unix()) })
	return list
}

// keepAliveOf reads a request's keep_alive as Ollama's api.Duration does:
// a number of seconds or a duration string, negative meaning forever. It
// returns nil if the request gave none (or an unreadable one).
func keepAliveOf(v any) *time.Duration {
	var d time.Duration
	switch k := v.(type) {
	case float64:
		d = time.Duration(k * float64(time.Second))
	case string:
		var err error
		if d, err = time.ParseDuration(k); err != nil {
			return nil
		}
	default:
		return nil
	}
	if d < 0 {
		d = math.MaxInt64
	}
	return &d
}
