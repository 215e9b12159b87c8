package gateway_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	ollama "github.com/ollama/ollama/api"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/vega-gateway/vega-gateway/access"
	"github.com/vega-gateway/vega-gateway/ollamatest"
	"github.com/vega-gateway/vega-gateway/pool"
)

func ollamaClient(t *testing.T, e *env) *ollama.Client {
	u, err := url.Parse(e.url)
	if err != nil {
		t.Fatal(err)
	}
	return ollama.NewClient(u, http.DefaultClient)
}

func TestOllamaClientThroughGateway(t *testing.T) {
	e := startEnv(t, envOptions{})
	c := ollamaClient(t, e)
	ctx := context.Background()

	t.Run("chat streaming", func(t *testing.T) {
		var chunks int
		var final ollama.ChatResponse
		var text strings.Builder
		err := c.Chat(ctx, &ollama.ChatRequest{Model: "llama3.2", Messages: []ollama.Message{{Role: "user", Content: "hi"}}},
			func(r ollama.ChatResponse) error {
				chunks++
				text.WriteString(r.Message.Content)
				if r.Done {
					final = r
				}
				return nil
			})
		if err != nil {
			t.Fatalf("Chat: %v", err)
		}
		if chunks < 2 || !final.Done || final.DoneReason == "" || final.EvalCount == 0 {
			t.Fatalf("chunks=%d final=%+v", chunks, final)
		}
		if text.Len() == 0 {
			t.Fatal("no text streamed")
		}
	})
	t.Run("chat non-streaming", func(t *testing.T) {
		stream := false
		var got []ollama.ChatResponse
		err := c.Chat(ctx, &ollama.ChatRequest{Model: "llama3.2", Stream: &stream, Messages: []ollama.Message{{Role: "user", Content: "hi"}}},
			func(r ollama.ChatResponse) error { got = append(got, r); return nil })
		if err != nil || len(got) != 1 || !got[0].Done || got[0].Message.Content == "" {
			t.Fatalf("err=%v got=%+v", err, got)
		}
	})
	t.Run("generate streaming", func(t *testing.T) {
		var done bool
		var text strings.Builder
		err := c.Generate(ctx, &ollama.GenerateRequest{Model: "llama3.2", Prompt: "hi"}, func(r ollama.GenerateResponse) error {
			text.WriteString(r.Response)
			done = done || r.Done
			return nil
		})
		if err != nil || !done || text.Len() == 0 {
			t.Fatalf("err=%v done=%v text=%q", err, done, text.String())
		}
	})
	t.Run("tags show version embed", func(t *testing.T) {
		tags, err := c.List(ctx)
		if err != nil || len(tags.Models) == 0 {
			t.Fatalf("List: %v %+v", err, tags)
		}
		show, err := c.Show(ctx, &ollama.ShowRequest{Model: "llama3.2"})
		if err != nil || show.Details.Family == "" && len(show.ModelInfo) == 0 {
			t.Fatalf("Show: %v %+v", err, show)
		}
		v, err := c.Version(ctx)
		if err != nil || v == "" {
			t.Fatalf("Version: %v %q", err, v)
		}
		emb, err := c.Embed(ctx, &ollama.EmbedRequest{Model: "nomic-embed-text", Input: "hello"})
		if err != nil || len(emb.Embeddings) != 1 || len(emb.Embeddings[0]) == 0 {
			t.Fatalf("Embed: %v %+v", err, emb)
		}
	})
	t.Run("unknown model is Ollama's 404 unchanged", func(t *testing.T) {
		err := c.Chat(ctx, &ollama.ChatRequest{Model: "nope", Messages: []ollama.Message{{Role: "user", Content: "hi"}}},
			func(ollama.ChatResponse) error { return nil })
		var se ollama.StatusError
		if err == nil || !asStatusError(err, &se) || se.StatusCode != 404 || !strings.Contains(se.ErrorMessage, "not found") {
			t.Fatalf("want Ollama's 404, got %v", err)
		}
	})
}

