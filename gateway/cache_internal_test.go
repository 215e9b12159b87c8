package gateway

import (
	"encoding/json"
	"fmt"
	"testing"
)

// cacheKeyBody is a deterministic /api/chat body with a short history, the
// shape a cached completion usually has.
func cacheKeyBody() []byte {
	msgs := make([]map[string]string, 8)
	for i := range msgs {
		msgs[i] = map[string]string{"role": "user", "content": fmt.Sprintf("message %d: %0400d", i, i)}
	}
	b, _ := json.Marshal(map[string]any{"model": "llama3.2", "messages": msgs, "stream": false,
		"options": map[string]any{"temperature": 0, "seed": 1, "num_predict": 64}})
	return b
}

// BenchmarkCacheKey: the completion key's decode and canonical encoding
// (the baseline), and the token pass plainKeys adds before them.
func BenchmarkCacheKey(b *testing.B) {
	body := cacheKeyBody()
	b.Run("decode+canonical", func(b *testing.B) {
		b.SetBytes(int64(len(body)))
		for b.Loop() {
			m, ok := decodeBody(body)
			if !ok {
				b.Fatal("decode")
			}
			if _, err := canonical(m); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("plainKeys", func(b *testing.B) {
		b.SetBytes(int64(len(body)))
		for b.Loop() {
			if !plainKeys(body) {
				b.Fatal("not plain")
			}
		}
	})
}

// TestPlainKeys: the token pass against bodies Ollama reads otherwise than
// their decoded form, and ones it reads the same.
func TestPlainKeys(t *testing.T) {
	for _, tc := range []struct {
		body string
		want bool
	}{
		{`{"model":"m","options":{"seed":1},"messages":[{"role":"user","content":"a"},{"role":"user","content":"a"}]}`, true},
		{`{"a":{"b":1},"b":{"a":1},"c":[{"a":1},{"a":2}]}`, true},
		{`{"a":[[{"x":1}],{"x":2}],"x":3}`, true},
		{`{"a":1,"a":null}`, false},
		{`{"a":{"b":1,"b":2}}`, false},
		{`{"a":[{"b":1},{"c":1,"c":2}]}`, false},
		{`{"a":1,"\u0061":2}`, false},
		{`{"A":1}`, false},
		{`{"\u017f":1}`, false},
		{"{\"\u212a\":1}", false},
		{`{"a":1`, false},
	} {
		if got := plainKeys([]byte(tc.body)); got != tc.want {
			t.Errorf("plainKeys(%s) = %v, want %v", tc.body, got, tc.want)
		}
	}
}
