package fleet

import (
	"bytes"
	"encoding/json"
)

// BodyKind says where a request body keeps its conversation.
type BodyKind uint8

const (
	// NoConversation: embeddings and the like; no prompt cache to reuse.
	NoConversation BodyKind = iota
	// Messages: a "messages" list, with an optional top-level "system"
	// (Ollama /api/chat, OpenAI /v1/chat/completions, Anthropic /v1/messages).
	Messages
	// Prompt: a "prompt" with an optional "system" (/api/generate,
	// /v1/completions).
	Prompt
	// VegaChat: Vega's POST /chat ("system", "history", "prompt").
	VegaChat
)

// promptPrefixBytes is how much of a bare prompt identifies its
// conversation: a later turn repeats the earlier ones first.
const promptPrefixBytes = 2048

// conversationBody is the part of a request body the key is made from.
type conversationBody struct {
	Model    string          `json:"model"`
	System   json.RawMessage `json:"system"`
	Prompt   json.RawMessage `json:"prompt"`
	Messages []struct {
		Role    string          `json:"role"`
		Content json.RawMessage `json:"content"`
	} `json:"messages"`
	History []struct {
		Role    string          `json:"role"`
		Content json.RawMessage `json:"content"`
	} `json:"history"`
}

// Route reads what routing needs from a JSON request body: its top-level
// "model", and its conversation (ConversationKey). A body that does not
// parse gives "" and the zero Conversation.
func Route(kind BodyKind, body []byte) (model string, c Conversation) {
	var cb conversationBody
	if len(body) == 0 || json.Unmarshal(body, &cb) != nil {
		return "", Conversation{}
	}
	return cb.Model, cb.conversation(kind, cb.Model)
}

// Conversation is what routing knows of the conversation a request is part
// of.
type Conversation struct {
	// Key identifies it (0: none): the same for all its turns.
	Key uint64
	// Continues: the request carries earlier turns (an assistant message,
	// a /chat history), whose prefill a backend's prompt cache may hold.
	// A first turn has nothing cached to lose but the shared system prompt.
	Continues bool
}

// ConversationKey identifies the conversation a request continues, from
// what stays the same across its turns: the model, the system prompt and
// the first message after it (turn N+1 resends turns 1..N, so its leading
// messages are turn 1's). Two requests with the same key share a prompt
// prefix that a backend's prompt cache can reuse. It returns 0 when the
// body has no conversation or does not parse (the request is then routed
// on load alone). model overrides the body's own (Vega's /chat names its
// model apart).
func ConversationKey(kind BodyKind, model string, body []byte) Conversation {
	var cb conversationBody
	if len(body) == 0 || json.Unmarshal(body, &cb) != nil {
		return Conversation{}
	}
	return cb.conversation(kind, model)
}

func (cb *conversationBody) conversation(kind BodyKind, model string) Conversation {
	if kind == NoConversation {
		return Conversation{}
	}
	continues := false
	h := newHash()
	h.add([]byte(NormalizeModel(model)))
	h.add(trim(cb.System))
	first := []byte(nil)
	switch kind {
	case Messages:
		for _, m := range cb.Messages {
			if m.Role == "system" || m.Role == "developer" {
				h.add(trim(m.Content))
				continue
			}
			h.add([]byte(m.Role))
			first = trim(m.Content)
			break
		}
		for _, m := range cb.Messages {
			continues = continues || m.Role == "assistant"
		}
	case Prompt:
		first = trim(cb.Prompt)
		if len(first) > promptPrefixBytes {
			first = first[:promptPrefixBytes]
		}
	case VegaChat:
		if len(cb.History) > 0 {
			first = trim(cb.History[0].Content)
			continues = true
		} else {
			first = trim(cb.Prompt)
		}
	}
	if len(first) == 0 || string(first) == "null" {
		return Conversation{}
	}
	h.add(first)
	return Conversation{Key: max(h.sum, 1), Continues: continues}
}

func trim(b []byte) []byte { return bytes.TrimSpace(b) }

// fnv is FNV-1a 64 over length-prefixed parts (so "ab"+"c" and "a"+"bc"
// differ): stable across processes and versions, unlike maphash.
type fnv struct{ sum uint64 }

func newHash() fnv { return fnv{sum: 14695981039346656037} }

func (h *fnv) add(b []byte) {
	n := len(b)
	for range 4 {
		h.byte(byte(n))
		n >>= 8
	}
	for _, c := range b {
		h.byte(c)
	}
}

func (h *fnv) byte(c byte) {
	h.sum ^= uint64(c)
	h.sum *= 1099511628211
}
