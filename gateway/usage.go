package gateway

import (
	"bytes"
	"encoding/json"
)

// Token counts for the routes whose replies the known-shape readers
// (readFinalChunk, readOpenAIUsage) do not cover whole: the end of a long
// non-streamed reply, Anthropic's and the Responses API's usage objects,
// and embeddings. The keys searched for cannot occur inside a JSON string
// unescaped (a quote there is written \"), so the bytes `"usage":{` or
// `"eval_count":` are always the keys themselves.
var (
	promptEvalCountKey = []byte(`"prompt_eval_count":`)
	evalCountKey       = []byte(`"eval_count":`)
)

// tokenUsage is any of the usage objects Ollama writes: OpenAI's
// (prompt_tokens, completion_tokens; embeddings have prompt_tokens only),
// Anthropic's and the Responses API's (input_tokens, output_tokens).
type tokenUsage struct {
	PromptTokens     int64 `json:"prompt_tokens"`
	CompletionTokens int64 `json:"completion_tokens"`
	InputTokens      int64 `json:"input_tokens"`
	OutputTokens     int64 `json:"output_tokens"`
}

// readTokenCounts records the token counts found in b: Ollama's native
// prompt_eval_count and eval_count on /api routes (where a tool call's
// arguments, a JSON object, could hold a "usage" key), the last usage
// object on the others. b may
// be a whole reply, one stream event, or the tail of a long body; counts
// only ever grow (Anthropic's message_start carries the input, its
// message_delta both, cumulatively).
func readTokenCounts(x *exchange, b []byte) {
	if x.route.family != familyNative {
		i := bytes.LastIndex(b, usageKey)
		if i < 0 {
			return
		}
		var u tokenUsage
		if json.NewDecoder(bytes.NewReader(b[i+len(usageKey)-1:])).Decode(&u) != nil {
			return
		}
		x.promptTokens = max(x.promptTokens, u.PromptTokens+u.InputTokens)
		x.completionTokens = max(x.completionTokens, u.CompletionTokens+u.OutputTokens)
		return
	}
	if i := bytes.LastIndex(b, promptEvalCountKey); i >= 0 {
		x.promptTokens = max(x.promptTokens, leadingInt(b[i+len(promptEvalCountKey):]))
	}
	if i := lastEvalCount(b); i >= 0 {
		x.completionTokens = max(x.completionTokens, leadingInt(b[i+len(evalCountKey):]))
	}
}

// lastEvalCount finds the last `"eval_count":` that is not the tail of
// `"prompt_eval_count":`.
func lastEvalCount(b []byte) int {
	for end := len(b); ; {
		i := bytes.LastIndex(b[:end], evalCountKey)
		if i < 0 {
			return -1
		}
		if i == 0 || b[i-1] != '_' {
			return i
		}
		end = i
	}
}

// tokenTailBytes is how much of the end of a long reply is kept to read
// its counts from: the usage object or Ollama's metrics come last, and
// fit with room to spare.
const tokenTailBytes = 4 << 10

// countsTokens reports whether a route's replies carry token counts.
func countsTokens(r route) bool {
	switch r.name {
	case "/api/chat", "/api/generate", "/api/embed", "/api/embeddings",
		"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/messages":
		return true
	}
	return false
}

// keepTail appends p to the bounded tail t (cap tokenTailBytes), dropping
// its oldest bytes.
func keepTail(t, p []byte) []byte {
	if len(p) >= cap(t) {
		return append(t[:0], p[len(p)-cap(t):]...)
	}
	if over := len(t) + len(p) - cap(t); over > 0 {
		t = t[:copy(t, t[over:])]
	}
	return append(t, p...)
}

// askUsage returns the body of a streamed /v1/chat/completions request
// whose key has a token budget, with stream_options.include_usage added
// when the client gave no stream_options: without it Ollama reports no
// counts. The usage chunk it then sends is not relayed (x.dropUsage), so
// the client gets the stream it asked for. A client that set
// stream_options without include_usage keeps its body; its stream is
// charged by estimate (exchange.chargedTokens).
func askUsage(x *exchange, body []byte) []byte {
	var b struct {
		Stream        bool            `json:"stream"`
		StreamOptions json.RawMessage `json:"stream_options"`
	}
	if json.Unmarshal(body, &b) != nil || !b.Stream || b.StreamOptions != nil {
		return body
	}
	trimmed := bytes.TrimLeft(body, " \t\r\n")
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return body
	}
	rest := bytes.TrimLeft(trimmed[1:], " \t\r\n")
	out := make([]byte, 0, len(body)+len(includeUsage)+1)
	out = append(out, includeUsage...)
	if len(rest) > 0 && rest[0] != '}' {
		out = append(out, ',')
	}
	x.dropUsage = true
	return append(out, rest...)
}

var (
	includeUsage = []byte(`{"stream_options":{"include_usage":true}`)
	emptyChoices = []byte(`"choices":[]`)
)

// usageOnly reports whether an SSE frame is the usage chunk Ollama sends
// last when asked for usage: no choices, only the counts.
func usageOnly(frame []byte) bool {
	return bytes.Contains(frame, emptyChoices) && bytes.Contains(frame, usageKey)
}