func asStatusError(err error, se *ollama.StatusError) bool {
	s, ok := err.(ollama.StatusError)
	if ok {
		*se = s
	}
	return ok
}

func TestOpenAISDKThroughGateway(t *testing.T) {
	e := startEnv(t, envOptions{auth: access.Config{APIKeys: []string{"sk-test-key-0123456789abcdef0123456789"}}})
	c := openai.NewClient(option.WithBaseURL(e.url+"/v1"), option.WithAPIKey("sk-test-key-0123456789abcdef0123456789"))
	ctx := context.Background()

	t.Run("chat completion", func(t *testing.T) {
		r, err := c.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
			Model:    "llama3.2",
			Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")},
		})
		if err != nil || len(r.Choices) == 0 || r.Choices[0].Message.Content == "" {
			t.Fatalf("err=%v resp=%+v", err, r)
		}
	})
	t.Run("streaming ends with DONE", func(t *testing.T) {
		s := c.Chat.Completions.NewStreaming(ctx, openai.ChatCompletionNewParams{
			Model:    "llama3.2",
			Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")},
		})
		var text strings.Builder
		n := 0
		for s.Next() {
			n++
			if ch := s.Current(); len(ch.Choices) > 0 {
				text.WriteString(ch.Choices[0].Delta.Content)
			}
		}
		if err := s.Err(); err != nil || n < 2 || text.Len() == 0 {
			t.Fatalf("err=%v chunks=%d text=%q", err, n, text.String())
		}
	})
	t.Run("embeddings and models", func(t *testing.T) {
		emb, err := c.Embeddings.New(ctx, openai.EmbeddingNewParams{
			Model: "nomic-embed-text", Input: openai.EmbeddingNewParamsInputUnion{OfString: openai.String("hello")},
		})
		if err != nil || len(emb.Data) != 1 {
			t.Fatalf("embeddings: %v %+v", err, emb)
		}
		models, err := c.Models.List(ctx)
		if err != nil || len(models.Data) == 0 {
			t.Fatalf("models: %v", err)
		}
	})
	t.Run("wrong key is an OpenAI-shaped 401", func(t *testing.T) {
		bad := openai.NewClient(option.WithBaseURL(e.url+"/v1"), option.WithAPIKey("wrong"), option.WithMaxRetries(0))
		_, err := bad.Models.List(ctx)
		var apiErr *openai.Error
		if err == nil || !errorsAs(err, &apiErr) || apiErr.StatusCode != 401 || apiErr.Code != "unauthorized" {
			t.Fatalf("want 401 unauthorized, got %v", err)
		}
	})
	// The key never reaches Ollama.
	for _, r := range e.fake.Requests() {
		if r.Header.Get("Authorization") != "" || r.Header.Get("X-API-Key") != "" {
			t.Fatalf("credential forwarded upstream on %s: %v", r.Path, r.Header)
		}
	}
}

func TestRawStreamingFormats(t *testing.T) {
	e := startEnv(t, envOptions{})
	t.Run("ndjson passthrough has stream headers and done chunk", func(t *testing.T) {
		st, h, body := e.do("POST", "/api/chat", `{"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}`, nil)
		if st != 200 || h.Get("Content-Type") != "application/x-ndjson" || h.Get("Cache-Control") != "no-cache" || h.Get("X-Accel-Buffering") != "no" {
			t.Fatalf("status=%d headers=%v", st, h)
		}
		lines := strings.Split(strings.TrimSuffix(string(body), "\n"), "\n")
		last := decodeJSON(t, []byte(lines[len(lines)-1]))
		if last["done"] != true || last["done_reason"] == nil || last["eval_count"] == nil {
			t.Fatalf("last line %v", last)
		}
		for _, l := range lines {
			decodeJSON(t, []byte(l)) // every line whole JSON: never split or merged
		}
	})
	t.Run("sse ends with DONE", func(t *testing.T) {
		st, h, body := e.do("POST", "/v1/chat/completions", `{"model":"llama3.2","stream":true,"messages":[{"role":"user","content":"hi"}]}`, nil)
		if st != 200 || !strings.HasPrefix(h.Get("Content-Type"), "text/event-stream") {
			t.Fatalf("status=%d ct=%q", st, h.Get("Content-Type"))
		}
		if !strings.HasSuffix(string(body), "data: [DONE]\n\n") {
			t.Fatalf("body does not end with [DONE]: %q", body)
		}
	})
}

