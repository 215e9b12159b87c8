package gateway

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	ollama "github.com/ollama/ollama/api"
	"github.com/ollama/ollama/types/model"
)

// FuzzResourceCaps checks the B-65 caps against Ollama's own decoding: a
// body the gateway lets through must, as Ollama's api.ChatRequest and
// Options.FromMap read it, keep keep_alive, num_ctx and num_predict within
// the caps (or be a body Ollama refuses). Duplicates, case variants and
// merged options objects are in the seeds (B-06).
func FuzzResourceCaps(f *testing.F) {
	for _, s := range []string{
		`{"model":"m","keep_alive":"5m","options":{"num_ctx":4096,"num_predict":100}}`,
		`{"keep_alive":-1}`, `{"keep_alive":"-1s"}`, `{"keep_alive":1e300}`, `{"keep_alive":"5m","KEEP_ALIVE":-1}`,
		`{"keep_alive":-1,"keep_alive":null}`, `{"keep_alive":599.9999999}`, `{"Keep_Alive":"10m0.000000001s"}`,
		`{"options":{"num_ctx":1e9}}`, `{"options":{"num_ctx":8192.9}}`, `{"options":{"num_predict":-1}}`,
		`{"options":{"num_ctx":1},"options":{"num_predict":-2}}`, `{"OPTIONS":{"num_ctx":1e9}}`,
		`{"options":{"num_ctx":1,"num_ctx":99999}}`, `{"options":{"NUM_CTX":99999}}`, `{"options":{"num_ctx":null}}`,
		`{"options":{"num_predict":1e30}}`, `{"options":{"num_predict":-1e30}}`, `{"model":"m"} {"keep_alive":-1}`,
	} {
		f.Add([]byte(s))
	}
	const maxKeepAlive, maxCtx, maxPredict = 10 * time.Minute, 8192, 512
	g := &Gateway{cfg: Config{MaxKeepAlive: maxKeepAlive, MaxNumCtx: maxCtx, MaxNumPredict: maxPredict}}
	f.Fuzz(func(t *testing.T, body []byte) {
		var b bodyFields
		if json.Unmarshal(body, &b) != nil {
			return // refused: invalid_json
		}
		if _, ok := g.checkCaps(&b); !ok {
			return // refused
		}
		var req ollama.ChatRequest
		if json.NewDecoder(bytes.NewReader(body)).Decode(&req) != nil {
			return // Ollama refuses it
		}
		if ka := req.KeepAlive; ka != nil && (ka.Duration < 0 || ka.Duration > maxKeepAlive) {
			t.Fatalf("passed %s: Ollama reads keep_alive %s", body, ka.Duration)
		}
		var opts ollama.Options
		if opts.FromMap(req.Options) != nil {
			return // Ollama refuses it
		}
		if opts.NumCtx > maxCtx || opts.NumPredict > maxPredict || opts.NumPredict < 0 {
			t.Fatalf("passed %s: Ollama reads num_ctx %d, num_predict %d", body, opts.NumCtx, opts.NumPredict)
		}
	})
}

// FuzzRegistryOf checks the B-63 host split against Ollama's
// model.ParseName: a name the default allowlist lets through is, for
// Ollama, on the default registry over HTTPS (or not a valid name).
func FuzzRegistryOf(f *testing.F) {
	for _, s := range []string{"llama3", "library/llama3:8b", "ns/m", "registry.ollama.ai/library/x", "REGISTRY.ollama.ai/a/b",
		"http://127.0.0.1:9/x", "https://evil.example/ns/m", "evil.example/ns/m", "127.0.0.1:9/ns/x:latest", "/ns/m",
		"a/b/c/d", "evil.example\\ns\\m", "h:1/ns/m:t@sha256:abc", ":/x/y", "x:y/z"} {
		f.Add(s)
	}
	g := &Gateway{cfg: Config{}.withDefaults()}
	f.Fuzz(func(t *testing.T, name string) {
		if _, ok := g.registryAllowed(name); !ok {
			return
		}
		n := model.ParseName(strings.ReplaceAll(name, `\`, "/"))
		if !n.IsValid() {
			return // Ollama refuses it
		}
		if !strings.EqualFold(n.Host, DefaultPullRegistry) || (n.ProtocolScheme != "" && n.ProtocolScheme != "https") {
			t.Fatalf("allowed %q: Ollama reads host %q scheme %q", name, n.Host, n.ProtocolScheme)
		}
	})
}
