package ollamatest

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// replyWords are the tokens of every generated reply, in order, cycling.
var replyWords = [...]string{"The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog", "."}

// ReplyToken returns token i (from 0) of every generated reply: the words of
// "The quick brown fox jumps over the lazy dog." with their leading spaces,
// cycling (" The" after ".").
func ReplyToken(i int) string {
	w := replyWords[i%len(replyWords)]
	if i > 0 && i%len(replyWords) == 0 {
		return " " + w
	}
	return w
}

// ReplyText returns the text of a reply of n tokens; with DefaultTokens it is
// "The quick brown fox jumps over the lazy".
func ReplyText(n int) string {
	var b strings.Builder
	for i := range n {
		b.WriteString(ReplyToken(i))
	}
	return b.String()
}

// hugeMarker stands for the huge_line payload inside a frame.
const hugeMarker = "@@OLLAMATEST_HUGE_LINE@@"

// script describes a streamed reply as frames: head, then one group per
// unit (a token, a progress step), then tail. Frame counts for fault modes
// run across all three.
type script struct {
	contentType string
	head        [][]byte
	units       int // -1: forever
	unit        func(i int, tok string) [][]byte
	tail        func(units int) [][]byte
	fail        func(msg string) []byte // an in-band terminal error record
}

// frameIter yields a script's frames one by one, building them lazily.
type frameIter struct {
	sc    *script
	queue [][]byte
	stage int
	i     int
	huge  bool
}

func (it *frameIter) next() ([]byte, bool) {
	for len(it.queue) == 0 {
		switch it.stage {
		case 0:
			it.queue, it.stage = it.sc.head, 1
		case 1:
			if it.sc.units >= 0 && it.i >= it.sc.units {
				it.stage = 2
				continue
			}
			tok := ReplyToken(it.i)
			if it.huge && it.i == 0 {
				tok = hugeMarker
			}
			it.queue = it.sc.unit(it.i, tok)
			it.i++
		case 2:
			it.queue, it.stage = it.sc.tail(it.i), 3
		default:
			return nil, false
		}
	}
	f := it.queue[0]
	it.queue = it.queue[1:]
	return f, true
}

// stream sends sc with status 200, applying the stream fault modes.
func (x *exchange) stream(sc *script) {
	x.w.Header().Set("Content-Type", sc.contentType)
	x.w.WriteHeader(http.StatusOK)
	if !x.flush() {
		return
	}
	it := &frameIter{sc: sc, huge: x.f.mode == FaultHugeLine}
	delay := x.s.cfg.TokenDelay
	switch x.f.mode {
	case FaultInfinite:
		sc.units = -1
		delay = max(delay, InfiniteMinDelay)
	case FaultTrickle:
		sc.units = -1
		x.trickle(it)
		return
	}
	for sent := 0; ; sent++ {
		frame, ok := it.next()
		if !ok {
			return
		}
		if sent > 0 && !x.pause(delay) {
			return
		}
		switch f := x.f; f.mode {
		case FaultStallAfter:
			if sent == f.n {
				x.waitGone()
				return
			}
		case FaultDieAfter, FaultRSTAfter:
			if sent == f.n {
				x.abort(f.mode == FaultRSTAfter)
				return
			}
		case FaultErrorAfter:
			if sent == f.n {
				_ = x.write(sc.fail(StreamErrorMessage)) && x.flush()
				return
			}
		case FaultHalfLine:
			if sent == 1 {
				if x.write(frame[:len(frame)/2]) && x.flush() {
					x.abort(false)
				}
				return
			}
		case FaultGated:
			if sent > 0 && !x.waitGate() {
				return
			}
		}
		if !x.writeFrame(frame) {
			return
		}
	}
}

// writeFrame writes and flushes one frame, expanding the huge_line marker.
func (x *exchange) writeFrame(frame []byte) bool {
	if before, after, ok := bytes.Cut(frame, []byte(hugeMarker)); ok {
		if !x.write(before) || !x.fill(HugeLineSize) || !x.write(after) {
			return false
		}
		return x.flush()
	}
	return x.write(frame) && x.flush()
}

