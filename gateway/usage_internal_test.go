package gateway

import (
	"bytes"
	"strings"
	"testing"
)

// TestKeepTail: the tail holds the last bytes of what went through it,
// whatever the sizes of the reads.
func TestKeepTail(t *testing.T) {
	body := []byte(strings.Repeat("0123456789abcdef", 1000))
	for _, step := range []int{1, 7, 100, tokenTailBytes - 1, tokenTailBytes, tokenTailBytes + 3, len(body)} {
		tail := make([]byte, 0, tokenTailBytes)
		for off := 0; off < len(body); off += step {
			tail = keepTail(tail, body[off:min(off+step, len(body))])
		}
		if !bytes.Equal(tail, body[len(body)-tokenTailBytes:]) || cap(tail) != tokenTailBytes {
			t.Fatalf("reads of %d: tail of %d bytes (cap %d) differs", step, len(tail), cap(tail))
		}
	}
}

// TestReadTokenCounts reads the counts of each reply shape, and is not
// fooled by text that mimics the keys or by a tool call's arguments.
func TestReadTokenCounts(t *testing.T) {
	tests := []struct {
		name, route, body  string
		prompt, completion int64
	}{
		{"native metrics", "/api/chat", `"done":true,"total_duration":1,"prompt_eval_count":26,"prompt_eval_duration":2,"eval_count":290,"eval_duration":3}`, 26, 290},
		{"native, usage key in tool arguments", "/api/chat", `{"message":{"tool_calls":[{"function":{"arguments":{"usage":{"prompt_tokens":999}}}}]},"prompt_eval_count":5,"eval_count":6}`, 5, 6},
		{"native, escaped text", "/api/generate", `{"response":"\"eval_count\":77","prompt_eval_count":4,"eval_count":8}`, 4, 8},
		{"embed", "/api/embed", `{"embeddings":[[0.1]],"total_duration":1,"load_duration":1,"prompt_eval_count":7}`, 7, 0},
		{"openai", "/v1/chat/completions", `"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}`, 3, 4},
		{"anthropic", "/v1/messages", `{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"input_tokens":26,"output_tokens":290}}`, 26, 290},
		{"responses, details nested", "/v1/responses", `"usage":{"input_tokens":2,"output_tokens":9,"total_tokens":11,"input_tokens_details":{"cached_tokens":0},"output_tokens_details":{"reasoning_tokens":0}},"store":false}`, 2, 9},
		{"openai, escaped text only", "/v1/chat/completions", `"content":"\"usage\":{\"prompt_tokens\":5}"}`, 0, 0},
		{"cut usage", "/v1/messages", `"usage":{"input_tokens":2,"outp`, 0, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			x := &exchange{route: classify([]byte(tc.route))}
			readTokenCounts(x, []byte(tc.body))
			if x.promptTokens != tc.prompt || x.completionTokens != tc.completion {
				t.Fatalf("got %d + %d, want %d + %d", x.promptTokens, x.completionTokens, tc.prompt, tc.completion)
			}
		})
	}
}
