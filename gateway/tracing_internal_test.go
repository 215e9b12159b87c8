package gateway

import (
	"fmt"
	"testing"
)

func TestDecodeAfterKey(t *testing.T) {
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
	} {
		t.Run(tt.name, func(t *testing.T) {
			var o opts
			decodeAfterKey([]byte(tt.body), keyOptions, &o)
			if got := show(o); got != tt.want {
				t.Fatalf("got %s, want %s", got, tt.want)
			}
		})
	}
	var mt *int64
	decodeAfterKey([]byte(`{"model":"m","max_tokens": 128,"messages":[]}`), keyMaxTokens, &mt)
	if mt == nil || *mt != 128 {
		t.Fatalf("max_tokens: got %v, want 128", mt)
	}
}
