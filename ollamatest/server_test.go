package ollamatest

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// newTestServer starts a fake closed at the end of the test.
func newTestServer(t *testing.T, cfg Config) *Server {
	t.Helper()
	s, err := NewServer(cfg)
	if err != nil {
		t.Fatalf("NewServer: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// do sends one request with a bounded wait; header pairs follow the body.
func do(t *testing.T, method, url, body string, header ...string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		if header[i] == "Host" {
			req.Host = header[i+1]
			continue
		}
		req.Header.Set(header[i], header[i+1])
	}
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	return resp
}

func readAll(t *testing.T, resp *http.Response) string {
	t.Helper()
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	return string(b)
}

func TestRoutes(t *testing.T) {
	s := newTestServer(t, Config{})
	tests := []struct {
		name, method, path, body string
		wantStatus               int
		wantCT, wantBody         string
	}{
		{"root", "GET", "/", "", 200, "text/plain", "Ollama is running"},
		{"root head", "HEAD", "/", "", 200, "text/plain", ""},
		{"version", "GET", "/api/version", "", 200, "application/json", `{"version":"0.17.4"}`},
		{"version head", "HEAD", "/api/version", "", 200, "application/json", ""},
		{"tags", "GET", "/api/tags", "", 200, "application/json", `"name":"llama3.2:latest"`},
		{"ps", "GET", "/api/ps", "", 200, "application/json", `{"models":[`},
		{"show", "POST", "/api/show", `{"model":"llama3.2"}`, 200, "application/json", `"capabilities":["completion","tools"]`},
		{"show unknown", "POST", "/api/show", `{"model":"nope"}`, 404, "application/json", `{"error":"model 'nope' not found"}`},
		{"unknown path", "GET", "/nope", "", 404, "text/plain", "404 page not found"},
		{"wrong method", "GET", "/api/chat", "", 405, "text/plain", "405 method not allowed"},
		{"bad json", "POST", "/api/chat", `{"model":`, 400, "application/json", `{"error":"unexpected end of JSON input"}`},
		{"empty body", "POST", "/api/chat", ``, 400, "application/json", `{"error":"missing request body"}`},
		{"no model", "POST", "/api/chat", `{"messages":[]}`, 400, "application/json", `{"error":"model is required"}`},
		{"unknown model", "POST", "/api/generate", `{"model":"x","prompt":"hi"}`, 404, "application/json", `{"error":"model 'x' not found"}`},
		{"embed model cannot chat", "POST", "/api/chat", `{"model":"nomic-embed-text","messages":[{"role":"user","content":"hi"}]}`, 400, "application/json", `does not support chat`},
		{"chat load", "POST", "/api/chat", `{"model":"llama3.2"}`, 200, "application/json", `"done_reason":"load","done":true`},
		{"embed", "POST", "/api/embed", `{"model":"nomic-embed-text","input":["a","b"]}`, 200, "application/json", `"embeddings":[[`},
		{"embeddings", "POST", "/api/embeddings", `{"model":"nomic-embed-text","prompt":"a"}`, 200, "application/json", `{"embedding":[`},
		{"pull", "POST", "/api/pull", `{"model":"phi3","stream":false}`, 200, "application/json", `{"status":"success"}`},
		{"copy", "POST", "/api/copy", `{"source":"llama3.2","destination":"mine"}`, 200, "", ""},
		{"copy unknown", "POST", "/api/copy", `{"source":"zz","destination":"mine"}`, 404, "application/json", `not found`},
		{"delete", "DELETE", "/api/delete", `{"model":"mine"}`, 200, "", ""},
		{"delete again", "DELETE", "/api/delete", `{"model":"mine"}`, 404, "application/json", `{"error":"model 'mine' not found"}`},
		{"blob head unknown", "HEAD", "/api/blobs/sha256:" + strings.Repeat("0", 64), "", 404, "application/json", ""},
		{"blob bad digest", "POST", "/api/blobs/abc", "x", 400, "application/json", "invalid digest format"},
		{"openai models", "GET", "/v1/models", "", 200, "application/json", `"id":"qwen2.5:0.5b","object":"model"`},
		{"openai model", "GET", "/v1/models/llama3.2", "", 200, "application/json", `{"id":"llama3.2","object":"model","created":`},
		{"openai model unknown", "GET", "/v1/models/zz", "", 404, "application/json", `{"error":{"message":"model 'zz' not found","type":"not_found_error","param":null,"code":null}}`},
		{"openai no messages", "POST", "/v1/chat/completions", `{"model":"llama3.2","messages":[]}`, 400, "application/json", `"type":"invalid_request_error"`},
		{"openai embeddings", "POST", "/v1/embeddings", `{"model":"nomic-embed-text","input":"hi"}`, 200, "application/json", `"object":"embedding"`},
		{"anthropic no max_tokens", "POST", "/v1/messages", `{"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}`, 400, "application/json",
			`"type":"error","error":{"type":"invalid_request_error","message":"max_tokens is required and must be positive"}`},
		{"anthropic unknown model", "POST", "/v1/messages", `{"model":"zz","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}`, 404, "application/json", `"not_found_error"`},
		{"bad fault", "POST", "/api/chat", `{"model":"fault:nope"}`, 400, "application/json", `unknown mode`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := do(t, tt.method, s.URL()+tt.path, tt.body)
			body := readAll(t, resp)
			if resp.StatusCode != tt.wantStatus {
				t.Fatalf("status = %d, want %d (body %q)", resp.StatusCode, tt.wantStatus, body)
			}
			if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, tt.wantCT) {
				t.Errorf("Content-Type = %q, want prefix %q", ct, tt.wantCT)
			}
			if !strings.Contains(body, tt.wantBody) {
				t.Errorf("body = %q, want it to contain %q", body, tt.wantBody)
			}
		})
	}
}

