package fleet

import (
	"errors"
	"math"
	"math/bits"
	"math/rand/v2"
	"time"
)

// Reason says why a backend was chosen; it is logged as route_reason and
// counted per backend.
type Reason uint8

const (
	// ReasonOnly: the fleet has one backend.
	ReasonOnly Reason = iota
	// ReasonLoaded: the model is loaded there and it is not saturated.
	ReasonLoaded
	// ReasonAffinity: the conversation's backend (rendezvous hash of its
	// leading messages, bounded load).
	ReasonAffinity
	// ReasonLeastLoaded: the fewest outstanding requests per weight, or
	// the backend chosen to load a model loaded nowhere usable.
	ReasonLeastLoaded
	// ReasonPinned: named by X-Vega-Backend.
	ReasonPinned
	// ReasonFailover: an earlier attempt failed before any response byte.
	ReasonFailover
	// ReasonRoundRobin: the round_robin policy's turn.
	ReasonRoundRobin
	numReasons
)

var reasonNames = [numReasons]string{"only", "loaded", "affinity", "least_loaded", "pinned", "failover", "round_robin"}

// String is the reason as logged and exported.
func (r Reason) String() string {
	if r < numReasons {
		return reasonNames[r]
	}
	return "unknown"
}

// Reasons lists every reason, for metrics.
func Reasons() []Reason {
	out := make([]Reason, numReasons)
	for i := range out {
		out[i] = Reason(i)
	}
	return out
}

var (
	// ErrModelNotFound: no backend has the model installed, and every
	// usable backend's catalogue is known. Answer 404 as Ollama would, or
	// pull the model onto a backend.
	ErrModelNotFound = errors.New("fleet: model not installed on any backend")
	// ErrNoBackend: every backend is down, circuit-broken, closed or
	// already tried. Retry later; check the backends' health on the admin
	// listener.
	ErrNoBackend = errors.New("fleet: no backend available")
)

// Request is what the choice of a backend depends on.
type Request struct {
	// Model is the request's model as sent ("" for routes without one).
	Model string
	// Conversation is the request's (ConversationKey); zero for none.
	Conversation
	// Tried are the backends (Bit) an earlier attempt of this request used.
	Tried uint64
	// NeedModel restricts the choice to backends that have Model installed
	// (inference, show).
	NeedModel bool
	// Inference: the request runs the model, so where it is loaded, how
	// busy it is there and the conversation matter. Without it (show, push,
	// version) the least loaded candidate is chosen.
	Inference bool
}

// set is a set of backends by index (a fleet has at most MaxBackends): a
// word on the stack, so choosing costs no memory.
type set uint64

func (s set) has(b *Backend) bool { return s&set(b.Bit()) != 0 }
func (s set) count() int          { return bits.OnesCount64(uint64(s)) }

// filter keeps the members for which keep is true.
func (v *view) filter(s set, keep func(*Backend) bool) set {
	var out set
	for rest := s; rest != 0; rest &= rest - 1 {
		if b := v.slot[bits.TrailingZeros64(uint64(rest))]; keep(b) {
			out |= set(b.Bit())
		}
	}
	return out
}

// nth is the member of rank n (0-based) in index order.
func (v *view) nth(s set, n int) *Backend {
	for rest := s; rest != 0; rest &= rest - 1 {
		if n == 0 {
			return v.slot[bits.TrailingZeros64(uint64(rest))]
		}
		n--
	}
	return nil
}

// Pick chooses the backend for one attempt of a request. It reads only
// atomics, copy-on-write catalogues and the membership view: no lock, no
// I/O. With one configured backend (Single) it returns it (ReasonOnly)
// unless already tried, whatever its state, so a single-backend gateway
// behaves as its pool does.
func (f *Fleet) Pick(r Request) (*Backend, Reason, error) {
	if b := f.only; b != nil {
		if r.Tried&b.Bit() != 0 {
			return nil, 0, ErrNoBackend
		}
		b.picks[ReasonOnly].Add(1)
		return b, ReasonOnly, nil
	}
	return f.pickAmong(f.cur.Load(), r)
}

