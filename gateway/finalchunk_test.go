package gateway

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// TestReadFinalChunk reads telemetry from Ollama's final chunks as its
// server writes them (api.ChatResponse and api.GenerateResponse field
// order), and from bodies whose text tries to look like the keys.
func TestReadFinalChunk(t *testing.T) {
	type telemetry struct {
		doneReason                     string
		promptTokens, completionTokens int64
		loadDuration, evalDuration     time.Duration
	}
	metrics := `"total_duration":5043500667,"load_duration":5025959,"prompt_eval_count":26,"prompt_eval_duration":325953000,"eval_count":290,"eval_duration":4709213000}`
	want := telemetry{doneReason: "stop", promptTokens: 26, completionTokens: 290, loadDuration: 5025959, evalDuration: 4709213000}
	tests := []struct {
		name  string
		frame string
		want  telemetry
	}{
		{"chat final chunk", `{"model":"llama3.2","created_at":"2023-08-04T19:22:45.499127Z","message":{"role":"assistant","content":""},"done_reason":"stop","done":true,` + metrics + "\n", want},
		{"generate final chunk with context", `{"model":"llama3.2","created_at":"2023-08-04T19:22:45.499127Z","response":"","done":true,"done_reason":"stop","context":[1,2,3,4096,7],` + metrics, want},
		{"whole reply, text that mimics the keys", `{"model":"m","message":{"role":"assistant","content":"say \"done\":true, \"eval_count\":9 and \"done_reason\":\"length\" \\"},"done_reason":"stop","done":true,` + metrics, want},
		{"string values that read like keys", `{"done":true,"x":"eval_count","y":"\"eval_count\":7","done_reason":"length","eval_count":3}`, telemetry{doneReason: "length", completionTokens: 3}},
		{"not the final chunk", `{"model":"m","message":{"role":"assistant","content":"hi"},"done":false}`, telemetry{}},
		{"done in text only", `{"message":{"content":"\"done\":true"},"done":false}`, telemetry{}},
		{"not final, line end", "{\"model\":\"m\",\"done\":false}\r\n", telemetry{}},
		{"not final, done in tool arguments", `{"message":{"tool_calls":[{"function":{"arguments":{"done":true,"eval_count":5}}}]},"done":false}`, telemetry{}},
		{"not final, spelled with spaces", `{"model":"m", "done": false }`, telemetry{}},
		{"no metrics", `{"done":true}`, telemetry{}},
		{"cut short", `{"done":true,"eval_count":12,"eval_dur`, telemetry{completionTokens: 12}},
		{"unknown done reason, kept as sent", `{"done_reason":"something new","done":true}`, telemetry{doneReason: "something new"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var x exchange
			readFinalChunk(&x, []byte(tc.frame))
			got := telemetry{doneReason: x.doneReason, promptTokens: x.promptTokens, completionTokens: x.completionTokens,
				loadDuration: x.loadDuration, evalDuration: x.evalDuration}
			if got != tc.want {
				t.Errorf("got reason %q prompt %d completion %d load %v eval %v; want %q %d %d %v %v",
					got.doneReason, got.promptTokens, got.completionTokens, got.loadDuration, got.evalDuration,
					tc.want.doneReason, tc.want.promptTokens, tc.want.completionTokens, tc.want.loadDuration, tc.want.evalDuration)
			}
		})
	}
}

// FuzzReadFinalChunk checks the key scan against encoding/json on bodies
// shaped like Ollama's final chunk: whatever text comes before the keys,
// the counts read are the ones a decoder reads.
func FuzzReadFinalChunk(f *testing.F) {
	f.Add("hi", "stop", int64(26), int64(290), int64(5025959))
	f.Add(`"done":true,"eval_count":1`, "length", int64(0), int64(1), int64(0))
	f.Add(`\"\\`, "", int64(7), int64(0), int64(9))
	f.Fuzz(func(t *testing.T, content, reason string, prompt, eval, load int64) {
		if prompt < 0 || eval < 0 || load < 0 {
			return
		}
		body, err := json.Marshal(struct {
			Model      string            `json:"model"`
			Message    map[string]string `json:"message"`
			DoneReason string            `json:"done_reason,omitempty"`
			Done       bool              `json:"done"`
			Load       int64             `json:"load_duration"`
			Prompt     int64             `json:"prompt_eval_count"`
			Eval       int64             `json:"eval_count"`
		}{"m", map[string]string{"role": "assistant", "content": content}, reason, true, load, prompt, eval})
		if err != nil {
			return
		}
		var x exchange
		readFinalChunk(&x, body)
		if x.promptTokens != prompt || x.completionTokens != eval || x.loadDuration != time.Duration(load) {
			t.Fatalf("%s: read prompt %d eval %d load %d", body, x.promptTokens, x.completionTokens, x.loadDuration)
		}
		// A reason written with escapes is skipped by design (Ollama's are
		// plain words); any other must be read as sent.
		if plain := `"done_reason":"` + reason + `"`; reason != "" && len(reason) <= 64 && strings.Contains(string(body), plain) && x.doneReason != reason {
			t.Fatalf("%s: done_reason not read", body)
		}
	})
}