// TestFramesArriveUnbuffered proves the client reads frame 1 before the
// fake sends frame 2: the fake holds frame 2 until released.
func TestFramesArriveUnbuffered(t *testing.T) {
	for _, tc := range []struct{ name, path, body string }{
		{"ndjson", "/api/chat", `{"model":"fault:gated","messages":[{"role":"user","content":"hi"}]}`},
		{"sse", "/v1/chat/completions", `{"model":"fault:gated","stream":true,"messages":[{"role":"user","content":"hi"}]}`},
		{"chat", "/chat", `{"model":"fault:gated","prompt":"hi","stream":true}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := startEnv(t, envOptions{fake: fakeTokens(3)})
			resp, err := http.Post(e.url+tc.path, "application/json", strings.NewReader(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			r := bufio.NewReader(resp.Body)
			first := make(chan string, 1)
			go func() {
				l, _ := r.ReadString('\n')
				first <- l
			}()
			select {
			case l := <-first:
				if strings.TrimSpace(l) == "" {
					t.Fatalf("empty first line")
				}
			case <-time.After(5 * time.Second):
				t.Fatal("first frame not delivered while the fake holds the second")
			}
			for i := 0; i < 10; i++ {
				e.fake.ReleaseFrame()
			}
		})
	}
}

func TestChatEndpoint(t *testing.T) {
	e := startEnv(t, envOptions{})
	t.Run("non-streaming", func(t *testing.T) {
		st, h, body := e.do("POST", "/chat", `{"prompt":"test"}`, map[string]string{"Content-Type": "application/x-www-form-urlencoded", "X-Correlation-ID": "debug-123"})
		m := decodeJSON(t, body)
		if st != 200 || h.Get("X-Correlation-ID") != "debug-123" || m["correlation_id"] != "debug-123" {
			t.Fatalf("status=%d id=%q body=%s", st, h.Get("X-Correlation-ID"), body)
		}
		if m["response"] == "" || m["model"] != "llama3.2" || m["done_reason"] == nil {
			t.Fatalf("body %s", body)
		}
		usage := m["usage"].(map[string]any)
		timings := m["timings"].(map[string]any)
		if usage["completion_tokens"].(float64) == 0 || timings["tokens_per_second"] == nil {
			t.Fatalf("usage/timings %s", body)
		}
	})
	t.Run("streaming", func(t *testing.T) {
		st, h, body := e.do("POST", "/chat", `{"prompt":"test","stream":true,"system":"be brief","history":[{"role":"user","content":"a"},{"role":"assistant","content":"b"}]}`, nil)
		if st != 200 || h.Get("Content-Type") != "application/x-ndjson" {
			t.Fatalf("status=%d ct=%q", st, h.Get("Content-Type"))
		}
		lines := strings.Split(strings.TrimSuffix(string(body), "\n"), "\n")
		if len(lines) < 2 {
			t.Fatalf("lines: %q", body)
		}
		for _, l := range lines[:len(lines)-1] {
			if _, ok := decodeJSON(t, []byte(l))["delta"]; !ok {
				t.Fatalf("not a delta line: %q", l)
			}
		}
		last := decodeJSON(t, []byte(lines[len(lines)-1]))
		if last["done"] != true || last["usage"] == nil || last["timings"] == nil || last["correlation_id"] != h.Get("X-Correlation-ID") {
			t.Fatalf("final line %v", last)
		}
		// The fake received system + history + prompt as messages.
		reqs := e.fake.Requests()
		var sent struct {
			Messages []struct{ Role, Content string }
		}
		_ = json.Unmarshal(reqs[len(reqs)-1].Body, &sent)
		if len(sent.Messages) != 4 || sent.Messages[0].Role != "system" || sent.Messages[3].Content != "test" {
			t.Fatalf("upstream messages %+v", sent.Messages)
		}
	})
	t.Run("bad bodies", func(t *testing.T) {
		before := len(e.fake.Requests())
		for _, tc := range []struct {
			name, body, ct string
			status         int
			code           string
		}{
			{"malformed", `{"prompt":`, "", 400, "invalid_json"},
			{"empty", ``, "", 400, "invalid_json"},
			{"array", `[]`, "", 400, "invalid_json"},
			{"trailing", `{"prompt":"a"} x`, "", 400, "invalid_json"},
			{"prompt number", `{"prompt":1}`, "", 400, "invalid_field"},
			{"missing prompt", `{"model":"llama3.2"}`, "", 400, "invalid_prompt"},
			{"blank prompt", `{"prompt":"  "}`, "", 400, "invalid_prompt"},
			{"unknown field", `{"prompt":"a","raw":true}`, "", 400, "invalid_field"},
			{"duplicate", `{"prompt":"a","prompt":"b"}`, "", 400, "invalid_field"},
			{"case variant", `{"PROMPT":"a"}`, "", 400, "invalid_field"},
			{"invalid utf8", "{\"prompt\":\"\xff\"}", "", 400, "invalid_prompt"},
			{"multipart", `{"prompt":"a"}`, "multipart/form-data; boundary=x", 415, "unsupported_media_type"},
			{"too big", `{"prompt":"` + strings.Repeat("a", 2<<20) + `"}`, "", 413, "body_too_large"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				hdr := map[string]string{"X-Correlation-ID": "bad-" + strings.ReplaceAll(tc.name, " ", "-")}
				if tc.ct != "" {
					hdr["Content-Type"] = tc.ct
				}
				st, h, body := e.do("POST", "/chat", tc.body, hdr)
				m := decodeJSON(t, body)
				if st != tc.status || m["code"] != tc.code || m["correlation_id"] != hdr["X-Correlation-ID"] || h.Get("X-Correlation-ID") != hdr["X-Correlation-ID"] {
					t.Fatalf("got %d %s, want %d %s", st, body, tc.status, tc.code)
				}
				if _, ok := m["error"].(string); !ok {
					t.Fatalf("error field not a string: %s", body)
				}
			})
		}
		if got := len(e.fake.Requests()); got != before {
			t.Fatalf("rejected bodies reached the upstream: %d requests", got-before)
		}
	})
	t.Run("wrong method", func(t *testing.T) {
		st, h, _ := e.do("GET", "/chat", "", nil)
		if st != 405 || h.Get("Allow") != "POST" {
			t.Fatalf("status=%d allow=%q", st, h.Get("Allow"))
		}
	})
}

func TestCorrelationID(t *testing.T) {
	e := startEnv(t, envOptions{})
	for _, tc := range []struct {
		name, sent string
		keep       bool
	}{
		{"absent", "", false},
		{"valid", "abc-123_X.y", true},
		{"uuid", "0f8fad5b-d9cb-469f-a165-70867728950e", true},
		{"too long", strings.Repeat("a", 129), false},
		{"bad chars", "abc def", false},
		{"injection", `x"},{"admin":true`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hdr := map[string]string{}
			if tc.sent != "" {
				hdr["X-Correlation-ID"] = tc.sent
			}
			st, h, _ := e.do("GET", "/api/tags", "", hdr)
			got := h.Get("X-Correlation-ID")
			if st != 200 || got == "" {
				t.Fatalf("status=%d id=%q", st, got)
			}
			if tc.keep != (got == tc.sent) {
				t.Fatalf("sent %q, got %q, keep=%v", tc.sent, got, tc.keep)
			}
			if !tc.keep && !uuidV4.MatchString(got) {
				t.Fatalf("replacement %q is not a UUIDv4", got)
			}
			reqs := e.fake.Requests()
			if up := reqs[len(reqs)-1].Header.Get("X-Correlation-ID"); up != got {
				t.Fatalf("upstream got %q, client got %q", up, got)
			}
			if tp := reqs[len(reqs)-1].Header.Get("traceparent"); len(tp) != 55 {
				t.Fatalf("traceparent %q", tp)
			}
			waitFor(t, 2*time.Second, "access line", func() bool { return len(e.logs.accessLines(t, got)) == 1 })
			if tc.sent != "" && !tc.keep && strings.Contains(e.logs.String(), tc.sent) {
				t.Fatalf("rejected ID appears raw in the log")
			}
		})
	}
	t.Run("healthz carries it without touching upstream", func(t *testing.T) {
		before := e.fake.Stats().Requests
		st, h, _ := e.do("GET", "/healthz", "", nil)
		if st != 200 || h.Get("X-Correlation-ID") == "" || e.fake.Stats().Requests != before {
			t.Fatalf("status=%d id=%q", st, h.Get("X-Correlation-ID"))
		}
	})
	t.Run("Connection header cannot strip it", func(t *testing.T) {
		e.do("GET", "/api/tags", "", map[string]string{"Connection": "X-Correlation-ID, X-Foo", "X-Foo": "1", "X-Correlation-ID": "keep-me"})
		reqs := e.fake.Requests()
		last := reqs[len(reqs)-1]
		if last.Header.Get("X-Correlation-ID") != "keep-me" || last.Header.Get("X-Foo") != "" {
			t.Fatalf("upstream headers %v", last.Header)
		}
		if h := last.Host; !strings.HasPrefix(h, "127.0.0.1:") {
			t.Fatalf("upstream Host %q", h)
		}
	})
}

