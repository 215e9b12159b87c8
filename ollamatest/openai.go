package ollamatest

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// OpenAI-compatible wire types, as Ollama's openai package writes them.
type (
	oaMessage struct {
		Role    string `json:"role"`
		Content string `json:"content"`
	}
	oaUsage struct {
		PromptTokens     int `json:"prompt_tokens"`
		CompletionTokens int `json:"completion_tokens"`
		TotalTokens      int `json:"total_tokens"`
	}
	oaChoice struct {
		Index        int       `json:"index"`
		Message      oaMessage `json:"message"`
		FinishReason *string   `json:"finish_reason"`
	}
	oaChunkChoice struct {
		Index        int       `json:"index"`
		Delta        oaMessage `json:"delta"`
		FinishReason *string   `json:"finish_reason"`
	}
	oaTextChoice struct {
		Text         string  `json:"text"`
		Index        int     `json:"index"`
		FinishReason *string `json:"finish_reason"`
	}
	oaResponse struct {
		ID                string   `json:"id"`
		Object            string   `json:"object"`
		Created           int64    `json:"created"`
		Model             string   `json:"model"`
		SystemFingerprint string   `json:"system_fingerprint"`
		Choices           any      `json:"choices"`
		Usage             *oaUsage `json:"usage,omitempty"`
	}
	oaError struct {
		Message string  `json:"message"`
		Type    string  `json:"type"`
		Param   any     `json:"param"`
		Code    *string `json:"code"`
	}
	oaErrorResponse struct {
		Error oaError `json:"error"`
	}
	oaStreamOptions struct {
		IncludeUsage bool `json:"include_usage"`
	}
)

// nextID returns prefix and a per-server counter ("chatcmpl-", "cmpl-" take
// it below 1000 like Ollama's; "msg_"/"req_" as 24 hex digits).
func (s *Server) nextID(prefix string) string {
	n := s.ids.Add(1)
	if strings.HasSuffix(prefix, "-") {
		return fmt.Sprintf("%s%d", prefix, n%999)
	}
	return fmt.Sprintf("%s%024x", prefix, n)
}

// oaText flattens an OpenAI message content (string or parts) for counting.
func oaText(content any) string {
	switch c := content.(type) {
	case string:
		return c
	case []any:
		var b strings.Builder
		for _, p := range c {
			if m, ok := p.(map[string]any); ok {
				if t, ok := m["text"].(string); ok {
					b.WriteString(t + " ")
				}
			}
		}
		return b.String()
	}
	return ""
}

func usage(g *gen, n int) *oaUsage {
	return &oaUsage{PromptTokens: g.promptToks, CompletionTokens: n, TotalTokens: g.promptToks + n}
}

// openAIChat answers POST /v1/chat/completions.
func (x *exchange) openAIChat() {
	var req struct {
		Model    string `json:"model"`
		Messages []struct {
			Role    string `json:"role"`
			Content any    `json:"content"`
		} `json:"messages"`
		Stream        bool             `json:"stream"`
		StreamOptions *oaStreamOptions `json:"stream_options"`
		MaxTokens     *int             `json:"max_tokens"`
	}
	if !x.decode(&req) {
		return
	}
	if len(req.Messages) == 0 {
		x.fail(http.StatusBadRequest, "[] is too short - 'messages'")
		return
	}
	if _, ok := x.inferModel(req.Model, "chat"); !ok {
		return
	}
	words := 0
	for _, m := range req.Messages {
		words += wordCount(oaText(m.Content))
	}
	limit := 0
	if req.MaxTokens != nil {
		limit = *req.MaxTokens
	}
	g := x.newGen(req.Model, limit, words)
	for _, m := range req.Messages {
		g.turn(m.Role, oaText(m.Content))
	}
	if !x.prepare(g, req.Stream) {
		return
	}
	id, created := x.s.nextID("chatcmpl-"), time.Now().Unix()
	resp := func(object string, choices any, u *oaUsage) oaResponse {
		return oaResponse{ID: id, Object: object, Created: created, Model: req.Model, SystemFingerprint: "fp_ollama", Choices: choices, Usage: u}
	}
	if !req.Stream {
		x.json(http.StatusOK, resp("chat.completion",
			[]oaChoice{{Message: oaMessage{Role: "assistant", Content: ReplyText(g.n)}, FinishReason: &g.reason}}, usage(g, g.n)))
		return
	}
	includeUsage := req.StreamOptions != nil && req.StreamOptions.IncludeUsage
	x.stream(&script{
		contentType: "text/event-stream",
		units:       g.n,
		unit: func(_ int, tok string) [][]byte {
			return [][]byte{sseData(resp("chat.completion.chunk", []oaChunkChoice{{Delta: oaMessage{Role: "assistant", Content: tok}}}, nil))}
		},
		tail: func(n int) [][]byte {
			out := [][]byte{sseData(resp("chat.completion.chunk",
				[]oaChunkChoice{{Delta: oaMessage{Role: "assistant"}, FinishReason: &g.reason}}, nil))}
			if includeUsage {
				out = append(out, sseData(resp("chat.completion.chunk", []oaChunkChoice{}, usage(g, n))))
			}
			return append(out, []byte("data: [DONE]\n\n"))
		},
		fail: openAIStreamError,
	})
}

