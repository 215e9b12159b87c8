package gateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"unicode/utf8"

	"github.com/valyala/fasthttp"
)

// chatRequest is a validated POST /chat body.
type chatRequest struct {
	Prompt  string
	Model   string
	System  string
	History []ollamaMessage
	Stream  bool
	Options json.RawMessage
}

func badJSON(msg string) apiError {
	return apiError{400, "invalid_json", msg, outcomeClientError, ""}
}

func badField(msg string) apiError {
	return apiError{400, "invalid_field", msg, outcomeClientError, ""}
}

func badPrompt(msg string) apiError {
	return apiError{400, "invalid_prompt", msg, outcomeClientError, ""}
}

// checkChatMedia accepts any Content-Type whose body is JSON (curl -d sends
// a form type), but refuses multipart, compressed bodies and non-UTF-8
// charsets, which the gateway will not decode.
func checkChatMedia(h *fasthttp.RequestHeader) (apiError, bool) {
	unsupported := apiError{415, "unsupported_media_type", "send the body as uncompressed JSON", outcomeClientError, ""}
	if len(h.ContentEncoding()) > 0 && !bytes.EqualFold(h.ContentEncoding(), []byte("identity")) {
		return unsupported, true
	}
	ct := strings.ToLower(string(h.ContentType()))
	if strings.HasPrefix(ct, "multipart/") {
		return unsupported, true
	}
	if i := strings.Index(ct, "charset="); i >= 0 {
		cs := strings.Trim(strings.TrimSpace(strings.SplitN(ct[i+len("charset="):], ";", 2)[0]), `"`)
		if cs != "utf-8" && cs != "utf8" && cs != "us-ascii" {
			return unsupported, true
		}
	}
	return apiError{}, false
}

// parseChatRequest decodes a /chat body strictly: one JSON object, known
// keys only, each at most once and spelled exactly (encoding/json would
// take the last duplicate and match keys case-insensitively), with the
// right types, valid UTF-8 and a non-blank prompt within maxPrompt bytes.
func parseChatRequest(body []byte, maxPrompt int) (chatRequest, apiError, bool) {
	var cr chatRequest
	if !utf8.Valid(body) {
		return cr, badPrompt("the body is not valid UTF-8"), false
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil {
		return cr, badJSON("the body is not valid JSON"), false
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return cr, badJSON("the body must be a JSON object"), false
	}
	seen := map[string]bool{}
	for dec.More() {
		kt, err := dec.Token()
		if err != nil {
			return cr, badJSON("the body is not valid JSON"), false
		}
		key, _ := kt.(string)
		if seen[key] {
			return cr, badField("duplicate field " + quoteField(key)), false
		}
		seen[key] = true
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return cr, badJSON("the body is not valid JSON"), false
		}
		if e, ok := cr.setField(key, raw); !ok {
			return cr, e, false
		}
	}
	if _, err := dec.Token(); err != nil { // the closing brace
		return cr, badJSON("the body is not valid JSON"), false
	}
	if _, err := dec.Token(); err != io.EOF {
		return cr, badJSON("unexpected data after the JSON object"), false
	}
	if !seen["prompt"] {
		return cr, badPrompt("prompt is required"), false
	}
	if strings.TrimSpace(cr.Prompt) == "" {
		return cr, badPrompt("prompt must not be empty"), false
	}
	if len(cr.Prompt) > maxPrompt {
		return cr, apiError{400, "prompt_too_long", "prompt is too long", outcomeClientError, ""}, false
	}
	return cr, apiError{}, true
}

// quoteField renders a client-supplied field name safely for a message.
func quoteField(k string) string {
	if len(k) > 64 {
		k = k[:64]
	}
	b, _ := json.Marshal(k)
	return string(b)
}

var errNotString = errors.New("not a string")

func rawString(raw json.RawMessage) (string, error) {
	if len(raw) == 0 || raw[0] != '"' {
		return "", errNotString
	}
	var s string
	err := json.Unmarshal(raw, &s)
	return s, err
}

func (cr *chatRequest) setField(key string, raw json.RawMessage) (apiError, bool) {
	var err error
	switch key {
	case "prompt":
		if cr.Prompt, err = rawString(raw); err != nil {
			return badField("prompt must be a string"), false
		}
	case "model":
		if cr.Model, err = rawString(raw); err != nil || strings.TrimSpace(cr.Model) == "" {
			return badField("model must be a non-empty string"), false
		}
	case "system":
		if cr.System, err = rawString(raw); err != nil {
			return badField("system must be a string"), false
		}
	case "stream":
		switch string(raw) {
		case "true":
			cr.Stream = true
		case "false":
			cr.Stream = false
		default:
			return badField("stream must be a boolean"), false
		}
	case "options":
		if raw[0] != '{' {
			return badField("options must be an object"), false
		}
		cr.Options = raw
	case "history":
		if raw[0] != '[' {
			return badField("history must be an array of {role, content}"), false
		}
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.DisallowUnknownFields()
		var hist []struct {
			Role    *string `json:"role"`
			Content *string `json:"content"`
		}
		if err := dec.Decode(&hist); err != nil {
			return badField("history must be an array of {role, content}"), false
		}
		cr.History = make([]ollamaMessage, 0, len(hist))
		for _, m := range hist {
			if m.Role == nil || m.Content == nil {
				return badField("each history entry needs role and content"), false
			}
			switch *m.Role {
			case "user", "assistant", "system", "tool":
			default:
				return badField("history role must be user, assistant, system or tool"), false
			}
			cr.History = append(cr.History, ollamaMessage{Role: *m.Role, Content: *m.Content})
		}
	default:
		return badField("unknown field " + quoteField(key)), false
	}
	return apiError{}, true
}
