package gateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"strconv"
	"time"

	"github.com/rs/zerolog"
	"github.com/valyala/fasthttp"

	"github.com/vega-gateway/vega-gateway/fleet"
	"github.com/vega-gateway/vega-gateway/trace"
)

// chatUpstreamPath is the Ollama route /chat becomes.
const chatUpstreamPath = "/api/chat"

// ollamaMessage is one message of an Ollama chat.
type ollamaMessage struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

// ollamaChatRequest is the body /chat sends to Ollama's /api/chat.
type ollamaChatRequest struct {
	Model    string          `json:"model"`
	Messages []ollamaMessage `json:"messages"`
	Stream   bool            `json:"stream"`
	Options  json.RawMessage `json:"options,omitempty"`
}

// ollamaChunk is an Ollama /api/chat chunk or reply; the final one carries
// done, done_reason and the metrics (durations in nanoseconds).
type ollamaChunk struct {
	Model              string        `json:"model"`
	Message            ollamaMessage `json:"message"`
	Done               bool          `json:"done"`
	DoneReason         string        `json:"done_reason"`
	TotalDuration      int64         `json:"total_duration"`
	LoadDuration       int64         `json:"load_duration"`
	PromptEvalCount    int64         `json:"prompt_eval_count"`
	PromptEvalDuration int64         `json:"prompt_eval_duration"`
	EvalCount          int64         `json:"eval_count"`
	EvalDuration       int64         `json:"eval_duration"`
	Error              string        `json:"error"`
}

// ChatUsage is the token count of a /chat reply.
type ChatUsage struct {
	PromptTokens     int64 `json:"prompt_tokens"`
	CompletionTokens int64 `json:"completion_tokens"`
}

// ChatTimings are Ollama's metrics of a /chat reply, in milliseconds.
type ChatTimings struct {
	TotalMS         float64 `json:"total_ms"`
	LoadMS          float64 `json:"load_ms"`
	PromptEvalMS    float64 `json:"prompt_eval_ms"`
	EvalMS          float64 `json:"eval_ms"`
	TokensPerSecond float64 `json:"tokens_per_second"`
}

// ChatResponse is the non-streaming /chat reply.
type ChatResponse struct {
	Response      string      `json:"response"`
	Model         string      `json:"model"`
	DoneReason    string      `json:"done_reason"`
	CorrelationID string      `json:"correlation_id"`
	Usage         ChatUsage   `json:"usage"`
	Timings       ChatTimings `json:"timings"`
}

// chatDelta is one streamed /chat line.
type chatDelta struct {
	Delta string `json:"delta"`
}

// chatDone is the last streamed /chat line.
type chatDone struct {
	Done          bool        `json:"done"`
	DoneReason    string      `json:"done_reason"`
	Usage         ChatUsage   `json:"usage"`
	Timings       ChatTimings `json:"timings"`
	CorrelationID string      `json:"correlation_id"`
}

func nsToMS(ns int64) float64 { return float64(ns) / 1e6 }

func (c *ollamaChunk) usage() ChatUsage {
	return ChatUsage{PromptTokens: c.PromptEvalCount, CompletionTokens: c.EvalCount}
}

func (c *ollamaChunk) timings() ChatTimings {
	t := ChatTimings{
		TotalMS: nsToMS(c.TotalDuration), LoadMS: nsToMS(c.LoadDuration),
		PromptEvalMS: nsToMS(c.PromptEvalDuration), EvalMS: nsToMS(c.EvalDuration),
	}
	if c.EvalDuration > 0 {
		t.TokensPerSecond = float64(c.EvalCount) / float64(c.EvalDuration) * 1e9
	}
	return t
}

