package gateway_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	ollama "github.com/ollama/ollama/api"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/vega-gateway/vega-gateway/access"
	"github.com/vega-gateway/vega-gateway/cache"
	"github.com/vega-gateway/vega-gateway/gateway"
	"github.com/vega-gateway/vega-gateway/limits"
)

// tokenReply is what the test upstream answers on one path: a body, SSE or
// JSON, sent either with a Content-Length or, as Ollama's net/http server
// sends anything over ~2 KiB, chunked.
type tokenReply struct {
	sse     bool
	body    string
	chunked bool
}

// ollamaJSON marshals v as Ollama's server does (gin c.JSON).
func ollamaJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestTokenBudgetCharged: every inference reply shape Ollama sends is
// charged to the key's token budget — non-streamed answers sent chunked
// (over ~2 KiB, the usual case), Anthropic's /v1/messages and the
// Responses API (input_tokens/output_tokens, streamed and not), and
// embeddings without the cache. Each case has a key whose tokens_per_day
// is exactly the reply's count: the key's use reads that count, and its
// next request is refused with 429 token_budget_exhausted.
func TestTokenBudgetCharged(t *testing.T) {
	long := strings.Repeat("lorem ipsum \\\"eval_count\\\":1 ", 400) // ~12 KiB, text that mimics the keys
	metrics := ollama.Metrics{TotalDuration: 5 * time.Second, PromptEvalCount: 26, EvalCount: 290, EvalDuration: time.Second}
	chat := ollamaJSON(t, ollama.ChatResponse{Model: "llama3.2", Message: ollama.Message{Role: "assistant", Content: strings.Repeat("word ", 3000)},
		Done: true, DoneReason: "stop", Metrics: metrics})
	ctxIDs := make([]int, 3000)
	for i := range ctxIDs {
		ctxIDs[i] = 100000 + i
	}
	generate := ollamaJSON(t, ollama.GenerateResponse{Model: "llama3.2", Response: strings.Repeat("word ", 3000), Done: true, DoneReason: "stop",
		Context: ctxIDs, Metrics: metrics})
	vec := make([]float32, 3072)
	for i := range vec {
		vec[i] = 0.0123456 * float32(i%97)
	}
	embed := ollamaJSON(t, ollama.EmbedResponse{Model: "nomic-embed-text", Embeddings: [][]float32{vec}, PromptEvalCount: 7})
	// Field orders as Ollama's openai and anthropic packages write them.
	v1embed := `{"object":"list","data":[{"object":"embedding","embedding":` + ollamaJSON(t, vec) + `,"index":0}],"model":"nomic-embed-text","usage":{"prompt_tokens":7,"total_tokens":7}}`
	completion := `{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"llama3.2","system_fingerprint":"fp_ollama","choices":[{"index":0,"message":{"role":"assistant","content":"` + long + `"},"finish_reason":"stop"}],"usage":{"prompt_tokens":26,"completion_tokens":290,"total_tokens":316}}`
	message := func(text string) string {
		return `{"id":"msg_1","type":"message","role":"assistant","model":"llama3.2","content":[{"type":"text","text":"` + text + `"}],"stop_reason":"end_turn","usage":{"input_tokens":26,"output_tokens":290}}`
	}
	response := func(text string) string {
		return `{"id":"resp_1","object":"response","created_at":1,"completed_at":2,"status":"completed","incomplete_details":null,"model":"llama3.2","previous_response_id":null,"instructions":null,"output":[{"id":"msg_1","type":"message","status":"completed","role":"assistant","content":[{"type":"output_text","text":"` + text + `","annotations":[]}]}],"error":null,"tools":[],"tool_choice":"auto","truncation":"disabled","parallel_tool_calls":true,"text":{"format":{"type":"text"}},"top_p":1,"presence_penalty":0,"frequency_penalty":0,"top_logprobs":0,"temperature":1,"reasoning":null,"usage":{"input_tokens":26,"output_tokens":290,"total_tokens":316,"input_tokens_details":{"cached_tokens":0},"output_tokens_details":{"reasoning_tokens":0}},"max_output_tokens":null,"max_tool_calls":null,"store":false,"background":false,"service_tier":"default","metadata":{},"safety_identifier":null,"prompt_cache_key":null}`
	}
	messageEvents := "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"llama3.2\",\"content\":[],\"usage\":{\"input_tokens\":26,\"output_tokens\":0}}}\n\n" +
		"event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n" +
		"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"hi\"}}\n\n" +
		"event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n" +
		"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"input_tokens\":26,\"output_tokens\":290}}\n\n" +
		"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"
	responseEvents := "event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"resp_1\",\"object\":\"response\",\"status\":\"in_progress\",\"usage\":null}}\n\n" +
		"event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"sequence_number\":1,\"item_id\":\"msg_1\",\"output_index\":0,\"content_index\":0,\"delta\":\"hi\"}\n\n" +
		"event: response.completed\ndata: {\"type\":\"response.completed\",\"sequence_number\":2,\"response\":" + response("hi") + "}\n\n"

	tests := []struct {
		name, path string
		reply      tokenReply
		want       int64
	}{
		{"/api/chat not streamed, chunked", "/api/chat", tokenReply{body: chat, chunked: true}, 316},
		{"/api/generate not streamed, chunked, long context", "/api/generate", tokenReply{body: generate, chunked: true}, 316},
		{"/v1/chat/completions not streamed, chunked", "/v1/chat/completions", tokenReply{body: completion, chunked: true}, 316},
		{"/v1/messages", "/v1/messages", tokenReply{body: message("hi")}, 316},
		{"/v1/messages chunked", "/v1/messages", tokenReply{body: message(long), chunked: true}, 316},
		{"/v1/messages streamed", "/v1/messages", tokenReply{sse: true, body: messageEvents}, 316},
		{"/v1/responses", "/v1/responses", tokenReply{body: response("hi")}, 316},
		{"/v1/responses chunked", "/v1/responses", tokenReply{body: response(long), chunked: true}, 316},
		{"/v1/responses streamed", "/v1/responses", tokenReply{sse: true, body: responseEvents}, 316},
		{"/api/embed", "/api/embed", tokenReply{body: `{"model":"nomic-embed-text","embeddings":[[0.1,0.2]],"total_duration":1,"load_duration":1,"prompt_eval_count":7}`}, 7},
		{"/api/embed chunked", "/api/embed", tokenReply{body: embed, chunked: true}, 7},
		{"/v1/embeddings chunked", "/v1/embeddings", tokenReply{body: v1embed, chunked: true}, 7},
	}
	var current tokenReply
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		if current.sse {
			w.Header().Set("Content-Type", "text/event-stream")
		} else {
			w.Header().Set("Content-Type", "application/json; charset=utf-8")
		}
		if !current.chunked {
			w.Header().Set("Content-Length", strconv.Itoa(len(current.body)))
		}
		_, _ = io.WriteString(w, current.body)
	}))
	defer up.Close()
	var keys []access.KeyConfig
	for i, tc := range tests {
		keys = append(keys, access.KeyConfig{Name: fmt.Sprintf("k%d", i), Key: fmt.Sprintf("token-key-%02d-0123456789abcdef0123456789", i), TokensPerDay: tc.want})
	}
	e := startEnv(t, envOptions{noFake: true, upURL: up.URL, auth: access.Config{Keys: keys}, gateway: countInFlight})
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			current = tc.reply
			hdr := map[string]string{"X-API-Key": keys[i].Key}
			req := `{"model":"llama3.2","stream":` + strconv.FormatBool(tc.reply.sse) + `}`
			st, h, body := e.do("POST", tc.path, req, hdr)
			if st != 200 || string(body) != tc.reply.body {
				t.Fatalf("%d, %d bytes relayed, want %d", st, len(body), len(tc.reply.body))
			}
			if tc.reply.chunked && h.Get("Content-Length") != "" {
				t.Fatalf("the upstream reply was meant to be chunked; Content-Length %s", h.Get("Content-Length"))
			}
			if got := tokensToday(t, e, keys[i].Name); got != tc.want {
				t.Fatalf("charged %d tokens, want %d", got, tc.want)
			}
			if st, _, body := e.do("POST", tc.path, req, hdr); st != 429 || !strings.Contains(string(body), "tokens_per_day budget is used up") {
				t.Fatalf("after the budget: %d %s", st, body)
			}
		})
	}
}