// ndjsonLines decodes every line of an NDJSON body, failing on a bad one.
func ndjsonLines(t *testing.T, body string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for line := range strings.Lines(body) {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil || !strings.HasSuffix(line, "\n") {
			t.Fatalf("bad NDJSON line %q: %v", line, err)
		}
		out = append(out, m)
	}
	return out
}

func TestNativeStreaming(t *testing.T) {
	s := newTestServer(t, Config{TokenDelay: time.Millisecond})
	tests := []struct {
		name, path, body string
		field            string // where the token is
		wantTokens       int
		wantReason       string
		wantPrompt       float64
	}{
		{"chat", "/api/chat", `{"model":"llama3.2","messages":[{"role":"user","content":"say hi please"}]}`, "message", DefaultTokens, "stop", 3},
		{"chat num_predict", "/api/chat", `{"model":"llama3.2:latest","stream":true,"options":{"num_predict":3},"messages":[{"role":"user","content":"hi"}]}`, "message", 3, "length", 1},
		{"generate", "/api/generate", `{"model":"qwen2.5:0.5b","prompt":"one two"}`, "response", DefaultTokens, "stop", 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := do(t, "POST", s.URL()+tt.path, tt.body)
			if ct := resp.Header.Get("Content-Type"); ct != "application/x-ndjson" {
				t.Errorf("Content-Type = %q, want application/x-ndjson", ct)
			}
			if te := resp.TransferEncoding; len(te) != 1 || te[0] != "chunked" {
				t.Errorf("TransferEncoding = %v, want chunked", te)
			}
			lines := ndjsonLines(t, readAll(t, resp))
			if len(lines) != tt.wantTokens+1 {
				t.Fatalf("got %d lines, want %d", len(lines), tt.wantTokens+1)
			}
			var text strings.Builder
			for _, l := range lines[:len(lines)-1] {
				if l["done"] != false {
					t.Fatalf("chunk %v: done = %v, want false", l, l["done"])
				}
				if tt.field == "message" {
					text.WriteString(l["message"].(map[string]any)["content"].(string))
				} else {
					text.WriteString(l["response"].(string))
				}
			}
			if got, want := text.String(), ReplyText(tt.wantTokens); got != want {
				t.Errorf("text = %q, want %q", got, want)
			}
			final := lines[len(lines)-1]
			if final["done"] != true || final["done_reason"] != tt.wantReason {
				t.Errorf("final done=%v done_reason=%v, want true %q", final["done"], final["done_reason"], tt.wantReason)
			}
			if got := final["eval_count"]; got != float64(tt.wantTokens) {
				t.Errorf("eval_count = %v, want %d", got, tt.wantTokens)
			}
			if got := final["prompt_eval_count"]; got != tt.wantPrompt {
				t.Errorf("prompt_eval_count = %v, want %v", got, tt.wantPrompt)
			}
			for _, k := range []string{"total_duration", "load_duration", "prompt_eval_duration", "eval_duration"} {
				if v, _ := final[k].(float64); v <= 0 {
					t.Errorf("%s = %v, want > 0", k, final[k])
				}
			}
		})
	}
}

