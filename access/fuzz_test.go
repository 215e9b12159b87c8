package access

import (
	"strings"
	"testing"
	"time"

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
	// One Ollama key is listed too: the fuzzer cannot forge its signature,
	// so a signed-looking credential must never pass.
	line, sign := testOllamaKey(f)
	f.Add("", sign("GET,/api/tags?ts=1"))
	kr, err := newKeyring([]string{key}, nil, []OllamaKeyConfig{{Name: "laptop", PublicKey: line}}, time.Minute)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, apiKey, authz string) {
		var h fasthttp.RequestHeader
		h.SetRequestURI("/api/tags?ts=1")
		if apiKey != "" {
			h.Set(HeaderAPIKey, apiKey)
		}
		if authz != "" {
			h.Set(HeaderAuthorization, authz)
		}
		res, _ := kr.check(&h, time.Unix(1_700_000_000, 0))
		c := credentials(&h)
		presented, ambiguous := c.key, c.ambiguous
		// An Authorization that looks like an Ollama signed credential (a
		// colon, no space) is checked as one, and ts=1 is long stale:
		// never accepted, whatever else came with it.
		// The value as the header holds it: fasthttp turns a CR or LF in
		// a value set by Set into a space.
		stored := string(h.Peek(HeaderAuthorization))
		signed := stored != "" && !strings.Contains(strings.TrimSpace(stored), " ") && strings.Contains(stored, ":")
		want := !ambiguous && !signed && string(presented) == key
		if (res.Status == OK) != want {
			t.Fatalf("X-API-Key %q Authorization %q: result %v, want ok=%v", apiKey, authz, res, want)
		}
	})
}
