package ollamatest

import (
	"encoding/json"
	"net/http"
	"strings"
)

// Anthropic-compatible wire types, as Ollama's anthropic package writes them.
type (
	anContent struct {
		Type string  `json:"type"`
		Text *string `json:"text,omitempty"`
	}
	anUsage struct {
		InputTokens  int `json:"input_tokens"`
		OutputTokens int `json:"output_tokens"`
	}
	anMessage struct {
		ID         string      `json:"id"`
		Type       string      `json:"type"`
		Role       string      `json:"role"`
		Model      string      `json:"model"`
		Content    []anContent `json:"content"`
		StopReason string      `json:"stop_reason,omitempty"`
		Usage      anUsage     `json:"usage"`
	}
	anErrorBody struct {
		Type    string `json:"type"`
		Message string `json:"message"`
	}
	anError struct {
		Type      string      `json:"type"`
		Error     anErrorBody `json:"error"`
		RequestID string      `json:"request_id,omitempty"`
	}
	anDelta struct {
		Type       string `json:"type,omitempty"`
		Text       string `json:"text,omitempty"`
		StopReason string `json:"stop_reason,omitempty"`
	}
	// anEvent is any streamed event; unused fields are left out.
	anEvent struct {
		Type         string       `json:"type"`
		Message      *anMessage   `json:"message,omitempty"`
		Index        *int         `json:"index,omitempty"`
		ContentBlock *anContent   `json:"content_block,omitempty"`
		Delta        *anDelta     `json:"delta,omitempty"`
		Usage        *anUsage     `json:"usage,omitempty"`
		Error        *anErrorBody `json:"error,omitempty"`
	}
)

// anthropicError is Anthropic's error object for an HTTP status.
func anthropicError(status int, msg, requestID string) anError {
	typ := "api_error"
	switch status {
	case http.StatusBadRequest:
		typ = "invalid_request_error"
	case http.StatusUnauthorized:
		typ = "authentication_error"
	case http.StatusForbidden:
		typ = "permission_error"
	case http.StatusNotFound:
		typ = "not_found_error"
	case http.StatusTooManyRequests:
		typ = "rate_limit_error"
	case http.StatusServiceUnavailable, 529:
		typ = "overloaded_error"
	}
	return anError{Type: "error", Error: anErrorBody{Type: typ, Message: msg}, RequestID: requestID}
}

// anthropicText flattens a content (string or blocks) for counting.
func anthropicText(raw json.RawMessage) string {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	var blocks []struct {
		Type string `json:"type"`
		Text string `json:"text"`
	}
	_ = json.Unmarshal(raw, &blocks)
	var b strings.Builder
	for _, bl := range blocks {
		b.WriteString(bl.Text + " ")
	}
	return b.String()
}

// stopReason maps Ollama's done_reason to Anthropic's stop_reason.
func stopReason(doneReason string) string {
	if doneReason == "length" {
		return "max_tokens"
	}
	return "end_turn"
}

// anthropicMessages answers POST /v1/messages.
func (x *exchange) anthropicMessages() {
	var req struct {
		Model     string `json:"model"`
		MaxTokens int    `json:"max_tokens"`
		Messages  []struct {
			Role    string          `json:"role"`
			Content json.RawMessage `json:"content"`
		} `json:"messages"`
		System json.RawMessage `json:"system"`
		Stream bool            `json:"stream"`
	}
	if !x.decode(&req) {
		return
	}
	switch {
	case req.Model == "":
		x.fail(http.StatusBadRequest, "model is required")
		return
	case req.MaxTokens <= 0:
		x.fail(http.StatusBadRequest, "max_tokens is required and must be positive")
		return
	case len(req.Messages) == 0:
		x.fail(http.StatusBadRequest, "messages is required")
		return
	}
	if _, ok := x.inferModel(req.Model, "chat"); !ok {
		return
	}
	// Ollama estimates input tokens at 4 bytes each for message_start.
	words, chars := 0, 0
	if len(req.System) > 0 {
		t := anthropicText(req.System)
		words, chars = wordCount(t), len(t)
	}
	for _, m := range req.Messages {
		t := anthropicText(m.Content)
		words += wordCount(t)
		chars += len(m.Role) + len(t)
	}
	estimate := max(chars/4, 1)
	g := x.newGen(req.Model, req.MaxTokens, words)
	if len(req.System) > 0 {
		g.turn("system", anthropicText(req.System))
	}
	for _, m := range req.Messages {
		g.turn(m.Role, anthropicText(m.Content))
	}
	if !x.prepare(g, req.Stream) {
		return
	}
	id := x.s.nextID("msg_")
	if !req.Stream {
		text := ReplyText(g.n)
		x.json(http.StatusOK, anMessage{ID: id, Type: "message", Role: "assistant", Model: req.Model,
			Content: []anContent{{Type: "text", Text: &text}}, StopReason: stopReason(g.reason),
			Usage: anUsage{InputTokens: g.promptToks, OutputTokens: g.n}})
		return
	}
	zero, empty := 0, ""
	x.w.Header().Set("Cache-Control", "no-cache")
	x.stream(&script{
		contentType: "text/event-stream",
		head: [][]byte{sseEvent("message_start", anEvent{Type: "message_start", Message: &anMessage{
			ID: id, Type: "message", Role: "assistant", Model: req.Model, Content: []anContent{}, Usage: anUsage{InputTokens: estimate}}})},
		units: g.n,
		unit: func(i int, tok string) [][]byte {
			delta := sseEvent("content_block_delta", anEvent{Type: "content_block_delta", Index: &zero,
				Delta: &anDelta{Type: "text_delta", Text: tok}})
			if i > 0 {
				return [][]byte{delta}
			}
			return [][]byte{sseEvent("content_block_start", anEvent{Type: "content_block_start", Index: &zero,
				ContentBlock: &anContent{Type: "text", Text: &empty}}), delta}
		},
		tail: func(n int) [][]byte {
			var out [][]byte
			if n > 0 {
				out = append(out, sseEvent("content_block_stop", anEvent{Type: "content_block_stop", Index: &zero}))
			}
			return append(out,
				sseEvent("message_delta", anEvent{Type: "message_delta", Delta: &anDelta{StopReason: stopReason(g.reason)},
					Usage: &anUsage{InputTokens: g.promptToks, OutputTokens: n}}),
				sseEvent("message_stop", anEvent{Type: "message_stop"}))
		},
		fail: func(msg string) []byte {
			return sseEvent("error", anEvent{Type: "error", Error: &anErrorBody{Type: "api_error", Message: msg}})
		},
	})
}