func TestAuth(t *testing.T) {
	const key = "vega-test-key-7f3a9c2e5b1d4f6a8c0e2b4d6f8a1c3e"
	e := startEnv(t, envOptions{auth: access.Config{APIKeys: []string{key}}})
	for _, tc := range []struct {
		name   string
		hdr    map[string]string
		status int
	}{
		{"none", nil, 401},
		{"wrong", map[string]string{"X-API-Key": "nope"}, 401},
		{"case differs", map[string]string{"X-API-Key": strings.ToUpper(key)}, 401},
		{"x-api-key", map[string]string{"X-API-Key": key}, 200},
		{"bearer", map[string]string{"Authorization": "Bearer " + key}, 200},
		{"bearer lower", map[string]string{"Authorization": "bearer " + key}, 200},
		{"basic", map[string]string{"Authorization": "Basic " + key}, 401},
		{"ambiguous", map[string]string{"X-API-Key": key, "Authorization": "Bearer other"}, 401},
		{"query key ignored", map[string]string{"X-Query": "1"}, 401},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := "/api/tags"
			if tc.name == "query key ignored" {
				path += "?api_key=" + key
			}
			st, _, body := e.do("GET", path, "", tc.hdr)
			if st != tc.status {
				t.Fatalf("status %d, want %d: %s", st, tc.status, body)
			}
			if st == 401 && decodeJSON(t, body)["code"] != "unauthorized" {
				t.Fatalf("body %s", body)
			}
		})
	}
	if st, _, _ := e.do("GET", "/healthz", "", nil); st != 200 {
		t.Fatalf("/healthz needs no key, got %d", st)
	}
	for _, p := range []string{"/admin/resources/pools", "/admin/", "/metrics", "/readyz"} {
		if st, _, _ := e.do("GET", p, "", nil); st != 404 {
			t.Fatalf("admin route %s on the data listener: %d", p, st)
		}
	}
	waitFor(t, 2*time.Second, "logs", func() bool { return strings.Contains(e.logs.String(), "unauthorized") || len(e.logs.lines(t)) > 5 })
	if strings.Contains(e.logs.String(), key) {
		t.Fatal("API key appears in the log")
	}
}

