package ollamatest

import (
	"encoding/json"
	"fmt"
	"hash/fnv"
	"math"
	"net/http"
	"strings"
	"time"
)

// decode parses the JSON body into v, answering 400 as Ollama does when it
// cannot ("missing request body" for an empty one).
func (x *exchange) decode(v any) bool {
	if len(strings.TrimSpace(string(x.body))) == 0 {
		x.fail(http.StatusBadRequest, "missing request body")
		return false
	}
	if err := json.Unmarshal(x.body, v); err != nil {
		x.fail(http.StatusBadRequest, err.Error())
		return false
	}
	return true
}

// inferModel checks a model for inference: 400 if missing, 404 if unknown,
// 400 if it cannot do what is asked ("chat", "generate"; "" for embeddings).
func (x *exchange) inferModel(name, verb string) (*modelEntry, bool) {
	if name == "" {
		x.fail(http.StatusBadRequest, "model is required")
		return nil, false
	}
	m, ok := x.s.model(name)
	if !ok {
		x.fail(http.StatusNotFound, fmt.Sprintf("model '%s' not found", name))
		return nil, false
	}
	if verb != "" && m.embedding {
		x.fail(http.StatusBadRequest, fmt.Sprintf("%q does not support %s", name, verb))
		return nil, false
	}
	return m, true
}

// numPredict reads options.num_predict.
func numPredict(opts map[string]any) int {
	if v, ok := opts["num_predict"].(float64); ok {
		return int(v)
	}
	return 0
}

// keepAliveZero reports keep_alive 0 (unload), given as a number or duration.
func keepAliveZero(v any) bool {
	switch k := v.(type) {
	case float64:
		return k == 0
	case string:
		d, err := time.ParseDuration(k)
		return (err == nil && d == 0) || k == "0"
	}
	return false
}

type message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type chatChunk struct {
	Model      string    `json:"model"`
	CreatedAt  time.Time `json:"created_at"`
	Message    message   `json:"message"`
	DoneReason string    `json:"done_reason,omitempty"`
	Done       bool      `json:"done"`
	metrics
}

type generateChunk struct {
	Model      string    `json:"model"`
	CreatedAt  time.Time `json:"created_at"`
	Response   string    `json:"response"`
	Done       bool      `json:"done"`
	DoneReason string    `json:"done_reason,omitempty"`
	Context    []int     `json:"context,omitempty"`
	metrics
}

// chat answers POST /api/chat.
func (x *exchange) chat() {
	var req struct {
		Model     string         `json:"model"`
		Messages  []message      `json:"messages"`
		Stream    *bool          `json:"stream"`
		Options   map[string]any `json:"options"`
		KeepAlive any            `json:"keep_alive"`
	}
	if !x.decode(&req) {
		return
	}
	if _, ok := x.inferModel(req.Model, "chat"); !ok {
		return
	}
	if len(req.Messages) == 0 { // Ollama loads (or unloads) the model and says so
		reason := "load"
		if keepAliveZero(req.KeepAlive) {
			x.s.unload(req.Model)
			reason = "unload"
		} else if !x.loadModel(req.Model, req.KeepAlive) {
			return
		}
		x.json(http.StatusOK, chatChunk{Model: req.Model, CreatedAt: time.Now().UTC(), Message: message{Role: "assistant"}, DoneReason: reason, Done: true})
		return
	}
	words := 0
	for _, m := range req.Messages {
		words += wordCount(m.Content)
	}
	g := x.newGen(req.Model, numPredict(req.Options), words)
	for _, m := range req.Messages {
		g.turn(m.Role, m.Content)
	}
	g.keepAlive = keepAliveOf(req.KeepAlive)
	streamed := req.Stream == nil || *req.Stream
	if !x.prepare(g, streamed) {
		return
	}
	chunk := func(content string) chatChunk {
		return chatChunk{Model: req.Model, CreatedAt: time.Now().UTC(), Message: message{Role: "assistant", Content: content}}
	}
	if !streamed {
		c := chunk(ReplyText(g.n))
		c.Done, c.DoneReason, c.metrics = true, g.reason, g.metrics(g.n)
		x.json(http.StatusOK, c)
		return
	}
	x.stream(&script{
		contentType: "application/x-ndjson",
		unit:        func(_ int, tok string) [][]byte { return [][]byte{ndjson(chunk(tok))} },
		units:       g.n,
		tail: func(n int) [][]byte {
			c := chunk("")
			c.Done, c.DoneReason, c.metrics = true, g.reason, g.metrics(n)
			return [][]byte{ndjson(c)}
		},
		fail: nativeError,
	})
}

// nativeError is Ollama's in-stream error line.
func nativeError(msg string) []byte { return ndjson(map[string]string{"error": msg}) }

