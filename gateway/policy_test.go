package gateway_test

import (
	"bytes"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/vega-gateway/vega-gateway/access"
	"github.com/vega-gateway/vega-gateway/gateway"
	"github.com/vega-gateway/vega-gateway/ollamatest"
)

// errorCode reads the machine code of a gateway error in any family's
// shape: native {"code"}, OpenAI {"error":{"code"}}, Anthropic (no code:
// its error type).
func errorCode(t *testing.T, body []byte) string {
	t.Helper()
	m := decodeJSON(t, body)
	if c, ok := m["code"].(string); ok {
		return c
	}
	if obj, ok := m["error"].(map[string]any); ok {
		if c, ok := obj["code"].(string); ok {
			return c
		}
		if c, ok := obj["type"].(string); ok {
			return c
		}
	}
	return ""
}

// lastReceived is the last request the fake received on path.
func lastReceived(fake *ollamatest.Server, path string) (ollamatest.Request, bool) {
	reqs := fake.Requests()
	for i := len(reqs) - 1; i >= 0; i-- {
		if reqs[i].Path == path {
			return reqs[i], true
		}
	}
	return ollamatest.Request{}, false
}

// policyCase is one request through the body policy: the status and code
// the client must get, and that a refused body never reaches the fake
// while an accepted one reaches it byte for byte.
type policyCase struct {
	name, path, body string
	status           int
	code             string // "" for an answer from the fake
}

func runPolicyCases(t *testing.T, e *env, hdr map[string]string, cases []policyCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := e.fake.Stats().Requests
			st, _, body := e.do("POST", tc.path, tc.body, hdr)
			if st != tc.status {
				t.Fatalf("status %d, want %d: %s", st, tc.status, body)
			}
			if tc.code != "" {
				if got := errorCode(t, body); got != tc.code {
					t.Fatalf("code %q, want %q: %s", got, tc.code, body)
				}
				if n := e.fake.Stats().Requests; n != before {
					t.Fatalf("a refused request reached the upstream (%d requests, want %d)", n, before)
				}
				return
			}
			got, ok := lastReceived(e.fake, tc.path)
			if !ok || !bytes.Equal(got.Body, []byte(tc.body)) {
				t.Fatalf("upstream received %q, want the client's body %q unchanged", got.Body, tc.body)
			}
		})
	}
}

const manageKey = "ops-key-0123456789abcdef0123456789abcdef"

func manageAuth() access.Config {
	return access.Config{Keys: []access.KeyConfig{{Name: "ops", Key: manageKey, Scopes: []string{"models:manage"}}}}
}

