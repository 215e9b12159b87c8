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
	// lastUsed orders the slots by their last grant (scheduler.uses).
	lastUsed int64
}

// grant starts the leases queued on r, in order, while r has free slots.
// Each gets a slot as Ollama's runner chooses it (longestSlot, or bestSlot
// with MultiUserCache); a prompt found whole still evaluates its last
// token. Callers hold mu.
func (sc *scheduler) grant(r *runner) {
	for len(r.queue) > 0 {
		l := r.queue[0]
		best, longest := longestSlot(r.slots, l.prompt)
		if sc.cfg.MultiUserCache {
			best, longest = bestSlot(r.slots, l.prompt)
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
		sc.uses++
		s.busy, s.cache, s.lastUsed = true, l.prompt, sc.uses
		l.slot, l.cached = best, longest
		sc.started(l)
		sc.st.PromptTokens += int64(len(l.prompt))
		sc.st.CachedPromptTokens += int64(longest)
		close(l.granted)
	}
}

// longestSlot is Ollama's default choice (findLongestCacheSlot): the free
// slot sharing the longest prefix with prompt, the first on a tie; -1 when
// every slot is busy.
func longestSlot(slots []slot, prompt []string) (best, longest int) {
	best, longest = -1, -1
	for i := range slots {
		if s := &slots[i]; !s.busy {
			if n := commonPrefix(s.cache, prompt); n > longest {
				best, longest = i, n
			}
		}
	}
	return best, longest
}

// bestSlot is Ollama's choice with OLLAMA_MULTIUSER_CACHE
// (findBestCacheSlot): a free slot whose whole cache prompt extends, else
// the least recently used free slot, into which the longest prefix any
// slot holds is copied; -1 when every slot is busy.
func bestSlot(slots []slot, prompt []string) (best, longest int) {
	longest, longestAt, oldest := -1, -1, -1
	for i := range slots {
		s := &slots[i]
		if n := commonPrefix(s.cache, prompt); n > longest {
			longest, longestAt = n, i
		}
		if !s.busy && (oldest < 0 || s.lastUsed < slots[oldest].lastUsed) {
			oldest = i
		}
	}
	if s := &slots[longestAt]; longest == len(s.cache) && !s.busy {
		return longestAt, longest
	}
	return oldest, longest
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
