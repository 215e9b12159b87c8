package gateway

import (
	"fmt"
	"testing"
)

func TestDecodeTopLevel(t *testing.T) {
	type opts = struct {
		Temperature *float64 `json:"temperature"`
		NumPredict  *int64   `json:"num_predict"`
		Seed        *int64   `json:"seed"`
	}
	show := func(o opts) string {
		s := ""
		for _, p := range []any{o.Temperature, o.NumPredict, o.Seed} {
			switch v := p.(type) {
			case *float64:
				if v != nil {
					s += fmt.Sprint(*v)
				}
			case *int64:
				if v != nil {
					s += fmt.Sprint(*v)
				}
			}
			s += ","
		}
		return s
	}
	for _, tt := range []struct {
		name, body, want string
	}{
		{"ollama options", `{"model":"m","messages":[],"options":{"temperature":0.5,"num_predict":10,"seed":7}}`, "0.5,10,7,"},
		{"spaces", `{"options" :  {"seed":1}}`, ",,1,"},
		{"quoted in a message", `{"messages":[{"content":"set \"options\": {\"seed\":9}"}],"options":{"seed":2}}`, ",,2,"},
		{"absent", `{"model":"m"}`, ",,,"},
		{"not an object", `{"options":"fast"}`, ",,,"},
		{"wrong type inside", `{"options":{"temperature":"hot","seed":3}}`, ",,,"},
		{"key without colon", `{"x":"options"}`, ",,,"},
		{"nested in a tool call or a schema", `{"messages":[{"tool_calls":[{"function":{"arguments":{"options":{"seed":25}}}}]}],"format":{"properties":{"options":{"type":"object"}}},"options":{"seed":5}}`, ",,5,"},
		{"nested only", `{"messages":[{"content":"x","images":null,"options":{"seed":25}}]}`, ",,,"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var o opts
			decodeTopLevel([]byte(tt.body), "options", &o)
			if got := show(o); got != tt.want {
				t.Fatalf("got %s, want %s", got, tt.want)
			}
		})
	}
	var mt *int64
	decodeTopLevel([]byte(`{"model":"m","messages":[{"max_tokens":7}],"max_tokens": 128}`), "max_tokens", &mt)
	if mt == nil || *mt != 128 {
		t.Fatalf("max_tokens: got %v, want 128", mt)
	}
}