// pickAmong is Pick for a fleet of several, kept apart so that the single
// backend's path stays a few instructions and a small frame.
func (f *Fleet) pickAmong(v *view, r Request) (*Backend, Reason, error) {
	now := time.Now()
	model := ""
	if r.Model != "" {
		model = NormalizeModel(r.Model)
	}
	var cands set
	usable := 0
	for _, b := range v.list {
		if r.Tried&b.Bit() != 0 || !b.Usable() {
			continue
		}
		usable++
		if r.NeedModel && model != "" && !b.cat.mayHave(model) {
			continue
		}
		cands |= set(b.Bit())
	}
	if cands == 0 {
		if usable > 0 && r.Tried == 0 {
			f.modelMissing.Add(1)
			return nil, 0, ErrModelNotFound
		}
		f.noBackend.Add(1)
		return nil, 0, ErrNoBackend
	}
	// A backend that just answered "server busy" is a last resort.
	if idle := v.filter(cands, func(b *Backend) bool { return b.busyUntil.Load() < now.UnixNano() }); idle != 0 {
		cands = idle
	}
	var (
		b      *Backend
		reason Reason
	)
	switch {
	case f.cfg.Policy == PolicyRoundRobin:
		b, reason = f.roundRobin(v, cands), ReasonRoundRobin
	case f.cfg.Policy == PolicyLeastLoaded || model == "" || !r.Inference:
		b, reason = v.leastLoaded(cands), ReasonLeastLoaded
	default:
		b, reason = f.modelAware(v, cands, model, r.Conversation)
	}
	if r.Tried != 0 {
		reason = ReasonFailover
	}
	b.picks[reason].Add(1)
	return b, reason, nil
}

// Pin returns the named backend for a pinned request, counted as such; nil
// if there is none by that name.
func (f *Fleet) Pin(name string) *Backend {
	b := f.cur.Load().byName[name]
	if b != nil {
		b.picks[ReasonPinned].Add(1)
	}
	return b
}

// modelAware is the default policy: a warm backend that is not saturated
// (by conversation if there is one, else the least loaded); if every warm
// one is saturated and a cold one exists, the cold one that loses least by
// loading the model; else the saturated warm ones.
func (f *Fleet) modelAware(v *view, cands set, model string, conv Conversation) (*Backend, Reason) {
	warm := v.filter(cands, func(b *Backend) bool { return b.cat.loaded(model) })
	ready := v.filter(warm, func(b *Backend) bool { return !f.saturated(b, model) })
	if ready != 0 {
		if conv.Key != 0 {
			return f.affinity(v, ready, conv), ReasonAffinity
		}
		return v.leastLoaded(ready), ReasonLoaded
	}
	// Every warm backend is saturated, or none is warm. A cold load goes
	// where it evicts no model in use; if that is nowhere and the model is
	// warm somewhere, its queue there is the lesser evil: an eviction of a
	// busy model only moves the load to that model's next request.
	cold := cands &^ warm
	free := v.filter(cold, (*Backend).evictsNobody)
	switch {
	case free == 0 && warm != 0:
		if conv.Key != 0 {
			return f.affinity(v, warm, conv), ReasonAffinity
		}
		return v.leastLoaded(warm), ReasonLoaded
	case free == 0:
		free = cold
	}
	// Choose and mark under coldMu, so that requests for a model arriving
	// together (a burst at start-up) agree on one load: the later ones see
	// the first one's mark and go to that backend.
	f.coldMu.Lock()
	defer f.coldMu.Unlock()
	if w := v.filter(cands, func(b *Backend) bool { return b.cat.loaded(model) && !f.saturated(b, model) }); w != 0 {
		return v.leastLoaded(w), ReasonLoaded
	}
	b := v.coldChoice(free)
	// Later requests for the model come here too while it loads, instead
	// of loading it everywhere at once; the next refresh corrects this if
	// the load fails.
	b.noteLoading(model)
	return b, ReasonLeastLoaded
}

// saturated: the model's outstanding requests on b reach SaturatedAt and,
// once a load time has been seen, a request sent there now is expected to
// take longer than a cold load elsewhere. By Little's law the time a new
// request spends on b is about the mean time recent ones spent there
// (queue included): the service estimate. Before any load time is seen the
// count alone decides; with one seen but no warm request measured yet, the
// backend is not saturated (a load is known to cost more than a queue not
// yet measured). Nor is it while the model is still loading there: the requests queued behind that load would not be
// served sooner by a second load elsewhere, which would only take a
// backend from another model.
func (f *Fleet) saturated(b *Backend, model string) bool {
	c := b.counter(model, false)
	if c == nil || c.Load() < int64(f.cfg.SaturatedAt) || b.cat.pending(model) {
		return false
	}
	load, svc := f.loadEstimate(), b.serviceEstimate()
	switch {
	case load <= 0:
		return true
	case svc <= 0:
		return false
	}
	return svc >= load
}

// coldChoice picks where to load a model: the backend with the fewest
// outstanding requests per weight (its loaded models are the likeliest to
// be idle, so evicting one delays nobody), then the fewest loaded models.
func (v *view) coldChoice(s set) *Backend {
	var best *Backend
	for rest := s; rest != 0; rest &= rest - 1 {
		b := v.slot[bits.TrailingZeros64(uint64(rest))]
		if best == nil {
			best = b
			continue
		}
		switch less(b, best) {
		case -1:
			best = b
		case 0:
			if b.cat.loadedCount() < best.cat.loadedCount() {
				best = b
			}
		}
	}
	return best
}