// readFinalChunk records the final chunk's telemetry on the exchange. It
// scans for the handful of keys rather than decoding the body, which for a
// whole reply carries the full completion text. Inside a JSON string every
// quote is escaped, so completion text cannot hold `"done":true`: the first
// one is the key itself. From there one pass reads the keys that follow it
// (Ollama writes the metrics after "done"); done_reason, which /api/chat
// writes just before "done", is looked for in the few bytes before it.
func readFinalChunk(x *exchange, frame []byte) {
	if endsDoneFalse(frame) {
		return // every frame of a stream but the last: skip the search
	}
	d := indexDoneTrue(frame)
	if d < 0 {
		return
	}
	var c ollamaChunk
	scanFinalKeys(frame[d:], &c)
	if x.span != nil && x.span.IsRecording() {
		c.Model = modelOf(frame) // Ollama writes it first
	}
	if c.DoneReason == "" {
		c.DoneReason = jsonString(frame[max(0, d-finalChunkLookBack):d], `"done_reason":"`)
	}
	x.noteFinal(&c)
}

var doneFalseEnd = []byte(`"done":false}`)

// endsDoneFalse reports whether frame is an object whose last member is
// "done":false, as Ollama writes every chunk but the last: the closing
// brace at the very end is the top-level object's, so that "done" is the
// top-level one. Searching such a frame for "done":true cost ~900
// instructions per frame, a fifth of the gateway's work per frame (bench
// -instructions). Any other spelling gets the full search.
func endsDoneFalse(frame []byte) bool {
	end := len(frame)
	for end > 0 && (frame[end-1] == '\n' || frame[end-1] == '\r' || frame[end-1] == ' ' || frame[end-1] == '\t') {
		end-- // bytes.TrimRight builds its cutset's table on every call
	}
	return bytes.HasSuffix(frame[:end], doneFalseEnd)
}

// finalChunkLookBack is how far before "done":true done_reason may start:
// `"done_reason":"unload",` and a little room.
const finalChunkLookBack = 64

var colonTrue = []byte(`:true`)

// indexDoneTrue returns where the first `"done":true` starts, or -1. It
// searches for `:true` and looks behind: a JSON body is full of quotes, so
// a search led by one stops at every key and string.
func indexDoneTrue(b []byte) int {
	for off := 0; ; {
		i := bytes.Index(b[off:], colonTrue)
		if i < 0 {
			return -1
		}
		i += off
		if i >= 6 && string(b[i-6:i]) == `"done"` {
			return i - 6
		}
		off = i + 1
	}
}

// scanFinalKeys reads the final chunk's metrics from b, which starts at a
// key (outside any string). It walks the strings of b once, with their
// escapes, so a string value can never be taken for a key.
func scanFinalKeys(b []byte, c *ollamaChunk) {
	for i := 0; i < len(b); {
		q := bytes.IndexByte(b[i:], '"')
		if q < 0 {
			return
		}
		start := i + q + 1
		end := closingQuote(b, start)
		if end < 0 {
			return
		}
		i = end + 1
		if i >= len(b) || b[i] != ':' {
			continue // a string value
		}
		v := b[i+1:]
		switch string(b[start:end]) {
		case "done_reason":
			if len(v) > 0 && v[0] == '"' {
				if e := closingQuote(v, 1); e > 0 && e <= 65 && bytes.IndexByte(v[1:e], '\\') < 0 {
					c.DoneReason = doneReasonString(v[1:e])
				}
			}
		case "total_duration":
			c.TotalDuration = leadingInt(v)
		case "load_duration":
			c.LoadDuration = leadingInt(v)
		case "prompt_eval_count":
			c.PromptEvalCount = leadingInt(v)
		case "prompt_eval_duration":
			c.PromptEvalDuration = leadingInt(v)
		case "eval_count":
			c.EvalCount = leadingInt(v)
		case "eval_duration":
			c.EvalDuration = leadingInt(v)
		}
	}
}

// closingQuote returns the index of the quote that ends the JSON string
// whose contents start at b[start], or -1.
func closingQuote(b []byte, start int) int {
	for i := start; i < len(b); {
		q := bytes.IndexByte(b[i:], '"')
		if q < 0 {
			return -1
		}
		j := i + q
		k := j
		for k > start && b[k-1] == '\\' {
			k--
		}
		if (j-k)%2 == 0 {
			return j
		}
		i = j + 1
	}
	return -1
}

// leadingInt reads the non-negative integer b starts with (0 if none).
func leadingInt(b []byte) int64 {
	var n int64
	for _, c := range b {
		if c < '0' || c > '9' || n > (1<<62)/10 {
			break
		}
		n = n*10 + int64(c-'0')
	}
	return n
}