// TestPullRegistries is B-63: with a models:manage key, pull and push may
// name only allowlisted registries (names without a host are on
// registry.ollama.ai), never a URL, and "insecure" needs its own flag;
// create may copy "from" only such a registry and may not point the new
// model at another server. Decided with Ollama's JSON semantics (B-06).
func TestPullRegistries(t *testing.T) {
	hdr := map[string]string{"X-API-Key": manageKey}
	pull := func(body string) policyCase { return policyCase{path: "/api/pull", body: body} }
	named := func(name string, c policyCase, status int, code string) policyCase {
		c.name, c.status, c.code = name, status, code
		return c
	}
	t.Run("default allowlist", func(t *testing.T) {
		e := startEnv(t, envOptions{fake: fakeTokens(1), auth: manageAuth()})
		runPolicyCases(t, e, hdr, []policyCase{
			named("bare name", pull(`{"model":"llama3"}`), 200, ""),
			named("namespace and tag", pull(`{"model":"library/llama3:8b"}`), 200, ""),
			named("default host spelled out", pull(`{"model":"registry.ollama.ai/library/llama3"}`), 200, ""),
			named("default host in capitals", pull(`{"model":"REGISTRY.OLLAMA.AI/library/llama3"}`), 200, ""),
			named("deprecated name field", pull(`{"name":"ns/model"}`), 200, ""),
			named("URL with insecure (the row)", pull(`{"name":"http://127.0.0.1:9/x","insecure":true}`), 403, "registry_not_allowed"),
			named("https URL of the default host", pull(`{"model":"https://registry.ollama.ai/library/llama3"}`), 403, "registry_not_allowed"),
			named("foreign host", pull(`{"model":"evil.example/ns/m"}`), 403, "registry_not_allowed"),
			named("address and port", pull(`{"model":"127.0.0.1:9/ns/x:latest"}`), 403, "registry_not_allowed"),
			named("backslashes", pull(`{"model":"evil.example\\ns\\m"}`), 403, "registry_not_allowed"),
			named("duplicate key: last wins", pull(`{"model":"llama3","model":"evil.example/ns/m"}`), 403, "registry_not_allowed"),
			named("case variant key", pull(`{"model":"llama3","MODEL":"evil.example/ns/m"}`), 403, "registry_not_allowed"),
			named("model wins over name, as in Ollama", pull(`{"model":"llama3","name":"evil.example/ns/m"}`), 200, ""),
			named("insecure", pull(`{"model":"llama3","insecure":true}`), 403, "insecure_not_allowed"),
			named("data after the object", pull(`{"model":"llama3"} {"model":"evil.example/ns/m"}`), 400, "invalid_json"),
			{name: "push to a foreign host", path: "/api/push", body: `{"model":"evil.example/ns/m"}`, status: 403, code: "registry_not_allowed"},
			{name: "push to the default registry", path: "/api/push", body: `{"model":"ns/m"}`, status: 200},
			{name: "create from a foreign host", path: "/api/create", body: `{"model":"mine","from":"evil.example/ns/m"}`, status: 403, code: "registry_not_allowed"},
			{name: "create from a local model", path: "/api/create", body: `{"model":"mine","from":"llama3.2"}`, status: 200},
			{name: "create with a remote host", path: "/api/create", body: `{"model":"mine","from":"llama3.2","remote_host":"http://169.254.169.254"}`, status: 403, code: "registry_not_allowed"},
		})
	})
	t.Run("private registry", func(t *testing.T) {
		e := startEnv(t, envOptions{fake: fakeTokens(1), auth: manageAuth(),
			gateway: gateway.Config{PullRegistries: []string{"models.internal:5000"}, PullAllowInsecure: true}})
		runPolicyCases(t, e, hdr, []policyCase{
			named("listed host", pull(`{"model":"models.internal:5000/team/m"}`), 200, ""),
			named("listed host, insecure allowed", pull(`{"model":"models.internal:5000/team/m","insecure":true}`), 200, ""),
			named("default registry not listed", pull(`{"model":"llama3"}`), 403, "registry_not_allowed"),
			named("same host, other port", pull(`{"model":"models.internal/team/m"}`), 403, "registry_not_allowed"),
		})
	})
	t.Run("any registry", func(t *testing.T) {
		e := startEnv(t, envOptions{fake: fakeTokens(1), auth: manageAuth(), gateway: gateway.Config{PullRegistries: []string{"*"}}})
		runPolicyCases(t, e, hdr, []policyCase{
			named("foreign host", pull(`{"model":"evil.example/ns/m"}`), 200, ""),
			named("a URL still refused", pull(`{"model":"http://evil.example/ns/m"}`), 403, "registry_not_allowed"),
		})
	})
	t.Run("bad config", func(t *testing.T) {
		for _, bad := range []string{"", "https://registry.ollama.ai", "host/path"} {
			if _, err := gateway.New(gateway.Config{PullRegistries: []string{bad}}, gateway.ChatConfig{}, access.Config{}, nil, zerolog.Nop()); err == nil || !strings.Contains(err.Error(), "gateway.pull_registries") {
				t.Errorf("pull_registries %q: error %v, want one naming the key", bad, err)
			}
		}
	})
}