func TestConnectionReuse(t *testing.T) {
	e := startEnv(t, envOptions{})
	for i := 0; i < 100; i++ {
		if st, _, _ := e.do("POST", "/chat", fmt.Sprintf(`{"prompt":"test %d"}`, i), nil); st != 200 {
			t.Fatalf("request %d: status %d", i, st)
		}
	}
	if got := e.fake.Stats().ConnsOpened; got != 1 {
		t.Fatalf("100 sequential requests opened %d upstream connections, want 1", got)
	}
	s := e.pool.Snapshot()
	if s.ClientsCreated != 1 || s.RequestsMade != 100 {
		t.Fatalf("clients_created=%d requests_made=%d", s.ClientsCreated, s.RequestsMade)
	}
}

func TestPoolBound(t *testing.T) {
	const max = 3
	e := startEnv(t, envOptions{
		fake: fakeTokensDelay(10, 20*time.Millisecond),
		pool: pool.Config{MaxConnections: max, MaxWait: 10 * time.Second},
	})
	var wg sync.WaitGroup
	errs := make(chan error, 3*max)
	for i := 0; i < 3*max; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := http.Post(e.url+"/api/chat", "application/json", strings.NewReader(`{"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}`))
			if err != nil {
				errs <- err
				return
			}
			defer resp.Body.Close()
			sc := bufio.NewScanner(resp.Body)
			var last string
			for sc.Scan() {
				last = sc.Text()
			}
			if resp.StatusCode != 200 || !strings.Contains(last, `"done":true`) {
				errs <- fmt.Errorf("status %d last %q", resp.StatusCode, last)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if peak := e.fake.Stats().PeakConns; peak > max || peak == 0 {
		t.Fatalf("fake saw %d concurrent connections, bound is %d", peak, max)
	}
	s := e.pool.Snapshot()
	if s.RequestsWaiting != 0 || s.RequestsInFlight != 0 {
		t.Fatalf("queue not drained: %+v", s)
	}
}

func TestPoolWaitTimeout(t *testing.T) {
	e := startEnv(t, envOptions{pool: pool.Config{MaxConnections: 1, MaxWait: 100 * time.Millisecond}})
	held := make(chan struct{})
	go func() {
		defer close(held)
		req, _ := http.NewRequest("POST", e.url+"/api/chat", strings.NewReader(`{"model":"fault:hang","messages":[{"role":"user","content":"hi"}]}`))
		c := &http.Client{Timeout: 2 * time.Second}
		if resp, err := c.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	waitFor(t, 2*time.Second, "slot taken", func() bool { return e.pool.Snapshot().RequestsInFlight == 1 })
	start := time.Now()
	st, h, body := e.do("POST", "/api/chat", `{"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}`, nil)
	m := decodeJSON(t, body)
	if st != 503 || m["code"] != "upstream_pool_exhausted" || h.Get("Retry-After") == "" {
		t.Fatalf("status=%d body=%s", st, body)
	}
	if waited := time.Since(start); waited < 90*time.Millisecond {
		t.Fatalf("refused after %s, before max_wait", waited)
	}
	if e.pool.Snapshot().WaitTimeouts != 1 {
		t.Fatalf("wait_timeouts = %d", e.pool.Snapshot().WaitTimeouts)
	}
	<-held
}

func TestUpstreamFaults(t *testing.T) {
	t.Run("upstream down is 502 in every family", func(t *testing.T) {
		e := startEnv(t, envOptions{noFake: true, upURL: "http://" + closedPort(t)})
		for _, tc := range []struct{ path, body string }{
			{"/api/chat", `{"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}`},
			{"/v1/chat/completions", `{"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}`},
			{"/chat", `{"prompt":"hi"}`},
		} {
			id := "down" + strings.ReplaceAll(tc.path, "/", "-")
			st, h, body := e.do("POST", tc.path, tc.body, map[string]string{"X-Correlation-ID": id})
			e.wantOutcome(t, id, "upstream_connect_failed")
			if st != 502 || !strings.Contains(string(body), "upstream_unavailable") || !strings.Contains(string(body), h.Get("X-Correlation-ID")) {
				t.Fatalf("%s: status=%d body=%s", tc.path, st, body)
			}
			if tc.path == "/v1/chat/completions" {
				var oe struct {
					Error struct{ Message, Code string }
				}
				if json.Unmarshal(body, &oe) != nil || oe.Error.Message == "" {
					t.Fatalf("not OpenAI-shaped: %s", body)
				}
			}
		}
	})
	t.Run("hang before headers is 504 and closes the upstream", func(t *testing.T) {
		e := startEnv(t, envOptions{upstream: pool.UpstreamConfig{FirstByteTimeout: 200 * time.Millisecond}})
		st, _, body := e.do("POST", "/api/chat", `{"model":"fault:hang","messages":[{"role":"user","content":"hi"}]}`, map[string]string{"X-Correlation-ID": "fault-hang"})
		e.wantOutcome(t, "fault-hang", "upstream_timeout")
		if st != 504 || decodeJSON(t, body)["code"] != "upstream_timeout" {
			t.Fatalf("status=%d body=%s", st, body)
		}
		waitFor(t, 2*time.Second, "upstream connection closed", func() bool { return e.fake.Stats().ConnsOpen == 0 })
	})
	for _, tc := range []struct{ name, model, code string }{
		{"dies mid-stream", "fault:die_after=2", "upstream_reset"},
		{"reset mid-stream", "fault:rst_after=2", "upstream_reset"},
		{"half a line then close", "fault:half_line_then_close", "upstream_reset"},
		{"stalls", "fault:stall_after=2", "upstream_idle_timeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := startEnv(t, envOptions{upstream: pool.UpstreamConfig{IdleTimeout: 300 * time.Millisecond}})
			id := "fault-" + strings.NewReplacer(" ", "-", ":", "-", "=", "-").Replace(tc.name)
			st, _, body := e.do("POST", "/api/chat", `{"model":"`+tc.model+`","messages":[{"role":"user","content":"hi"}]}`, map[string]string{"X-Correlation-ID": id})
			e.wantOutcome(t, id, tc.code)
			lines := strings.Split(strings.TrimSuffix(string(body), "\n"), "\n")
			if st != 200 || len(lines) < 2 {
				t.Fatalf("status=%d body=%q", st, body)
			}
			for _, l := range lines {
				m := decodeJSON(t, []byte(l)) // no partial line ever reaches the client
				if m["done"] == true {
					t.Fatalf("fake success after a failure: %q", body)
				}
			}
			last := decodeJSON(t, []byte(lines[len(lines)-1]))
			if last["code"] != tc.code || last["error"] == nil || last["correlation_id"] == nil {
				t.Fatalf("terminal line %v", last)
			}
			// The same for OpenAI SSE: an error event, never [DONE].
			st, _, body = e.do("POST", "/v1/chat/completions", `{"model":"`+tc.model+`","stream":true,"messages":[{"role":"user","content":"hi"}]}`, nil)
			if st != 200 || strings.Contains(string(body), "[DONE]") || !strings.Contains(string(body), `data: {"error":{`) {
				t.Fatalf("sse status=%d body=%q", st, body)
			}
		})
	}
}

// TestClientDisconnectClosesUpstream: a client that leaves mid-stream makes
// the gateway close its upstream connection, so Ollama stops generating.
func TestClientDisconnectClosesUpstream(t *testing.T) {
	e := startEnv(t, envOptions{fake: fakeTokensDelay(1000, 20*time.Millisecond)})
	resp, _ := e.openStream(t, "/api/chat", `{"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}`)
	resp.Body.Close()
	http.DefaultTransport.(*http.Transport).CloseIdleConnections()
	waitFor(t, 3*time.Second, "upstream closed", func() bool { return e.fake.Stats().ClientCancelled == 1 })
	waitFor(t, 2*time.Second, "pool released", func() bool {
		s := e.pool.Snapshot()
		return s.RequestsInFlight == 0 && s.ClientDisconnects == 1
	})
}

func closedPort(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

var uuidV4 = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

func errorsAs(err error, target any) bool { return errors.As(err, target) }

func fakeTokens(n int) ollamatest.Config { return ollamatest.Config{Tokens: n} }

func fakeTokensDelay(n int, d time.Duration) ollamatest.Config {
	return ollamatest.Config{Tokens: n, TokenDelay: d}
}

func TestScopesAndKeyLimits(t *testing.T) {
	const (
		reader  = "reader-key-0123456789abcdef0123456789"
		manager = "manager-key-0123456789abcdef01234567"
		limited = "limited-key-0123456789abcdef01234567"
	)
	e := startEnv(t, envOptions{
		fake: fakeTokensDelay(20, 20*time.Millisecond),
		auth: access.Config{APIKeys: []string{reader}, Keys: []access.KeyConfig{
			{Name: "ops", Key: manager, Scopes: []string{"models:manage", "models:read"}},
			{Name: "ci", Key: limited, MaxConcurrent: 1},
		}},
	})
	for _, tc := range []struct {
		name, key, method, path, body string
		status                        int
	}{
		{"plain key infers", reader, "POST", "/api/chat", `{"model":"llama3.2","stream":false,"messages":[{"role":"user","content":"hi"}]}`, 200},
		{"plain key reads", reader, "GET", "/api/tags", "", 200},
		{"plain key cannot pull", reader, "POST", "/api/pull", `{"model":"llama3.2","stream":false}`, 403},
		{"plain key cannot delete", reader, "DELETE", "/api/delete", `{"model":"x"}`, 403},
		{"normalised path cannot bypass", reader, "POST", "/api/./pull", `{"model":"llama3.2","stream":false}`, 403},
		{"manage key pulls", manager, "POST", "/api/pull", `{"model":"llama3.2","stream":false}`, 200},
		{"manage key cannot infer", manager, "POST", "/chat", `{"prompt":"hi"}`, 403},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, _, body := e.do(tc.method, tc.path, tc.body, map[string]string{"Authorization": "Bearer " + tc.key})
			if st != tc.status {
				t.Fatalf("status %d, want %d: %s", st, tc.status, body)
			}
			if st == 403 && decodeJSON(t, body)["code"] != "route_forbidden" {
				t.Fatalf("body %s", body)
			}
		})
	}
	t.Run("per-key concurrency", func(t *testing.T) {
		resp, err := http.DefaultClient.Do(mustRequest(t, "POST", e.url+"/api/chat", `{"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}`, limited))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		st, h, body := e.do("POST", "/api/chat", `{"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}`, map[string]string{"X-API-Key": limited})
		if st != 429 || decodeJSON(t, body)["code"] != "key_concurrency_limit" || h.Get("Retry-After") == "" {
			t.Fatalf("second stream of a max_concurrent=1 key: %d %s", st, body)
		}
		// Another key is unaffected.
		if st, _, _ := e.do("GET", "/api/tags", "", map[string]string{"X-API-Key": reader}); st != 200 {
			t.Fatalf("other key: %d", st)
		}
	})
	waitFor(t, 2*time.Second, "log lines", func() bool { return strings.Contains(e.logs.String(), `"key_id":"ops"`) })
	for _, k := range []string{reader, manager, limited} {
		if strings.Contains(e.logs.String(), k) {
			t.Fatal("a key appears in the log")
		}
	}
}

func TestModelManagementWhenOpen(t *testing.T) {
	closed := startEnv(t, envOptions{})
	if st, _, body := closed.do("POST", "/api/pull", `{"model":"llama3.2","stream":false}`, nil); st != 403 {
		t.Fatalf("open gateway allowed pull by default: %d %s", st, body)
	}
	open := startEnv(t, envOptions{auth: access.Config{AllowModelManagement: true}})
	if st, _, body := open.do("POST", "/api/pull", `{"model":"llama3.2","stream":false}`, nil); st != 200 {
		t.Fatalf("allow_model_management: %d %s", st, body)
	}
}

func mustRequest(t *testing.T, method, url, body, key string) *http.Request {
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-API-Key", key)
	return req
}
