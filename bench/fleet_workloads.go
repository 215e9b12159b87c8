package main

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/vega-gateway/vega-gateway/ollamatest"
)

// fleetSize is the number of fake backends in the fleet case.
const fleetSize = 3

// The models of the fleet case, as a client names them.
const (
	modelA = "llama3.2"
	modelB = "qwen2.5:0.5b"
	modelC = "gemma3:1b"
)

// Every fake streams replies of fleetTokens tokens fleetTokenDelay apart.
const (
	fleetTokens     = 20
	fleetTokenDelay = 10 * time.Millisecond
	// fleetThink is the mean pause of a user in a conversation between a
	// reply and the next message (drawn from 0.5–1.5 times it): without
	// one, the backend a conversation has just left is the least loaded
	// one, and least_loaded would keep conversations in place by chance.
	fleetThink = time.Second
)

// fleetWorkload is one table of the fleet case: the fakes' settings, the
// load, and the targets it is held to.
type fleetWorkload struct {
	id, title string
	fakes     [fleetSize]ollamatest.SchedulerConfig
	models    []string // installed on every fake
	warm      []string // loaded on every fake before the proxy starts
	clients   int      // concurrent clients, each one conversation at a time
	// next draws a client's next conversation.
	next func(r *rand.Rand) conversation
	// outage: backend 2 is killed (SIGKILL) a third into the measured
	// window and started again, cold, on the same port a while later.
	outage  bool
	targets []fleetTarget
}

// conversation is what one client sends: one request per user message,
// each resending the ones before with the replies to them, the next one
// think after a reply.
type conversation struct {
	model  string
	system string
	users  []string
	think  []time.Duration // before users[i+1]
}

// fleetTarget is a row that holds a variant to a target, as a value or as
// a ratio to the baseline variant's.
type fleetTarget struct {
	label    string
	baseline string // the variant divided by; "" for a plain value
	get      func(r fleetResult) float64
	pass     func(v float64) bool
	format   string // for the value
}