func TestNativeNonStreaming(t *testing.T) {
	s := newTestServer(t, Config{Tokens: 4})
	resp := do(t, "POST", s.URL()+"/api/chat", `{"model":"llama3.2","stream":false,"messages":[{"role":"user","content":"hi"}]}`)
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("Content-Type = %q, want application/json", ct)
	}
	var got struct {
		Message    message `json:"message"`
		Done       bool    `json:"done"`
		DoneReason string  `json:"done_reason"`
		EvalCount  int     `json:"eval_count"`
	}
	if err := json.Unmarshal([]byte(readAll(t, resp)), &got); err != nil {
		t.Fatal(err)
	}
	if want := ReplyText(4); got.Message.Content != want || !got.Done || got.DoneReason != "stop" || got.EvalCount != 4 {
		t.Errorf("got %+v, want content %q done stop eval_count 4", got, want)
	}
}

// sseFrames splits an SSE body into events ("event" and "data" fields).
func sseFrames(t *testing.T, body string) [][2]string {
	t.Helper()
	if !strings.HasSuffix(body, "\n\n") {
		t.Fatalf("SSE body does not end with a blank line: %q", body)
	}
	var out [][2]string
	for _, ev := range strings.Split(strings.TrimSuffix(body, "\n\n"), "\n\n") {
		var f [2]string
		for _, line := range strings.Split(ev, "\n") {
			k, v, _ := strings.Cut(line, ": ")
			switch k {
			case "event":
				f[0] = v
			case "data":
				f[1] = v
			default:
				t.Fatalf("bad SSE line %q", line)
			}
		}
		out = append(out, f)
	}
	return out
}

func TestOpenAIStreaming(t *testing.T) {
	s := newTestServer(t, Config{})
	tests := []struct {
		name, path, body string
		wantFrames       int // before [DONE]
		wantUsage        bool
	}{
		{"chat", "/v1/chat/completions", `{"model":"llama3.2","stream":true,"messages":[{"role":"user","content":"hi"}]}`, DefaultTokens + 1, false},
		{"chat usage", "/v1/chat/completions", `{"model":"llama3.2","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"a b"}]}`, DefaultTokens + 2, true},
		{"completions usage", "/v1/completions", `{"model":"llama3.2","stream":true,"stream_options":{"include_usage":true},"prompt":"a b"}`, DefaultTokens + 2, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := do(t, "POST", s.URL()+tt.path, tt.body)
			if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
				t.Errorf("Content-Type = %q, want text/event-stream", ct)
			}
			frames := sseFrames(t, readAll(t, resp))
			if last := frames[len(frames)-1][1]; last != "[DONE]" {
				t.Fatalf("last frame = %q, want [DONE]", last)
			}
			frames = frames[:len(frames)-1]
			if len(frames) != tt.wantFrames {
				t.Fatalf("got %d frames before [DONE], want %d", len(frames), tt.wantFrames)
			}
			type chunk struct {
				Choices []struct {
					FinishReason *string `json:"finish_reason"`
				} `json:"choices"`
				Usage *oaUsage `json:"usage"`
			}
			var c chunk
			stopAt := len(frames) - 1
			if tt.wantUsage {
				stopAt--
				if err := json.Unmarshal([]byte(frames[len(frames)-1][1]), &c); err != nil {
					t.Fatal(err)
				}
				if len(c.Choices) != 0 || c.Usage == nil || c.Usage.CompletionTokens != DefaultTokens || c.Usage.PromptTokens != 2 {
					t.Errorf("usage chunk = %s, want empty choices and usage 2+%d", frames[len(frames)-1][1], DefaultTokens)
				}
			}
			if err := json.Unmarshal([]byte(frames[stopAt][1]), &c); err != nil {
				t.Fatal(err)
			}
			if len(c.Choices) != 1 || c.Choices[0].FinishReason == nil || *c.Choices[0].FinishReason != "stop" {
				t.Errorf("final chunk = %s, want finish_reason stop", frames[stopAt][1])
			}
		})
	}
}

