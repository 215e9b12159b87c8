package access

import (
	"testing"

	"github.com/valyala/fasthttp"
)

func FuzzAuthHeaders(f *testing.F) {
	const key = "fuzz-key-0123456789abcdef0123456789"
	f.Add("", "")
	f.Add(key, "")
	f.Add("", "Bearer "+key)
	f.Add(key, "Bearer other")
	f.Add("", "bearer  "+key)
	f.Add("", "Basic "+key)
	f.Fuzz(func(t *testing.T, apiKey, authz string) {
		kr, err := NewKeyring([]string{key}, nil)
		if err != nil {
			t.Fatal(err)
		}
		var h fasthttp.RequestHeader
		if apiKey != "" {
			h.Set(HeaderAPIKey, apiKey)
		}
		if authz != "" {
			h.Set(HeaderAuthorization, authz)
		}
		res, _ := kr.check(&h)
		presented, _, ambiguous := credentials(&h)
		want := !ambiguous && string(presented) == key
		if (res.Status == OK) != want {
			t.Fatalf("X-API-Key %q Authorization %q: result %v, want ok=%v", apiKey, authz, res, want)
		}
	})
}