// openAIStreamError is the error event OpenAI sends mid-stream. (Ollama
// itself turns a mid-stream error into an empty chunk; a fake that says so
// is more useful.)
func openAIStreamError(msg string) []byte {
	return sseData(oaErrorResponse{oaError{Message: msg, Type: "api_error"}})
}

// openAICompletion answers POST /v1/completions.
func (x *exchange) openAICompletion() {
	var req struct {
		Model         string           `json:"model"`
		Prompt        string           `json:"prompt"`
		Stream        bool             `json:"stream"`
		StreamOptions *oaStreamOptions `json:"stream_options"`
		MaxTokens     *int             `json:"max_tokens"`
	}
	if !x.decode(&req) {
		return
	}
	if _, ok := x.inferModel(req.Model, "generate"); !ok {
		return
	}
	limit := 0
	if req.MaxTokens != nil {
		limit = *req.MaxTokens
	}
	g := x.newGen(req.Model, limit, wordCount(req.Prompt))
	g.words(req.Prompt)
	if !x.prepare(g, req.Stream) {
		return
	}
	id, created := x.s.nextID("cmpl-"), time.Now().Unix()
	resp := func(choices []oaTextChoice, u *oaUsage) oaResponse {
		return oaResponse{ID: id, Object: "text_completion", Created: created, Model: req.Model, SystemFingerprint: "fp_ollama", Choices: choices, Usage: u}
	}
	if !req.Stream {
		x.json(http.StatusOK, resp([]oaTextChoice{{Text: ReplyText(g.n), FinishReason: &g.reason}}, usage(g, g.n)))
		return
	}
	includeUsage := req.StreamOptions != nil && req.StreamOptions.IncludeUsage
	var zero *oaUsage
	if includeUsage { // Ollama puts a zero usage on every chunk then
		zero = &oaUsage{}
	}
	x.stream(&script{
		contentType: "text/event-stream",
		units:       g.n,
		unit: func(_ int, tok string) [][]byte {
			return [][]byte{sseData(resp([]oaTextChoice{{Text: tok}}, zero))}
		},
		tail: func(n int) [][]byte {
			out := [][]byte{sseData(resp([]oaTextChoice{{FinishReason: &g.reason}}, zero))}
			if includeUsage {
				out = append(out, sseData(resp([]oaTextChoice{}, usage(g, n))))
			}
			return append(out, []byte("data: [DONE]\n\n"))
		},
		fail: openAIStreamError,
	})
}

// openAIEmbeddings answers POST /v1/embeddings.
func (x *exchange) openAIEmbeddings() {
	var req struct {
		Model          string `json:"model"`
		Input          any    `json:"input"`
		EncodingFormat string `json:"encoding_format"`
	}
	if !x.decode(&req) {
		return
	}
	if f := req.EncodingFormat; f != "" && !strings.EqualFold(f, "float") && !strings.EqualFold(f, "base64") {
		x.fail(http.StatusBadRequest, fmt.Sprintf("Invalid value for 'encoding_format' = %s. Supported values: ['float', 'base64'].", f))
		return
	}
	if req.Input == "" {
		req.Input = []any{""}
	}
	if v, ok := req.Input.([]any); req.Input == nil || (ok && len(v) == 0) {
		x.fail(http.StatusBadRequest, "invalid input")
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
	g.embed = true
	if !x.prepare(g, true) || !x.pause(x.s.cfg.EmbedDelay) {
		return
	}
	type embedding struct {
		Object    string `json:"object"`
		Embedding any    `json:"embedding"`
		Index     int    `json:"index"`
	}
	data := make([]embedding, 0, len(inputs))
	for i, in := range inputs {
		var e any = Embedding(in)
		if strings.EqualFold(req.EncodingFormat, "base64") {
			var buf bytes.Buffer
			_ = binary.Write(&buf, binary.LittleEndian, Embedding(in))
			e = base64.StdEncoding.EncodeToString(buf.Bytes())
		}
		data = append(data, embedding{Object: "embedding", Embedding: e, Index: i})
	}
	x.json(http.StatusOK, map[string]any{
		"object": "list", "data": data, "model": req.Model,
		"usage": map[string]int{"prompt_tokens": g.promptToks, "total_tokens": g.promptToks},
	})
}

type oaModel struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	OwnedBy string `json:"owned_by"`
}

// ownedBy is a model name's namespace, as Ollama reports it.
func ownedBy(name string) string {
	parts := strings.Split(strings.SplitN(name, ":", 2)[0], "/")
	if len(parts) >= 2 {
		return parts[len(parts)-2]
	}
	return "library"
}

// openAIModels answers GET /v1/models.
func (x *exchange) openAIModels() {
	data := []oaModel{}
	for _, n := range x.s.Models() {
		data = append(data, oaModel{ID: n, Object: "model", Created: modifiedAt.Unix(), OwnedBy: ownedBy(n)})
	}
	x.json(http.StatusOK, map[string]any{"object": "list", "data": data})
}

// openAIModel answers GET /v1/models/:model.
func (x *exchange) openAIModel() {
	if _, ok := x.s.model(x.param); !ok {
		x.fail(http.StatusNotFound, fmt.Sprintf("model '%s' not found", x.param))
		return
	}
	x.json(http.StatusOK, oaModel{ID: x.param, Object: "model", Created: modifiedAt.Unix(), OwnedBy: ownedBy(x.param)})
}