func TestOpenAINonStreaming(t *testing.T) {
	s := newTestServer(t, Config{})
	resp := do(t, "POST", s.URL()+"/v1/chat/completions", `{"model":"llama3.2","max_tokens":2,"messages":[{"role":"user","content":"hi"}]}`)
	var got struct {
		Object  string `json:"object"`
		Choices []struct {
			Message      oaMessage `json:"message"`
			FinishReason string    `json:"finish_reason"`
		} `json:"choices"`
		Usage oaUsage `json:"usage"`
	}
	if err := json.Unmarshal([]byte(readAll(t, resp)), &got); err != nil {
		t.Fatal(err)
	}
	if got.Object != "chat.completion" || len(got.Choices) != 1 || got.Choices[0].Message.Content != ReplyText(2) ||
		got.Choices[0].FinishReason != "length" || got.Usage.TotalTokens != 3 {
		t.Errorf("got %+v, want a chat.completion of %q, finish_reason length, total_tokens 3", got, ReplyText(2))
	}
}

func TestAnthropicStreaming(t *testing.T) {
	s := newTestServer(t, Config{Tokens: 3})
	resp := do(t, "POST", s.URL()+"/v1/messages", `{"model":"llama3.2","max_tokens":100,"stream":true,"messages":[{"role":"user","content":"hi there"}]}`)
	frames := sseFrames(t, readAll(t, resp))
	var names []string
	var text strings.Builder
	for _, f := range frames {
		names = append(names, f[0])
		var data struct {
			Type  string `json:"type"`
			Delta struct {
				Text       string `json:"text"`
				StopReason string `json:"stop_reason"`
			} `json:"delta"`
		}
		if err := json.Unmarshal([]byte(f[1]), &data); err != nil || data.Type != f[0] {
			t.Fatalf("frame %v: type %q, err %v", f, data.Type, err)
		}
		text.WriteString(data.Delta.Text)
		if f[0] == "message_delta" && data.Delta.StopReason != "end_turn" {
			t.Errorf("stop_reason = %q, want end_turn", data.Delta.StopReason)
		}
	}
	want := "message_start content_block_start content_block_delta content_block_delta content_block_delta content_block_stop message_delta message_stop"
	if got := strings.Join(names, " "); got != want {
		t.Errorf("events = %s\nwant %s", got, want)
	}
	if text.String() != ReplyText(3) {
		t.Errorf("text = %q, want %q", text.String(), ReplyText(3))
	}

	resp = do(t, "POST", s.URL()+"/v1/messages", `{"model":"llama3.2","max_tokens":2,"messages":[{"role":"user","content":"hi"}]}`)
	body := readAll(t, resp)
	if !strings.Contains(body, `"content":[{"type":"text","text":"The quick"}],"stop_reason":"max_tokens"`) {
		t.Errorf("non-streamed message = %s", body)
	}
}

func TestHostCheck(t *testing.T) {
	s := newTestServer(t, Config{})
	tests := []struct {
		host string
		want int
	}{
		{"127.0.0.1:11434", 200},
		{"localhost", 200},
		{"localhost:8000", 200},
		{"[::1]:11434", 200},
		{"0.0.0.0", 200},
		{"10.1.2.3:11434", 200}, // private addresses pass, as in Ollama
		{"ollama.internal", 200},
		{"evil.example.com", 403},
		{"example.com:11434", 403},
		{"8.8.8.8", 403},
	}
	for _, tt := range tests {
		t.Run(tt.host, func(t *testing.T) {
			resp := do(t, "GET", s.URL()+"/api/version", "", "Host", tt.host)
			body := readAll(t, resp)
			if resp.StatusCode != tt.want {
				t.Errorf("status = %d, want %d", resp.StatusCode, tt.want)
			}
			if tt.want == 403 && body != "" {
				t.Errorf("403 body = %q, want empty", body)
			}
		})
	}
}