// jsonString finds `"key":"<value>"` in b; values with escapes are not
// expected here (done_reason is a short word) and are skipped.
func jsonString(b []byte, key string) string {
	i := bytes.Index(b, []byte(key))
	if i < 0 {
		return ""
	}
	rest := b[i+len(key):]
	end := bytes.IndexByte(rest, '"')
	if end < 0 || end > 64 || bytes.IndexByte(rest[:end], '\\') >= 0 {
		return ""
	}
	return doneReasonString(rest[:end])
}

// doneReasonString returns a constant for Ollama's known done reasons, so
// recording them does not allocate.
func doneReasonString(b []byte) string {
	switch string(b) {
	case "stop":
		return "stop"
	case "length":
		return "length"
	case "load":
		return "load"
	case "unload":
		return "unload"
	}
	return string(b)
}

func (x *exchange) noteFinal(c *ollamaChunk) {
	x.doneReason = c.DoneReason
	x.promptTokens, x.completionTokens = c.PromptEvalCount, c.EvalCount
	x.loadDuration, x.evalDuration = time.Duration(c.LoadDuration), time.Duration(c.EvalDuration)
	if c.Model != "" && x.model == "" {
		x.model = c.Model
	}
	if c.Model != "" {
		x.respModel = c.Model
	}
}

// openAIUsage is the part of an OpenAI completion (or usage chunk) the
// gateway reads for telemetry.
type openAIUsage struct {
	Model   string `json:"model"`
	Choices []struct {
		FinishReason *string `json:"finish_reason"`
	} `json:"choices"`
	Usage *struct {
		PromptTokens     int64 `json:"prompt_tokens"`
		CompletionTokens int64 `json:"completion_tokens"`
	} `json:"usage"`
}

// readOpenAIUsage records usage and finish_reason from an OpenAI body or
// SSE data payload.
func readOpenAIUsage(x *exchange, body []byte) {
	var u openAIUsage
	if json.Unmarshal(body, &u) != nil {
		return
	}
	if u.Model != "" {
		x.respModel = u.Model
	}
	if u.Usage != nil {
		x.promptTokens, x.completionTokens = u.Usage.PromptTokens, u.Usage.CompletionTokens
	}
	for _, c := range u.Choices {
		if c.FinishReason != nil && *c.FinishReason != "" {
			x.doneReason = *c.FinishReason
		}
	}
}