// TestResourceCaps is B-65: with caps configured, an inference body that
// pins resources (keep_alive forever or over the cap, a huge num_ctx, an
// unbounded num_predict or max_tokens) gets 400 option_over_limit naming
// the field, on every pass-through inference route, decided as Ollama
// reads the body so duplicates and case variants cannot slip a value by.
// Without caps, the same bodies go through untouched and are not parsed.
func TestResourceCaps(t *testing.T) {
	chat := func(extra string) string {
		return `{"model":"llama3.2","stream":false,"messages":[{"role":"user","content":"hi"}]` + extra + `}`
	}
	c := func(name, extra string, status int, code string) policyCase {
		return policyCase{name: name, path: "/api/chat", body: chat(extra), status: status, code: code}
	}
	caps := gateway.Config{MaxKeepAlive: 10 * time.Minute, MaxNumCtx: 8192, MaxNumPredict: 512}
	t.Run("capped", func(t *testing.T) {
		e := startEnv(t, envOptions{fake: fakeTokens(2), gateway: caps})
		runPolicyCases(t, e, nil, []policyCase{
			c("within the caps", `,"keep_alive":"5m","options":{"num_ctx":8192,"num_predict":512,"temperature":0}`, 200, ""),
			c("keep_alive forever", `,"keep_alive":-1`, 400, "option_over_limit"),
			c("keep_alive negative string", `,"keep_alive":"-1m"`, 400, "option_over_limit"),
			c("keep_alive over the cap", `,"keep_alive":"1h"`, 400, "option_over_limit"),
			c("keep_alive seconds over the cap", `,"keep_alive":3600`, 400, "option_over_limit"),
			c("keep_alive huge number", `,"keep_alive":1e300`, 400, "option_over_limit"),
			c("keep_alive zero unloads", `,"keep_alive":0`, 200, ""),
			c("keep_alive null is Ollama's default", `,"keep_alive":null`, 200, ""),
			c("keep_alive unreadable", `,"keep_alive":"forever"`, 400, "invalid_field"),
			c("keep_alive duplicate: last wins", `,"keep_alive":"5m","keep_alive":-1`, 400, "option_over_limit"),
			c("keep_alive duplicate: last is within", `,"keep_alive":-1,"keep_alive":"5m"`, 200, ""),
			c("keep_alive case variant", `,"keep_alive":"5m","KEEP_ALIVE":-1`, 400, "option_over_limit"),
			c("num_ctx over the cap", `,"options":{"num_ctx":1000000}`, 400, "option_over_limit"),
			c("num_predict unbounded", `,"options":{"num_predict":-1}`, 400, "option_over_limit"),
			c("num_predict fill context", `,"options":{"num_predict":-2}`, 400, "option_over_limit"),
			c("num_predict over the cap", `,"options":{"num_predict":513}`, 400, "option_over_limit"),
			c("num_ctx duplicate inside options", `,"options":{"num_ctx":1,"num_ctx":1000000}`, 400, "option_over_limit"),
			c("two options objects merge", `,"options":{"num_ctx":1000000},"options":{"temperature":0}`, 400, "option_over_limit"),
			c("options key in capitals", `,"OPTIONS":{"num_ctx":1000000}`, 400, "option_over_limit"),
			c("option name in capitals is ignored by Ollama", `,"options":{"NUM_CTX":1000000}`, 200, ""),
			c("num_ctx as a string", `,"options":{"num_ctx":"4096"}`, 400, "invalid_field"),
			c("options null", `,"options":null`, 200, ""),
			{name: "data after the object", path: "/api/chat", body: chat("") + ` {"keep_alive":-1}`, status: 400, code: "invalid_json"},
			{name: "options not an object", path: "/api/chat", body: chat(`,"options":[1]`), status: 400, code: "invalid_json"},
			{name: "generate unbounded", path: "/api/generate", body: `{"model":"llama3.2","prompt":"hi","stream":false,"options":{"num_predict":-1}}`, status: 400, code: "option_over_limit"},
			{name: "embed keep_alive forever", path: "/api/embed", body: `{"model":"llama3.2","input":"hi","keep_alive":-1}`, status: 400, code: "option_over_limit"},
			{name: "embed within", path: "/api/embed", body: `{"model":"llama3.2","input":"hi","keep_alive":"1m"}`, status: 200},
			{name: "openai max_tokens within", path: "/v1/chat/completions", body: `{"model":"llama3.2","max_tokens":100,"messages":[{"role":"user","content":"hi"}]}`, status: 200},
			{name: "openai max_tokens over", path: "/v1/chat/completions", body: `{"model":"llama3.2","max_tokens":100000,"messages":[{"role":"user","content":"hi"}]}`, status: 400, code: "option_over_limit"},
			{name: "openai max_tokens unbounded", path: "/v1/completions", body: `{"model":"llama3.2","max_tokens":-1,"prompt":"hi"}`, status: 400, code: "option_over_limit"},
			{name: "responses max_output_tokens over", path: "/v1/responses", body: `{"model":"llama3.2","max_output_tokens":100000,"input":"hi"}`, status: 400, code: "option_over_limit"},
			{name: "anthropic max_tokens over", path: "/v1/messages", body: `{"model":"llama3.2","max_tokens":100000,"messages":[{"role":"user","content":"hi"}]}`, status: 400, code: "invalid_request_error"},
		})
	})
	t.Run("the error names the field", func(t *testing.T) {
		e := startEnv(t, envOptions{gateway: caps})
		_, _, body := e.do("POST", "/api/chat", chat(`,"options":{"num_ctx":1000000}`), nil)
		if msg, _ := decodeJSON(t, body)["error"].(string); !strings.Contains(msg, "options.num_ctx") || !strings.Contains(msg, "8192") {
			t.Fatalf("message %q does not name the field and its limit", msg)
		}
	})
	t.Run("/chat keeps its own caps", func(t *testing.T) {
		e := startEnv(t, envOptions{gateway: caps, chat: gateway.ChatConfig{MaxTokens: 5}})
		if st, _, body := e.do("POST", "/chat", `{"prompt":"hi","options":{"num_predict":-1}}`, nil); st != 200 {
			t.Fatalf("/chat status %d: %s", st, body)
		}
		got, _ := lastReceived(e.fake, "/api/chat")
		if !strings.Contains(string(got.Body), `"num_predict":5`) {
			t.Fatalf("/chat sent %s, want num_predict capped to chat.max_tokens", got.Body)
		}
	})
	t.Run("no caps: forwarded untouched and not parsed", func(t *testing.T) {
		e := startEnv(t, envOptions{fake: fakeTokens(2)})
		runPolicyCases(t, e, nil, []policyCase{
			c("pinning fields pass", `,"keep_alive":-1,"options":{"num_ctx":1000000,"num_predict":-1}`, 200, ""),
		})
		// A body the policy would refuse as invalid JSON reaches Ollama:
		// nothing parsed it on the way.
		body := chat("") + ` {"keep_alive":-1}`
		e.do("POST", "/api/chat", body, nil)
		if got, _ := lastReceived(e.fake, "/api/chat"); !bytes.Equal(got.Body, []byte(body)) {
			t.Fatalf("upstream received %q, want %q", got.Body, body)
		}
	})
}