func TestRecordsRequests(t *testing.T) {
	s := newTestServer(t, Config{})
	c := &http.Client{Timeout: 5 * time.Second}
	for range 2 { // one keep-alive connection
		req, _ := http.NewRequest("POST", s.URL()+"/api/show?x=1", strings.NewReader(`{"model":"llama3.2"}`))
		req.Header.Set("X-Test", "yes")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		readAll(t, resp)
	}
	reqs := s.Requests()
	if len(reqs) != 2 {
		t.Fatalf("got %d requests, want 2", len(reqs))
	}
	r := reqs[1]
	if r.Method != "POST" || r.Path != "/api/show" || r.RawQuery != "x=1" || r.Header.Get("X-Test") != "yes" ||
		string(r.Body) != `{"model":"llama3.2"}` || r.ConnID == 0 || r.ConnID != reqs[0].ConnID || r.Finished.IsZero() {
		t.Errorf("request = %+v", r)
	}
	if st := s.Stats(); st.Requests != 2 || st.ConnsOpened != 1 || st.InFlight != 0 || st.ClientCancelled != 0 {
		t.Errorf("stats = %+v", st)
	}
	s.ResetStats()
	if st := s.Stats(); st.Requests != 0 || st.ConnsOpen != 1 || st.PeakConns != 1 || len(s.Requests()) != 0 {
		t.Errorf("after ResetStats: %+v", st)
	}
}

func TestBlobUpload(t *testing.T) {
	s := newTestServer(t, Config{})
	data := bytes.Repeat([]byte("blob"), 1<<20) // 4 MiB
	sum := sha256.Sum256(data)
	digest := "sha256:" + hex.EncodeToString(sum[:])

	resp := do(t, "POST", s.URL()+"/api/blobs/"+digest, string(data))
	if readAll(t, resp); resp.StatusCode != 201 {
		t.Fatalf("upload status = %d, want 201", resp.StatusCode)
	}
	if r := s.Requests()[0]; r.Body != nil || r.BodySize != int64(len(data)) {
		t.Errorf("recorded body %d bytes, size %d; want none, %d", len(r.Body), r.BodySize, len(data))
	}
	if resp := do(t, "HEAD", s.URL()+"/api/blobs/"+digest, ""); resp.StatusCode != 200 {
		t.Errorf("HEAD status = %d, want 200", resp.StatusCode)
	}
	bad := "sha256:" + strings.Repeat("1", 64)
	if resp := do(t, "POST", s.URL()+"/api/blobs/"+bad, "other"); readAll(t, resp) == "" || resp.StatusCode != 400 {
		t.Errorf("mismatched upload status = %d, want 400", resp.StatusCode)
	}
}

func TestLoadDelay(t *testing.T) {
	const delay = 50 * time.Millisecond
	s := newTestServer(t, Config{LoadDelay: delay})
	loadDuration := func() time.Duration {
		resp := do(t, "POST", s.URL()+"/api/generate", `{"model":"llama3.2","prompt":"hi","stream":false}`)
		var got metrics
		if err := json.Unmarshal([]byte(readAll(t, resp)), &got); err != nil {
			t.Fatal(err)
		}
		return got.LoadDuration
	}
	if d := loadDuration(); d < delay {
		t.Errorf("cold load_duration = %v, want >= %v", d, delay)
	}
	if d := loadDuration(); d >= delay {
		t.Errorf("warm load_duration = %v, want < %v", d, delay)
	}
	if body := readAll(t, do(t, "GET", s.URL()+"/api/ps", "")); !strings.Contains(body, `"name":"llama3.2:latest"`) {
		t.Errorf("ps = %s, want llama3.2:latest loaded", body)
	}
}

// lineReader reads NDJSON lines of a streaming response on a goroutine.
func lineReader(resp *http.Response) <-chan string {
	ch := make(chan string, 64)
	go func() {
		defer close(ch)
		br := bufio.NewReader(resp.Body)
		for {
			line, err := br.ReadString('\n')
			if line != "" {
				ch <- line
			}
			if err != nil {
				return
			}
		}
	}()
	return ch
}

func BenchmarkChatStream(b *testing.B) {
	s, err := NewServer(Config{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	c := &http.Client{}
	b.ReportAllocs()
	for b.Loop() {
		resp, err := c.Post(s.URL()+"/api/chat", "application/json", strings.NewReader(chatBody))
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
}
