package gateway_test

import (
	"bufio"
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	ollama "github.com/ollama/ollama/api"

	"github.com/vega-gateway/vega-gateway/access"
	"github.com/vega-gateway/vega-gateway/gateway"
	"github.com/vega-gateway/vega-gateway/limits"
	"github.com/vega-gateway/vega-gateway/ollamatest"
)

// TestBackendMaxInFlight: with limits.backend_max_in_flight 1, a second
// request goes to the other backend, a third finds both at the bound and
// gets 503 upstream_busy with Retry-After, and a stream its client leaves
// gives its backend's slot back.
func TestBackendMaxInFlight(t *testing.T) {
	e := startRoutingEnv(t, routingOptions{
		models: [][]string{{"llama3.2"}, {"llama3.2"}},
		fake:   ollamatest.Config{Tokens: 3, TokenDelay: 10 * time.Millisecond},
		limits: &limits.Config{BackendMaxInFlight: 1},
	})
	open := func() *http.Response {
		req, _ := http.NewRequest("POST", e.url+"/api/chat", strings.NewReader(chatBody("llama3.2", "long", true)))
		req.Header.Set(ollamatest.TokensHeader, "100000")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 200 {
			t.Fatalf("stream: %d", resp.StatusCode)
		}
		if _, err := bufio.NewReader(resp.Body).ReadString('\n'); err != nil {
			t.Fatal(err)
		}
		return resp
	}
	first, second := open(), open()
	defer second.Body.Close()
	for i, f := range e.fakes {
		if n := f.Stats().Requests; n < 1 {
			t.Fatalf("backend %d got no stream: the bound did not send the second request elsewhere", i)
		}
	}
	st, h, body := e.do("POST", "/api/chat", chatBody("llama3.2", "more", false), nil)
	if st != 503 || errorCode(t, body) != "upstream_busy" || h.Get("Retry-After") == "" {
		t.Fatalf("with both backends at the bound: %d %s (Retry-After %q)", st, body, h.Get("Retry-After"))
	}
	first.Body.Close() // the client leaves: the stream's finish frees its slot
	waitFor(t, 5*time.Second, "a slot freed by the client leaving", func() bool {
		st, _, _ := e.do("POST", "/api/chat", chatBody("llama3.2", "again", false), nil)
		return st == 200
	})
}

// TestTokenBudgets: a key's tokens_per_day is charged what the replies
// report; once used up, 429 token_budget_exhausted with Retry-After up to
// the next UTC midnight, named in the message. Other keys are unaffected.
func TestTokenBudgets(t *testing.T) {
	const budgeted, other = "budget-key-0123456789abcdef0123456789", "other-key-0123456789abcdef01234567890"
	e := startEnv(t, envOptions{fake: fakeTokens(10), auth: access.Config{Keys: []access.KeyConfig{
		{Name: "budgeted", Key: budgeted, TokensPerDay: 25},
		{Name: "other", Key: other},
	}}})
	hdr := map[string]string{"X-API-Key": budgeted}
	var used int
	for i := 0; ; i++ {
		st, h, body := e.do("POST", "/chat", `{"prompt":"count"}`, hdr)
		if st == 429 {
			midnight := time.Now().UTC().Truncate(24 * time.Hour).Add(24 * time.Hour)
			retry, _ := strconv.Atoi(h.Get("Retry-After"))
			if errorCode(t, body) != "token_budget_exhausted" || !strings.Contains(string(body), midnight.Format(time.RFC3339)) ||
				retry < 1 || time.Duration(retry)*time.Second > time.Until(midnight)+2*time.Second {
				t.Fatalf("over budget: %s, Retry-After %q (midnight in %s)", body, h.Get("Retry-After"), time.Until(midnight).Round(time.Second))
			}
			break
		}
		if st != 200 {
			t.Fatalf("request %d: %d %s", i, st, body)
		}
		u := decodeJSON(t, body)["usage"].(map[string]any)
		used += int(u["prompt_tokens"].(float64) + u["completion_tokens"].(float64))
	}
	if used < 25 || used > 25+15 {
		t.Fatalf("%d tokens admitted against a budget of 25", used)
	}
	if st, _, body := e.do("POST", "/chat", `{"prompt":"count"}`, map[string]string{"X-API-Key": other}); st != 200 {
		t.Fatalf("another key: %d %s", st, body)
	}
}

// TestOllamaKeyTokenBudget: a signed Ollama key (the real Ollama Go
// client, OLLAMA_AUTH=1) is charged the tokens of its replies like an API
// key, and refused with 429 once its tokens_per_day is used up.
func TestOllamaKeyTokenBudget(t *testing.T) {
	home, pub := ollamaHome(t)
	e := startEnv(t, envOptions{fake: ollamatest.Config{Tokens: 5}, auth: access.Config{
		OllamaKeys: []access.OllamaKeyConfig{{Name: "laptop", PublicKey: pub, TokensPerDay: 12}},
	}})
	t.Setenv("HOME", home)
	t.Setenv("OLLAMA_AUTH", "1")
	t.Setenv("OLLAMA_HOST", e.url)
	client, err := ollama.ClientFromEnvironment()
	if err != nil {
		t.Fatal(err)
	}
	stream := false
	var used int
	for i := 0; i < 50; i++ {
		var final ollama.ChatResponse
		err := client.Chat(context.Background(), &ollama.ChatRequest{Model: "llama3.2", Stream: &stream,
			Messages: []ollama.Message{{Role: "user", Content: "hi"}}}, func(r ollama.ChatResponse) error { final = r; return nil })
		var se ollama.StatusError
		if errors.As(err, &se) {
			if se.StatusCode != 429 || !strings.Contains(se.ErrorMessage, "tokens_per_day") {
				t.Fatalf("after %d tokens: %v, want 429 naming tokens_per_day", used, err)
			}
			if used < 12 {
				t.Fatalf("refused after %d tokens of a 12-token budget", used)
			}
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		used += final.PromptEvalCount + final.EvalCount
	}
	t.Fatalf("never refused after %d tokens", used)
}

// TestBackendLeaseSurvivesPanic: a panic after a request took its
// backend's limits.backend_max_in_flight slot gives the slot back (the
// in-process store would otherwise keep it for good): with a bound of 1,
// the next request is served.
func TestBackendLeaseSurvivesPanic(t *testing.T) {
	e := startRoutingEnv(t, routingOptions{
		models: [][]string{{"llama3.2"}},
		limits: &limits.Config{BackendMaxInFlight: 1},
		noRun:  true,
	})
	var armed atomic.Bool
	armed.Store(true)
	gateway.SetFaultHook(e.gw, func(where string) {
		if where == "send" && armed.CompareAndSwap(true, false) {
			panic("injected fault in send")
		}
	})
	if st, _, body := e.do("POST", "/api/chat", chatBody("llama3.2", "hi", false), nil); st != 500 || errorCode(t, body) != "internal_error" {
		t.Fatalf("panic in send: %d %s", st, body)
	}
	if st, _, body := e.do("POST", "/api/chat", chatBody("llama3.2", "again", false), nil); st != 200 {
		t.Fatalf("after the panic: %d %s: the backend slot was not given back", st, body)
	}
}
