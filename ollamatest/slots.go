package ollamatest

import "strings"

// Prompts are tokenised deterministically: whitespace-separated words, a
// chat message's tagged with its role. Each of a runner's slots remembers
// the tokens it last processed, and a prompt that starts with them skips
// their prefill, as with llama.cpp's cache_prompt.

// slot is one of a runner's parallel sequences with its prompt cache.
type slot struct {
	busy  bool
	cache []string // the tokens it last processed
}

// grant starts the leases queued on r, in order, while r has free slots.
// Like Ollama's runner (findLongestCacheSlot), each gets the free slot whose
// cache shares the longest prefix with its prompt; a prompt found whole
// still evaluates its last token. Callers hold mu.
func (sc *scheduler) grant(r *runner) {
	for len(r.queue) > 0 {
		l := r.queue[0]
		best, longest := -1, -1
		for i := range r.slots {
			if s := &r.slots[i]; !s.busy {
				if n := commonPrefix(s.cache, l.prompt); n > longest {
					best, longest = i, n
				}
			}
		}
		if best < 0 {
			return
		}
		r.queue = r.queue[1:]
		switch {
		case l.noCache:
			longest = 0
		case longest == len(l.prompt) && longest > 0:
			longest--
		}
		s := &r.slots[best]
		s.busy, s.cache = true, l.prompt
		l.slot, l.cached = best, longest
		sc.started(l)
		sc.st.PromptTokens += int64(len(l.prompt))
		sc.st.CachedPromptTokens += int64(longest)
		close(l.granted)
	}
}

// commonPrefix is the number of leading tokens a and b share.
func commonPrefix(a, b []string) int {
	n := 0
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	return n
}

// turn adds a chat message's words to g's prompt tokens, each tagged with
// the message's role ("user:hi"), so two prompts share a cached prefix only
// where their words agree; the reply is cached as the assistant's words.
// It does nothing outside scheduler mode.
func (g *gen) turn(role, content string) {
	if !g.sched {
		return
	}
	g.replyTag = "assistant:"
	for _, w := range strings.Fields(content) {
		g.prompt = append(g.prompt, role+":"+w)
	}
}

// words adds texts' words to g's prompt tokens (scheduler mode only).
func (g *gen) words(texts ...string) {
	if !g.sched {
		return
	}
	for _, t := range texts {
		g.prompt = append(g.prompt, strings.Fields(t)...)
	}
}

// processed is what a slot holds once g is done: the prompt tokens, then the
// reply's words tagged like the prompt's, so the next turn of a
// conversation finds both. Embeddings keep no cache: nil.
func (g *gen) processed() []string {
	if g.embed {
		return nil
	}
	reply := strings.Fields(ReplyText(g.n))
	out := make([]string, 0, len(g.prompt)+len(reply))
	out = append(out, g.prompt...)
	for _, w := range reply {
		out = append(out, g.replyTag+w)
	}
	return out
}