// serveChat handles POST /chat. It reports whether a stream owns the exchange.
func (g *Gateway) serveChat(ctx *fasthttp.RequestCtx, x *exchange) bool {
	if !ctx.IsPost() {
		g.reject(ctx, x, apiError{405, "method_not_allowed", "use POST", outcomeClientError, ""})
		ctx.Response.Header.Set("Allow", "POST")
		return false
	}
	if e, bad := checkChatMedia(&ctx.Request.Header); bad {
		g.reject(ctx, x, e)
		return false
	}
	body := ctx.Request.Body()
	if len(body) > g.chat.MaxBodyBytes {
		g.reject(ctx, x, apiError{413, "body_too_large", "request body too large", outcomeClientError, ""})
		return false
	}
	cr, e, ok := parseChatRequest(body, g.chat.MaxPromptBytes)
	if !ok {
		g.reject(ctx, x, e)
		return false
	}
	up := g.chatUpstreamBody(cr)
	x.model = up.Model
	x.traceChatOptions(up.Options)
	if g.allowed != nil && !g.allowed[normalizeModel(up.Model)] {
		g.reject(ctx, x, errModelNotAllowed)
		return false
	}
	upBody, err := json.Marshal(up)
	if err != nil {
		panic(err) // strings, a bool and validated raw JSON: cannot fail
	}

	// X-Vega-Backend is checked before the cache can answer.
	pinned, e, ok := g.pinnedBackend(ctx, x)
	if !ok {
		g.reject(ctx, x, e)
		return false
	}
	if g.cache != nil && g.lookupCompletion(ctx, x, upBody) {
		return false
	}
	t := target{Request: fleet.Request{Model: up.Model, NeedModel: true, Inference: true}, pinned: pinned}
	if !g.fleet.Single() {
		t.Conversation = fleet.ConversationKey(fleet.VegaChat, up.Model, body)
	}
	req := acquireOutbound()
	req.Header.SetMethod(fasthttp.MethodPost)
	req.SetRequestURI(chatUpstreamPath)
	req.Header.SetContentType("application/json")
	req.Header.Set(trace.HeaderCorrelationID, x.id)
	req.Header.SetBytesV(trace.HeaderTraceparent, x.traceparent)
	if cr.Stream {
		req.Header.Set("Accept", "application/x-ndjson")
	}
	req.SetBodyRaw(upBody)
	resp := fasthttp.AcquireResponse()
	if g.log.GetLevel() <= zerolog.DebugLevel {
		g.log.Debug().Str("correlation_id", x.id).Str("model", x.model).Msg("upstream call started")
	}
	upStart := time.Now()
	release, err := g.send(x, t, req, resp)
	fasthttp.ReleaseRequest(req)
	x.ttfb = time.Since(upStart) - x.queueWait
	if err != nil {
		fasthttp.ReleaseResponse(resp)
		g.sendFailed(ctx, x, up.Model, err)
		return false
	}
	x.upstreamStatus = resp.StatusCode()
	if resp.StatusCode() != fasthttp.StatusOK {
		g.chatUpstreamStatus(ctx, x, resp)
		fasthttp.ReleaseResponse(resp)
		release()
		return false
	}
	if cr.Stream && frameKindOf(resp.Header.ContentType()) == frameNDJSON {
		ctx.Response.Header.Set(trace.HeaderCorrelationID, x.id)
		ctx.SetContentType("application/x-ndjson")
		ctx.Response.Header.Set("Cache-Control", "no-cache")
		ctx.Response.Header.Set("X-Accel-Buffering", "no")
		x.status = fasthttp.StatusOK
		x.streamed = true
		ctx.Request.ResetBody() // forwarded already; see relay
		g.sendStream(ctx, g.newStream(ctx, x, resp, release, false, translateChat))
		return true
	}
	g.chatReply(ctx, x, resp)
	_ = resp.CloseBodyStream()
	fasthttp.ReleaseResponse(resp)
	release()
	return false
}

// chatReply reads a non-streamed Ollama reply and answers /chat with it.
func (g *Gateway) chatReply(ctx *fasthttp.RequestCtx, x *exchange, resp *fasthttp.Response) {
	var buf bytes.Buffer
	n, err := io.Copy(&buf, io.LimitReader(resp.BodyStream(), int64(x.upstream().MaxResponseBytes())+1))
	if err == nil && n > int64(x.upstream().MaxResponseBytes()) {
		err = errors.New("reply over upstream.max_response_bytes")
	}
	if err != nil {
		x.upstream().NoteError()
		g.upstreamFailed(ctx, x, classifyBody(err))
		return
	}
	var c ollamaChunk
	if err := json.Unmarshal(buf.Bytes(), &c); err != nil || !c.Done {
		x.upstream().NoteError()
		g.reject(ctx, x, apiError{502, "upstream_protocol_error", "the upstream sent a malformed reply", outcomeUpstreamProtocol, ""})
		return
	}
	x.noteFinal(&c)
	out, _ := json.Marshal(ChatResponse{
		Response: c.Message.Content, Model: c.Model, DoneReason: c.DoneReason, CorrelationID: x.id,
		Usage: c.usage(), Timings: c.timings(),
	})
	ctx.SetStatusCode(fasthttp.StatusOK)
	ctx.SetContentType(contentTypeJSON)
	ctx.SetBody(out)
	x.status = fasthttp.StatusOK
	if x.cacheStore && x.doneReason != "" {
		g.storeAnswer(x, false, []byte(contentTypeJSON), out)
	}
}

