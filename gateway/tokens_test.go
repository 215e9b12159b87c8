package gateway_test

import (
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

	"github.com/vega-gateway/vega-gateway/access"
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
	e := startEnv(t, envOptions{noFake: true, upURL: up.URL, auth: access.Config{Keys: keys}})
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
