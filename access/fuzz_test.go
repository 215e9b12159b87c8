package access

import (
	"strings"
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
	f.Add("", "AAAAC3NzaC1lZDI1NTE5AAAAIA:c2ln")
	f.Add(key, "AAAA:BBBB")
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
		res, _ := kr.check(&h, timeZero)
		presented, _, ambiguous := credentials(&h)
		// An Authorization that looks like an Ollama signed credential (a
		// colon, no space) is checked as one, and this keyring has no
		// Ollama keys: never accepted, whatever else came with it.
		signed := authz != "" && !strings.Contains(strings.TrimSpace(authz), " ") && strings.Contains(authz, ":")
		want := !ambiguous && !signed && string(presented) == key
		if (res.Status == OK) != want {
			t.Fatalf("X-API-Key %q Authorization %q: result %v, want ok=%v", apiKey, authz, res, want)
		}
	})
}