// fleetWorkloads builds the five workloads for n clients (at least 4; (b)
// gets half as many, (e) a quarter more). Sizes are for a 2-core machine
// (the servers share one core): enough load that requests queue on a
// backend, so routing matters, and not so much that every variant
// saturates. At n = 12: (a) 4 requests per backend of 2 slots; (b) 6 clients
// for 6 slots, the most-asked model alone filling one backend's 2 slots and
// queueing there (12 saturate every variant: a backend per model cannot
// serve 60 % of them without a queue); (c) 4 conversations per backend of
// 4 slots, so each can keep its slot's cache; (e) 5 requests per backend,
// more than b1's slot and queue of 2 hold.
func fleetWorkloads(n int, seed uint64) []*fleetWorkload {
	// (a), (d), (e): short single-turn chats of one model.
	single := func(r *rand.Rand) conversation {
		return conversation{model: modelA, users: []string{sentence(r, 10)}}
	}
	common := ollamatest.SchedulerConfig{NumParallel: 2, LoadTime: 500 * time.Millisecond, PromptTokenTime: 200 * time.Microsecond}
	same := func(c ollamatest.SchedulerConfig) [fleetSize]ollamatest.SchedulerConfig {
		return [fleetSize]ollamatest.SchedulerConfig{c, c, c}
	}

	mixed := common
	mixed.LoadTime = time.Second
	weighted := func(r *rand.Rand) conversation {
		m := modelA
		switch x := r.IntN(10); {
		case x >= 9:
			m = modelC
		case x >= 6:
			m = modelB
		}
		return conversation{model: m, users: []string{sentence(r, 10)}}
	}

	// Many users' conversations on one model: Ollama's multi-user prompt
	// cache (OLLAMA_MULTIUSER_CACHE=1), the setting for this load, keeps a
	// slot per conversation where the default would let each new
	// conversation overwrite the first slot.
	prefill := ollamatest.SchedulerConfig{NumParallel: 4, LoadTime: 500 * time.Millisecond, PromptTokenTime: time.Millisecond, MultiUserCache: true}
	system := sentence(rand.New(rand.NewPCG(seed, 0x5e)), 300)
	chats := func(r *rand.Rand) conversation {
		c := conversation{model: modelA, system: system}
		for i := range 4 + r.IntN(3) {
			c.users = append(c.users, sentence(r, 30))
			if i > 0 {
				c.think = append(c.think, time.Duration(float64(fleetThink)*(0.5+r.Float64())))
			}
		}
		return c
	}

	small := [fleetSize]ollamatest.SchedulerConfig{common, common, common}
	small[0].NumParallel, small[0].MaxQueue = 1, 2

	return []*fleetWorkload{
		{
			id: "a", title: fmt.Sprintf("one model, single-turn streamed chats, %d clients", n),
			fakes: same(common), models: []string{modelA}, clients: n, next: single,
			targets: []fleetTarget{
				{label: "req/s ÷ round_robin's (target ≥ 0.95)", baseline: "round_robin",
					get: func(r fleetResult) float64 { return r.rps }, pass: atLeast(0.95), format: "%.2f"},
				{label: "largest per-backend share off its weight (target ≤ 10 %)",
					get: shareSkew, pass: atMost(10), format: "%.1f %%"},
			},
		},
		{
			id: "b", title: fmt.Sprintf("three models 60/30/10, one loaded per backend, 1 s loads, %d clients", n/2),
			fakes: same(mixed), models: []string{modelA, modelB, modelC}, clients: n / 2, next: weighted,
			targets: []fleetTarget{
				{label: "cold loads ÷ round_robin's (target ≤ 0.10)", baseline: "round_robin",
					get: func(r fleetResult) float64 { return float64(r.total().ColdLoads) }, pass: atMost(0.10), format: "%.2f"},
				{label: "TTFT p95 ÷ round_robin's (target ≤ 0.30)", baseline: "round_robin",
					get: func(r fleetResult) float64 { return float64(r.ttft95) }, pass: atMost(0.30), format: "%.2f"},
			},
		},
		{
			id: "c", title: fmt.Sprintf("%d conversations of 4–6 turns (users think %s), one 300-word system prompt for all, 4 slots per backend with the multi-user cache, 1 ms prefill per uncached token", n, fleetThink),
			fakes: same(prefill), models: []string{modelA}, warm: []string{modelA}, clients: n, next: chats,
			targets: []fleetTarget{
				{label: "prompt tokens from cache (target ≥ 80 %)",
					get: cacheShare, pass: atLeast(80), format: "%.1f %%"},
				{label: "TTFT p50 ÷ least_loaded's (target ≤ 0.50)", baseline: "least_loaded",
					get: func(r fleetResult) float64 { return float64(r.ttft50) }, pass: atMost(0.50), format: "%.2f"},
			},
		},
		{
			id: "d", title: fmt.Sprintf("as (a), backend b2 killed (SIGKILL) a third into the window and restarted cold on its port, %d clients", n),
			fakes: same(common), models: []string{modelA}, clients: n, next: single, outage: true,
			targets: []fleetTarget{
				{label: "failed before the response started (target 0)",
					get: func(r fleetResult) float64 { return float64(r.failedBefore) }, pass: atMost(0), format: "%.0f"},
			},
		},
		{
			id: "e", title: fmt.Sprintf("b1 with one slot and a queue of 2 (b2, b3: 2 slots, queue 512), %d clients", n+n/4),
			fakes: small, models: []string{modelA}, clients: n + n/4, next: single,
			targets: []fleetTarget{
				{label: "busy 503s reaching clients (target 0)",
					get: func(r fleetResult) float64 { return float64(r.busy) }, pass: atMost(0), format: "%.0f"},
			},
		},
	}
}

func atLeast(x float64) func(float64) bool { return func(v float64) bool { return v >= x } }
func atMost(x float64) func(float64) bool  { return func(v float64) bool { return v <= x } }

// shareSkew is the largest departure of a backend's share of the
// inference requests from its weight's (equal weights: a third), in
// percent of that share; NaN when unknown.
func shareSkew(r fleetResult) float64 {
	shares, ok := r.shares()
	if !ok {
		return math.NaN()
	}
	worst := 0.0
	for _, s := range shares {
		worst = max(worst, math.Abs(s*fleetSize-1)*100)
	}
	return worst
}

// cacheShare is the percentage of prompt tokens the fakes found in a
// slot's prompt cache.
func cacheShare(r fleetResult) float64 {
	t := r.total()
	if t.PromptTokens == 0 {
		return math.NaN()
	}
	return 100 * float64(t.CachedPromptTokens) / float64(t.PromptTokens)
}

// vocabulary is what prompts are made of: whitespace-separated words, the
// fake's prompt tokens.
var vocabulary = strings.Fields(`time person year way day thing man world life hand part child eye woman place
work week case point government company number group problem fact river stone garden window letter music
paper question answer table morning evening winter summer city country road bridge market school doctor
engine story picture language reason result moment kitchen forest island mountain ocean planet station
market theory method system signal pattern energy motion balance harbor lantern meadow orchard valley
canyon glacier compass feather mirror candle button ladder pocket ribbon saddle tunnel velvet whistle
anchor basket cellar chimney desert fabric hammer insect jacket kettle magnet needle puzzle quarter`)

// sentence is n words drawn from the vocabulary.
func sentence(r *rand.Rand, n int) string {
	var b strings.Builder
	for i := range n {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(vocabulary[r.IntN(len(vocabulary))])
	}
	return b.String()
}