// TestRepeatedCorrelationID is B-46 end to end: with X-Correlation-ID sent
// twice, the first valid one is echoed and sent upstream; with none valid,
// a valid X-Request-ID; else a new ID.
func TestRepeatedCorrelationID(t *testing.T) {
	e := startEnv(t, envOptions{})
	for _, tc := range []struct {
		name        string
		corr, reqID []string
		want        string // "" means a fresh ID
	}{
		{"invalid then valid", []string{"bad/1", "corr-2"}, nil, "corr-2"},
		{"two valid: first wins", []string{"corr-1", "corr-2"}, []string{"req-1"}, "corr-1"},
		{"none valid: request id", []string{"bad/1", "bad/2"}, []string{"bad/3", "req-2"}, "req-2"},
		{"nothing valid", []string{"bad/1"}, []string{"bad/2"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequest("POST", e.url+"/api/chat", strings.NewReader(`{"model":"llama3.2","stream":false,"messages":[]}`))
			if err != nil {
				t.Fatal(err)
			}
			for _, v := range tc.corr {
				req.Header.Add("X-Correlation-ID", v)
			}
			for _, v := range tc.reqID {
				req.Header.Add("X-Request-ID", v)
			}
			resp, err := testClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			got := resp.Header.Get("X-Correlation-ID")
			if tc.want != "" && got != tc.want || tc.want == "" && (got == "" || strings.Contains(got, "bad")) {
				t.Fatalf("echoed ID %q, want %q", got, tc.want)
			}
			up, _ := lastReceived(e.fake, "/api/chat")
			if ids := up.Header.Values("X-Correlation-ID"); len(ids) != 1 || ids[0] != got {
				t.Fatalf("upstream got X-Correlation-ID %q, want [%q]", ids, got)
			}
		})
	}
}