// generate answers POST /api/generate.
func (x *exchange) generate() {
	var req struct {
		Model     string         `json:"model"`
		Prompt    string         `json:"prompt"`
		System    string         `json:"system"`
		Stream    *bool          `json:"stream"`
		Raw       bool           `json:"raw"`
		Options   map[string]any `json:"options"`
		KeepAlive any            `json:"keep_alive"`
	}
	if !x.decode(&req) {
		return
	}
	if _, ok := x.inferModel(req.Model, "generate"); !ok {
		return
	}
	if req.Prompt == "" {
		reason := "load"
		if keepAliveZero(req.KeepAlive) {
			x.s.unload(req.Model)
			reason = "unload"
		} else if !x.loadModel(req.Model, req.KeepAlive) {
			return
		}
		x.json(http.StatusOK, generateChunk{Model: req.Model, CreatedAt: time.Now().UTC(), Done: true, DoneReason: reason})
		return
	}
	g := x.newGen(req.Model, numPredict(req.Options), wordCount(req.System, req.Prompt))
	g.words(req.System, req.Prompt)
	g.keepAlive = keepAliveOf(req.KeepAlive)
	streamed := req.Stream == nil || *req.Stream
	if !x.prepare(g, streamed) {
		return
	}
	final := func(c generateChunk, n int) generateChunk {
		c.Done, c.DoneReason, c.metrics = true, g.reason, g.metrics(n)
		if !req.Raw {
			c.Context = []int{1, 2, 3}
		}
		return c
	}
	chunk := func(text string) generateChunk {
		return generateChunk{Model: req.Model, CreatedAt: time.Now().UTC(), Response: text}
	}
	if !streamed {
		x.json(http.StatusOK, final(chunk(ReplyText(g.n)), g.n))
		return
	}
	x.stream(&script{
		contentType: "application/x-ndjson",
		unit:        func(_ int, tok string) [][]byte { return [][]byte{ndjson(chunk(tok))} },
		units:       g.n,
		tail:        func(n int) [][]byte { return [][]byte{ndjson(final(chunk(""), n))} },
		fail:        nativeError,
	})
}

// Embedding returns the vector the fake gives text: EmbeddingDimensions
// floats, unit length, derived from an FNV hash of text.
func Embedding(text string) []float32 {
	h := fnv.New64a()
	_, _ = h.Write([]byte(text))
	seed := h.Sum64()
	v := make([]float32, EmbeddingDimensions)
	var sum float64
	for i := range v {
		seed = seed*6364136223846793005 + 1442695040888963407
		v[i] = float32(int64(seed>>33)%2001-1000) / 1000
		sum += float64(v[i]) * float64(v[i])
	}
	norm := float32(1 / math.Max(math.Sqrt(sum), 1e-12))
	for i := range v {
		v[i] *= norm
	}
	return v
}

// embedInputs reads the input of /api/embed and /v1/embeddings.
func embedInputs(in any) ([]string, bool) {
	switch v := in.(type) {
	case nil:
		return nil, true
	case string:
		if v == "" {
			return nil, true
		}
		return []string{v}, true
	case []any:
		out := make([]string, 0, len(v))
		for _, e := range v {
			s, ok := e.(string)
			if !ok {
				return nil, false
			}
			out = append(out, s)
		}
		return out, true
	}
	return nil, false
}

// embed answers POST /api/embed.
func (x *exchange) embed() {
	var req struct {
		Model     string `json:"model"`
		Input     any    `json:"input"`
		KeepAlive any    `json:"keep_alive"`
	}
	if !x.decode(&req) {
		return
	}
	inputs, ok := embedInputs(req.Input)
	if !ok {
		x.fail(http.StatusBadRequest, "invalid input type")
		return
	}
	if _, ok := x.inferModel(req.Model, ""); !ok {
		return
	}
	g := x.newGen(req.Model, 0, wordCount(inputs...))
	g.words(inputs...)
	g.embed, g.keepAlive = true, keepAliveOf(req.KeepAlive)
	if !x.prepare(g, true) || !x.pause(x.s.cfg.EmbedDelay) {
		return
	}
	vecs := make([][]float32, 0, len(inputs))
	for _, in := range inputs {
		vecs = append(vecs, Embedding(in))
	}
	m := g.metrics(0)
	x.json(http.StatusOK, map[string]any{
		"model": req.Model, "embeddings": vecs,
		"total_duration": m.TotalDuration, "load_duration": m.LoadDuration, "prompt_eval_count": g.promptToks,
	})
}

// embeddings answers the legacy POST /api/embeddings.
func (x *exchange) embeddings() {
	var req struct {
		Model     string `json:"model"`
		Prompt    string `json:"prompt"`
		KeepAlive any    `json:"keep_alive"`
	}
	if !x.decode(&req) {
		return
	}
	if _, ok := x.inferModel(req.Model, ""); !ok {
		return
	}
	g := x.newGen(req.Model, 0, wordCount(req.Prompt))
	g.words(req.Prompt)
	g.embed, g.keepAlive = true, keepAliveOf(req.KeepAlive)
	if !x.prepare(g, true) || !x.pause(x.s.cfg.EmbedDelay) {
		return
	}
	vec := []float64{}
	if req.Prompt != "" {
		for _, f := range Embedding(req.Prompt) {
			vec = append(vec, float64(f))
		}
	}
	x.json(http.StatusOK, map[string]any{"embedding": vec})
}