// tokensToday is the key's tokens charged today, from the limiter.
func tokensToday(t *testing.T, e *env, name string) int64 {
	t.Helper()
	var got int64 = -1
	waitFor(t, 2*time.Second, "usage of "+name, func() bool { // charged when the exchange finishes, after the last byte
		u, err := e.gw.Limiter().Usage()
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range u {
			if k.Name == name {
				got = k.TokensToday
			}
		}
		return got > 0
	})
	return got
}

// keyUsage is the key's use, read once the gateway has finished every
// request (tokens are charged as an exchange finishes, after its last byte).
// countInFlight makes the gateway count requests until finish has charged
// them (gateway.max_in_flight, far above what a test sends), which is what
// keyUsage waits on: a stream's exchange finishes just after its client has
// read the last byte.
var countInFlight = gateway.Config{MaxInFlight: 1 << 20}

func keyUsage(t *testing.T, e *env, name string) limits.KeyUsage {
	t.Helper()
	waitFor(t, 2*time.Second, "requests finished", func() bool { return e.gw.InFlight() == 0 })
	u, err := e.gw.Limiter().Usage()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range u {
		if k.Name == name {
			return k
		}
	}
	t.Fatalf("no usage for key %s in %v", name, u)
	return limits.KeyUsage{}
}

