package gateway

import (
	"encoding/json"
	"testing"
)

// FuzzParseEmbed: any body is either refused by the cache's parser (and
// proxied as sent) or taken apart into a model and at least one input
// that encoding/json — so Ollama — reads the same way.
func FuzzParseEmbed(f *testing.F) {
	for _, s := range []string{
		`{"model":"m","input":"a"}`, `{"model":"m","input":["a","b"],"truncate":false,"options":null}`,
		`{"model":"m","input":[]}`, `{"model":"m","input":[1,2]}`, `{"model":"m","input":"a","input":["b"]}`,
		`{"model":"m","Input":["x"],"input":["a"]}`, `{"model":"m","prompt":"p"}`, `{"model":1,"input":"a"}`,
		`[1]`, `{"model":"m","input":"\u00e9\ud800"}`, `{"model":"m","input":["a"]} trailing`,
	} {
		f.Add([]byte(s), false)
	}
	f.Fuzz(func(t *testing.T, body []byte, legacy bool) {
		route := "/api/embed"
		if legacy {
			route = "/api/embeddings"
		}
		r, ok := parseEmbed(route, body)
		if !ok {
			return
		}
		if r.model == "" || len(r.inputs) == 0 {
			t.Fatalf("accepted %q with model %q and %d inputs", body, r.model, len(r.inputs))
		}
		var want struct {
			Model  string `json:"model"`
			Input  any    `json:"input"`
			Prompt string `json:"prompt"`
		}
		if err := json.Unmarshal(body, &want); err != nil {
			t.Fatalf("accepted %q, which encoding/json refuses: %v", body, err)
		}
		if want.Model != r.model {
			t.Fatalf("%q: model %q, encoding/json reads %q", body, r.model, want.Model)
		}
		var got []string
		switch v := want.Input.(type) {
		case string:
			got = []string{v}
		case []any:
			for _, e := range v {
				s, _ := e.(string)
				got = append(got, s)
			}
		}
		if legacy {
			got = []string{want.Prompt}
		}
		if len(got) != len(r.inputs) {
			t.Fatalf("%q: inputs %q, encoding/json reads %q", body, r.inputs, got)
		}
		for i := range got {
			if got[i] != r.inputs[i] {
				t.Fatalf("%q: input %d is %q, encoding/json reads %q", body, i, r.inputs[i], got[i])
			}
		}
	})
}