// trickle sends the stream one byte at a time until the client leaves.
func (x *exchange) trickle(it *frameIter) {
	d := x.s.cfg.TokenDelay
	if d <= 0 {
		d = TrickleInterval
	}
	for {
		frame, ok := it.next()
		if !ok {
			return
		}
		for i := range frame {
			if !x.write(frame[i:i+1]) || !x.flush() || !x.pause(d) {
				return
			}
		}
	}
}

// ndjson encodes v as one NDJSON line.
func ndjson(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return append(b, '\n')
}

// sseData encodes v as one "data:" SSE event.
func sseData(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return append(append([]byte("data: "), b...), "\n\n"...)
}

// sseEvent encodes v as one named SSE event.
func sseEvent(name string, v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return append(append([]byte("event: "+name+"\ndata: "), b...), "\n\n"...)
}

// gen is one generation: its length, stop reason, prompt and clock.
type gen struct {
	model      string
	n          int    // tokens
	reason     string // "stop", or "length" when num_predict cut it
	promptToks int
	promptEval time.Duration // reported prompt_eval_duration
	start      time.Time     // request read
	loaded     time.Time     // model loaded
	evalStart  time.Time     // prompt evaluated, generation starts

	// Scheduler mode only.
	sched     bool           // the server has a scheduler
	prompt    []string       // prompt tokens (see turn and words)
	replyTag  string         // tag of the reply's cached tokens ("assistant:" for chat)
	embed     bool           // an embedding: no prompt cache
	keepAlive *time.Duration // the request's keep_alive; nil if absent
}

// newGen sizes a reply: Config.Tokens or TokensHeader, cut to numPredict.
// Prompt evaluation is accounted at 10µs a token unless the scheduler
// times it.
func (x *exchange) newGen(model string, numPredict, promptToks int) *gen {
	g := &gen{model: model, n: x.s.cfg.Tokens, reason: "stop", promptToks: promptToks, start: x.rec.Received,
		promptEval: time.Duration(max(promptToks, 1)) * 10 * time.Microsecond, sched: x.s.sched != nil}
	if v, err := strconv.Atoi(x.r.Header.Get(TokensHeader)); err == nil && v >= 0 {
		g.n = v
	}
	if numPredict > 0 && numPredict < g.n {
		g.n, g.reason = numPredict, "length"
	}
	return g
}

// metrics are Ollama's final-chunk timings and counts (nanoseconds).
type metrics struct {
	TotalDuration      time.Duration `json:"total_duration,omitempty"`
	LoadDuration       time.Duration `json:"load_duration,omitempty"`
	PromptEvalCount    int           `json:"prompt_eval_count,omitempty"`
	PromptEvalDuration time.Duration `json:"prompt_eval_duration,omitempty"`
	EvalCount          int           `json:"eval_count,omitempty"`
	EvalDuration       time.Duration `json:"eval_duration,omitempty"`
}

// metrics reports the generation after n tokens.
func (g *gen) metrics(n int) metrics {
	now := time.Now()
	return metrics{
		TotalDuration:      max(now.Sub(g.start), 1),
		LoadDuration:       max(g.loaded.Sub(g.start), 1),
		PromptEvalCount:    g.promptToks,
		PromptEvalDuration: g.promptEval,
		EvalCount:          n,
		EvalDuration:       max(now.Sub(g.evalStart), 1),
	}
}

// wordCount approximates tokens as whitespace-separated words.
func wordCount(texts ...string) int {
	n := 0
	for _, t := range texts {
		n += len(strings.Fields(t))
	}
	return n
}

// prepare loads the model (in scheduler mode: waits for it and a slot, and
// prefills) and, for a non-streamed reply, waits as long as streaming it
// would take. It reports false if the request ended meanwhile.
func (x *exchange) prepare(g *gen, streamed bool) bool {
	if x.s.sched != nil && !isFaultModel(g.model) {
		if !x.s.sched.acquire(x, g) {
			return false
		}
	} else {
		if !x.s.load(x, g.model) {
			return false
		}
		g.loaded = time.Now()
		g.evalStart = g.loaded
	}
	if streamed {
		return true
	}
	return x.pause(time.Duration(g.n) * x.s.cfg.TokenDelay)
}