// chatUpstreamStatus maps an Ollama error status on /chat to the gateway's
// table, keeping Ollama's message.
func (g *Gateway) chatUpstreamStatus(ctx *fasthttp.RequestCtx, x *exchange, resp *fasthttp.Response) {
	var buf bytes.Buffer
	_, _ = io.Copy(&buf, io.LimitReader(resp.BodyStream(), 64<<10))
	_ = resp.CloseBodyStream()
	var oe struct {
		Error string `json:"error"`
	}
	_ = json.Unmarshal(buf.Bytes(), &oe)
	msg := oe.Error
	if msg == "" {
		msg = "the upstream answered " + fasthttp.StatusMessage(resp.StatusCode())
	}
	st := resp.StatusCode()
	var e apiError
	switch {
	case st == 503 || st == 429:
		e = apiError{503, "upstream_busy", msg, outcomeUpstreamHTTPError, retryAfterSeconds}
	case st >= 500:
		e = apiError{502, "upstream_error", msg, outcomeUpstreamHTTPError, ""}
	case st == 404:
		e = apiError{404, "model_not_found", msg, outcomeUpstreamHTTPError, ""}
	default:
		e = apiError{st, "upstream_rejected", msg, outcomeUpstreamHTTPError, ""}
	}
	x.upstream().NoteError()
	g.reject(ctx, x, e)
}

// translateChat turns an Ollama /api/chat chunk into a /chat line.
func translateChat(s *stream, frame []byte) ([]byte, bool, error) {
	var c ollamaChunk
	if err := json.Unmarshal(frame, &c); err != nil {
		return nil, false, errors.Join(errUpstreamProtocol, err)
	}
	if c.Error != "" {
		s.x.outcome = outcomeUpstreamStreamError
		b, _ := json.Marshal(nativeErrorBody{Error: c.Error, Code: "upstream_stream_error", CorrelationID: s.x.id})
		s.ended = true
		return append(b, '\n'), false, nil
	}
	if c.Done {
		s.x.noteFinal(&c)
		b, _ := json.Marshal(chatDone{Done: true, DoneReason: c.DoneReason, Usage: c.usage(), Timings: c.timings(), CorrelationID: s.x.id})
		return append(b, '\n'), true, nil
	}
	b, _ := json.Marshal(chatDelta{Delta: c.Message.Content})
	return append(b, '\n'), false, nil
}

// errUpstreamProtocol marks an upstream frame that is not what Ollama sends.
var errUpstreamProtocol = errors.New("gateway: malformed upstream frame")

// chatUpstreamBody builds the Ollama request: system, then history (the
// newest MaxHistoryMessages), then the prompt as the last user message.
func (g *Gateway) chatUpstreamBody(cr chatRequest) ollamaChatRequest {
	model := cr.Model
	if model == "" {
		model = g.cfg.DefaultModel
	}
	hist := cr.History
	if len(hist) > g.chat.MaxHistoryMessages {
		hist = hist[len(hist)-g.chat.MaxHistoryMessages:]
	}
	msgs := make([]ollamaMessage, 0, len(hist)+2)
	if cr.System != "" {
		msgs = append(msgs, ollamaMessage{Role: "system", Content: cr.System})
	}
	msgs = append(msgs, hist...)
	msgs = append(msgs, ollamaMessage{Role: "user", Content: cr.Prompt})
	return ollamaChatRequest{Model: model, Messages: msgs, Stream: cr.Stream, Options: capOptions(cr.Options, g.chat)}
}

// capOptions applies chat.max_tokens and chat.max_context to a /chat
// request's options: absent, unlimited (negative) or larger values become
// the cap. Other options pass unchanged.
func capOptions(raw json.RawMessage, cfg ChatConfig) json.RawMessage {
	if cfg.MaxTokens <= 0 && cfg.MaxContext <= 0 {
		return raw
	}
	opts := map[string]json.RawMessage{}
	if len(raw) > 0 {
		_ = json.Unmarshal(raw, &opts) // validated as an object by parseChatRequest
	}
	capKey := func(key string, limit int) {
		if limit <= 0 {
			return
		}
		var v float64
		if b, ok := opts[key]; ok && json.Unmarshal(b, &v) == nil && v >= 0 && v <= float64(limit) {
			return
		}
		opts[key] = json.RawMessage(strconv.Itoa(limit))
	}
	capKey("num_predict", cfg.MaxTokens)
	capKey("num_ctx", cfg.MaxContext)
	out, err := json.Marshal(opts)
	if err != nil {
		return raw
	}
	return out
}