// TestCacheHitChargesNoTokens: a response-cache hit costs the backend
// nothing, so it costs the key's token budget nothing either; its
// requests_per_minute still counts it. The miss before it is charged.
func TestCacheHitChargesNoTokens(t *testing.T) {
	e := startCacheEnv(t, cache.Config{}, access.Config{Keys: []access.KeyConfig{
		{Name: "a", Key: keyA, TokensPerDay: 1 << 30, RequestsPerMinute: 1000}}})
	hdr := map[string]string{"X-API-Key": keyA}
	for _, tc := range []struct{ name, path, body string }{
		{"native chat stream", "/api/chat", `{"model":"llama3.2","messages":[{"role":"user","content":"hi"}],"options":{"temperature":0,"seed":42}}`},
		{"native generate reply", "/api/generate", `{"model":"llama3.2","prompt":"hi","stream":false,"options":{"seed":7,"temperature":0.0}}`},
		{"openai chat stream", "/v1/chat/completions", `{"model":"llama3.2","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true},"temperature":0,"seed":1}`},
		{"openai completion reply", "/v1/completions", `{"model":"llama3.2","prompt":"hi","temperature":0,"seed":1}`},
		{"vega chat reply", "/chat", `{"model":"llama3.2","prompt":"hello","options":{"temperature":0,"seed":3}}`},
		{"native embed", "/api/embed", `{"model":"nomic-embed-text","input":["alpha","beta"]}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := keyUsage(t, e.env, "a")
			if st, h, body := e.do("POST", tc.path, tc.body, hdr); st != 200 || h.Get(gateway.HeaderCache) != "miss" {
				t.Fatalf("first: %d %q %s", st, h.Get(gateway.HeaderCache), body)
			}
			miss := keyUsage(t, e.env, "a")
			if miss.TokensToday <= before.TokensToday {
				t.Fatalf("the miss charged %d tokens, want its reply's count", miss.TokensToday-before.TokensToday)
			}
			if st, h, body := e.do("POST", tc.path, tc.body, hdr); st != 200 || h.Get(gateway.HeaderCache) != "hit" {
				t.Fatalf("second: %d %q %s", st, h.Get(gateway.HeaderCache), body)
			}
			hit := keyUsage(t, e.env, "a")
			if hit.TokensToday != miss.TokensToday {
				t.Fatalf("the hit charged %d tokens, want 0", hit.TokensToday-miss.TokensToday)
			}
			if hit.RequestsThisMinute != miss.RequestsThisMinute+1 && hit.RequestsThisMinute != 1 { // 1: a new minute began
				t.Fatalf("requests this minute %d after %d: the hit was not counted", hit.RequestsThisMinute, miss.RequestsThisMinute)
			}
		})
	}
}

// TestOpenAIStreamCharged: an OpenAI chat stream whose client did not ask
// for usage is still charged its real counts — the gateway asks Ollama for
// them (stream_options.include_usage) and keeps the usage chunk from the
// client, which gets the stream it asked for (the openai-go client reads
// no usage). A /v1/completions stream without usage is charged one token
// per event. A key without a budget gets its body forwarded unchanged.
func TestOpenAIStreamCharged(t *testing.T) {
	const budgeted, open = "budget-key-0123456789abcdef0123456789", "open-key-0123456789abcdef01234567890"
	e := startEnv(t, envOptions{fake: fakeTokens(10), gateway: countInFlight, auth: access.Config{Keys: []access.KeyConfig{
		{Name: "budgeted", Key: budgeted, TokensPerDay: 1 << 30},
		{Name: "open", Key: open, RequestsPerMinute: 1000},
	}}})
	ctx := context.Background()
	stream := func(key string) (text string, usage openai.CompletionUsage) {
		c := openai.NewClient(option.WithBaseURL(e.url+"/v1"), option.WithAPIKey(key), option.WithMaxRetries(0))
		s := c.Chat.Completions.NewStreaming(ctx, openai.ChatCompletionNewParams{
			Model: "llama3.2", Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")}})
		var b strings.Builder
		for s.Next() {
			ch := s.Current()
			if len(ch.Choices) == 0 {
				t.Fatalf("a chunk without choices reached the client: %s", ch.RawJSON())
			}
			b.WriteString(ch.Choices[0].Delta.Content)
			if ch.Usage.TotalTokens != 0 {
				usage = ch.Usage
			}
		}
		if err := s.Err(); err != nil {
			t.Fatal(err)
		}
		return b.String(), usage
	}

	text, usage := stream(budgeted)
	if text == "" || usage.TotalTokens != 0 {
		t.Fatalf("budgeted key's stream: text %q, usage %+v: want the text and no usage", text, usage)
	}
	reqs := e.fake.Requests()
	if up := string(reqs[len(reqs)-1].Body); !strings.Contains(up, `"stream_options":{"include_usage":true}`) {
		t.Fatalf("upstream body %s: want include_usage asked for", up)
	}
	// The same request, its client asking for usage: what Ollama counts.
	st, _, body := e.do("POST", "/v1/chat/completions", `{"model":"llama3.2","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true}}`,
		map[string]string{"X-API-Key": open})
	i := strings.LastIndex(string(body), `"usage":{`)
	if st != 200 || i < 0 {
		t.Fatalf("%d %s", st, body)
	}
	var u struct {
		TotalTokens int64 `json:"total_tokens"`
	}
	if err := json.NewDecoder(strings.NewReader(string(body[i+len(`"usage":`):]))).Decode(&u); err != nil || u.TotalTokens == 0 {
		t.Fatalf("usage %v %v", u, err)
	}
	if got := keyUsage(t, e, "budgeted").TokensToday; got != u.TotalTokens {
		t.Fatalf("charged %d tokens, want Ollama's count %d", got, u.TotalTokens)
	}

	// The key without a budget: forwarded as sent.
	if text, _ := stream(open); text == "" {
		t.Fatal("open key's stream is empty")
	}
	reqs = e.fake.Requests()
	if up := string(reqs[len(reqs)-1].Body); strings.Contains(up, "stream_options") {
		t.Fatalf("upstream body %s: a key without a budget must be forwarded as sent", up)
	}

	// /v1/completions: no usage asked for, one token per event.
	before := keyUsage(t, e, "budgeted").TokensToday
	st, _, body = e.do("POST", "/v1/completions", `{"model":"llama3.2","prompt":"hi","stream":true}`, map[string]string{"X-API-Key": budgeted})
	events := int64(strings.Count(string(body), "data: "))
	if st != 200 || events < 3 || strings.Contains(string(body), `"usage"`) {
		t.Fatalf("%d %s", st, body)
	}
	if got := keyUsage(t, e, "budgeted").TokensToday - before; got != events {
		t.Fatalf("completions stream charged %d tokens, want one per event (%d)", got, events)
	}
}