// less compares outstanding requests per weight: -1 if a is less loaded.
func less(a, b *Backend) int {
	x, y := a.outstanding.Load()*int64(b.Weight), b.outstanding.Load()*int64(a.Weight)
	switch {
	case x < y:
		return -1
	case x > y:
		return 1
	}
	return 0
}

// leastLoaded is the candidate with the fewest outstanding requests per
// weight, a random one among equals. The counts are this gateway's own and
// exact, so the herd that a strict minimum draws over stale, shared load
// reports (what the power of two choices guards against) cannot form; over
// a handful of backends the full minimum balances better than two samples.
func (v *view) leastLoaded(s set) *Backend {
	var best *Backend
	ties := 0
	for rest := s; rest != 0; rest &= rest - 1 {
		b := v.slot[bits.TrailingZeros64(uint64(rest))]
		if best == nil {
			best, ties = b, 1
			continue
		}
		switch less(b, best) {
		case -1:
			best, ties = b, 1
		case 0:
			ties++
			if rand.IntN(ties) == 0 { // reservoir: each tie equally likely
				best = b
			}
		}
	}
	return best
}

// roundRobin is weighted round robin over the candidates.
func (f *Fleet) roundRobin(v *view, s set) *Backend {
	total := 0
	for rest := s; rest != 0; rest &= rest - 1 {
		total += v.slot[bits.TrailingZeros64(uint64(rest))].Weight
	}
	t := int(f.rr.Add(1) % uint64(total))
	var b *Backend
	for rest := s; rest != 0; rest &= rest - 1 {
		b = v.slot[bits.TrailingZeros64(uint64(rest))]
		if t < b.Weight {
			return b
		}
		t -= b.Weight
	}
	return b
}

// affinity is rendezvous (highest random weight) hashing with bounded
// loads: the candidates are ranked by a weighted hash of (conversation,
// backend name), the same ranking on every gateway replica, and the first
// whose outstanding requests (this one included) stay within its weighted
// share of the total takes the request. A request that continues a
// conversation has cached history to lose, so its bound is
// AffinityLoadFactor times that share, and never below SaturatedAt (at low
// load, one request over the mean is no reason to move); a first turn has
// nothing cached yet but the shared system prompt, and goes elsewhere as
// soon as its backend is over the mean, so single prompts spread as evenly
// as by load (bench fleet (a): TTFT p95 218 ms against 423 with the
// factor). While
// loads are even every replica sends a conversation to the same backend;
// a hot conversation or system prompt cannot pile onto one backend.
func (f *Fleet) affinity(v *view, s set, conv Conversation) *Backend {
	var total, weights int64
	for rest := s; rest != 0; rest &= rest - 1 {
		b := v.slot[bits.TrailingZeros64(uint64(rest))]
		total += b.outstanding.Load()
		weights += int64(b.Weight)
	}
	// Best score first; a fleet is a handful of backends, so each round
	// scans the ones left.
	for left := s; left != 0; {
		var best *Backend
		bestScore := math.Inf(-1)
		for rest := left; rest != 0; rest &= rest - 1 {
			b := v.slot[bits.TrailingZeros64(uint64(rest))]
			if sc := rendezvousScore(conv.Key, b); sc > bestScore {
				best, bestScore = b, sc
			}
		}
		share := float64(total+1) * float64(best.Weight) / float64(weights)
		bound := math.Ceil(share)
		if conv.Continues {
			bound = max(math.Ceil(f.cfg.AffinityLoadFactor*share), float64(f.cfg.SaturatedAt))
		}
		if float64(best.outstanding.Load()+1) <= bound {
			return best
		}
		left &^= set(best.Bit())
	}
	return v.leastLoaded(s)
}

// rendezvousScore is the weighted rendezvous score -w/ln(u), u uniform in
// (0,1) from a hash of the key and the backend's name (Schindelhauer and
// Schomaker's logarithmic method): each backend wins a share of keys
// proportional to its weight, and removing one moves only its keys.
func rendezvousScore(key uint64, b *Backend) float64 {
	h := mix64(key ^ b.hash)
	u := (float64(h>>11) + 0.5) / (1 << 53)
	return -float64(b.Weight) / math.Log(u)
}

// nameHash is FNV-1a of a backend's name: stable across processes, so
// every replica ranks alike.
func nameHash(name string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(name); i++ {
		h ^= uint64(name[i])
		h *= 1099511628211
	}
	return h
}

// mix64 is SplitMix64's finaliser.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}
