package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/tidwall/gjson"
	"github.com/valyala/fasthttp"

	"github.com/vega-gateway/vega-gateway/cache"
)

// embedRoutes are the embedding routes, cached per input string.
var embedRoutes = map[string]bool{"/api/embed": true, "/api/embeddings": true, "/v1/embeddings": true}

// embedRequest is an embedding request taken apart for the cache: its
// inputs, and the rest of the body (top-level fields, values as sent),
// which goes into every input's key.
type embedRequest struct {
	body   map[string]json.RawMessage
	model  string
	field  string // "input", or "prompt" on /api/embeddings
	inputs []string
}

// parseEmbed reads an embedding request the cache can serve: a model and
// a non-empty string or list of strings. Anything else goes upstream as
// is, for Ollama to answer (or refuse) as it does.
// The body is read in one pass with gjson (validated first): encoding/json
// scans a value twice and decoded a batch of 32 inputs in a sixth of a
// cached batch's time.
func parseEmbed(route string, body []byte) (embedRequest, bool) {
	// Invalid UTF-8 is read by encoding/json (so Ollama) as U+FFFD and by
	// gjson as is: such a body is proxied as sent.
	if !utf8.Valid(body) || !gjson.ValidBytes(body) {
		return embedRequest{}, false
	}
	root := gjson.ParseBytes(body)
	if !root.IsObject() {
		return embedRequest{}, false
	}
	r := embedRequest{body: map[string]json.RawMessage{}, field: "input"}
	if route == "/api/embeddings" {
		r.field = "prompt"
	}
	var in gjson.Result
	root.ForEach(func(k, v gjson.Result) bool {
		// A repeated key keeps its last value, as encoding/json (and so
		// Ollama) reads it.
		r.body[k.String()] = json.RawMessage(v.Raw)
		switch k.String() {
		case "model":
			r.model = ""
			if v.Type == gjson.String {
				r.model = v.Str
			}
		case r.field:
			in = v
		}
		return true
	})
	if r.model == "" {
		return r, false
	}
	for k := range r.body {
		if hasUpper(k) { // see plainKeys; options go into the key as sent
			return r, false
		}
	}
	switch {
	case in.Type == gjson.String && in.Str != "":
		r.inputs = []string{in.Str}
	case in.IsArray() && route != "/api/embeddings":
		ok := true
		in.ForEach(func(_, v gjson.Result) bool {
			ok = v.Type == gjson.String
			r.inputs = append(r.inputs, v.Str)
			return ok
		})
		if !ok || len(r.inputs) == 0 {
			return r, false
		}
	default:
		return r, false
	}
	return r, true
}

// canonicalRaw is canonical for a body decoded at the top level only:
// top-level keys sorted, values compacted as sent.
func canonicalRaw(m map[string]json.RawMessage) ([]byte, error) {
	for k, v := range m {
		if v := bytes.TrimSpace(v); k == "keep_alive" || bytes.Equal(v, []byte("null")) || (k == "options" && isEmptyObject(v)) {
			delete(m, k)
		}
	}
	return json.Marshal(m)
}

func isEmptyObject(v []byte) bool {
	return len(v) >= 2 && v[0] == '{' && len(bytes.TrimSpace(v[1:len(v)-1])) == 0 && v[len(v)-1] == '}'
}

// serveEmbed answers an embedding request through the cache: each input
// is looked up on its own, only the missing ones go upstream (in one
// request, in order), and the answer is the cached and the new vectors
// merged in the request's order, in the route's own response shape. The
// vectors' bytes are kept as the upstream encoded them. It returns false
// when the request is to be proxied as usual (bypassed or not cacheable),
// having answered nothing.
func (g *Gateway) serveEmbed(ctx *fasthttp.RequestCtx, x *exchange, keyInAuthorization bool) bool {
	if cacheAsk(&ctx.Request.Header) == "bypass" {
		g.bypassCache(ctx, x, 1)
		return false
	}
	r, ok := parseEmbed(x.route.name, ctx.Request.Body())
	if !ok {
		return false
	}
	digest, ok := g.fleet.Digest(r.model)
	if !ok {
		g.bypassCache(ctx, x, len(r.inputs))
		return false
	}
	keepAlive, hasKeepAlive := r.body["keep_alive"]
	delete(r.body, r.field)
	opts, err := canonicalRaw(r.body) // model, truncate, dimensions, options, encoding_format
	if err != nil {
		return false
	}
	prefix := cache.NewKey(g.cacheScope(x), []byte(x.route.name), []byte(digest), opts)
	keys := make([]cache.Key, len(r.inputs))
	var buf []byte
	for i, in := range r.inputs {
		keys[i], buf = prefix.Derive(buf, in)
	}
	vecs := g.cache.Get(context.Background(), keys)
	var missing []int
	for i, v := range vecs {
		if v == nil {
			missing = append(missing, i)
		}
	}
	var up embedAnswer
	if len(missing) > 0 {
		// Set now, so that an upstream failure or refusal carries the
		// header the access line reports.
		x.cacheState = cache.Miss.String()
		ctx.Response.Header.Set(HeaderCache, x.cacheState)
		if hasKeepAlive {
			r.body["keep_alive"] = keepAlive
		}
		var in any = r.inputs[0]
		if r.field != "prompt" {
			ins := make([]string, len(missing))
			for j, i := range missing {
				ins[j] = r.inputs[i]
			}
			in = ins
		}
		if r.body[r.field], err = json.Marshal(in); err != nil {
			return false
		}
		upBody, err := json.Marshal(r.body)
		if err != nil {
			return false
		}
		var done bool
		up, done = g.embedUpstream(ctx, x, upBody, keyInAuthorization, len(missing))
		// The inputs sent upstream missed whatever it answered; the cached
		// ones are hits only once they are served.
		g.cache.Note(x.route.name, x.model, cache.Miss, len(missing))
		if done {
			return true
		}
		newKeys := make([]cache.Key, len(missing))
		for j, i := range missing {
			vecs[i], newKeys[j] = up.vectors[j], keys[i]
		}
		g.cache.Set(context.Background(), newKeys, up.vectors)
	} else {
		x.cacheState = cache.Hit.String()
	}
	g.cache.Note(x.route.name, x.model, cache.Hit, len(r.inputs)-len(missing))
	x.promptTokens = up.promptTokens
	ctx.SetStatusCode(fasthttp.StatusOK)
	ctx.Response.Header.SetContentType(contentTypeJSON)
	ctx.Response.Header.Set(HeaderCache, x.cacheState)
	ctx.SetBody(embedBody(x.route.name, r.model, vecs, up))
	x.status = fasthttp.StatusOK
	return true
}

// embedAnswer is what the upstream said for the missing inputs.
type embedAnswer struct {
	vectors                     [][]byte
	totalDuration, loadDuration int64
	promptTokens                int64
}

// embedUpstream sends the missing inputs upstream and reads the vectors.
// done reports that the request was answered (an error, or the upstream's
// own refusal relayed) and the caller has nothing more to do.
func (g *Gateway) embedUpstream(ctx *fasthttp.RequestCtx, x *exchange, body []byte, keyInAuthorization bool, want int) (embedAnswer, bool) {
	var a embedAnswer
	t, e, ok := g.targetOf(ctx, x)
	if !ok {
		g.reject(ctx, x, e)
		return a, true
	}
	req := acquireOutbound()
	g.outboundRequest(ctx, x, req, keyInAuthorization)
	req.SetBodyRaw(body)
	resp := fasthttp.AcquireResponse()
	upStart := time.Now()
	release, err := g.send(x, t.target, req, resp)
	fasthttp.ReleaseRequest(req)
	x.ttfb = time.Since(upStart) - x.queueWait
	if err != nil {
		fasthttp.ReleaseResponse(resp)
		g.sendFailed(ctx, x, t.Model, err)
		return a, true
	}
	defer func() {
		_ = resp.CloseBodyStream()
		fasthttp.ReleaseResponse(resp)
		release()
	}()
	x.upstreamStatus = resp.StatusCode()
	limit := int64(x.upstream().MaxResponseBytes())
	var buf bytes.Buffer
	n, err := io.Copy(&buf, io.LimitReader(resp.BodyStream(), limit+1))
	if err == nil && n > limit {
		err = errors.New("embedding reply over upstream.max_response_bytes")
	}
	if err != nil {
		x.upstream().NoteError()
		g.upstreamFailed(ctx, x, classifyBody(err))
		return a, true
	}
	if resp.StatusCode() != fasthttp.StatusOK {
		// Ollama's refusal (unknown model, input too long) is the answer.
		ctx.SetStatusCode(resp.StatusCode())
		ctx.Response.Header.SetContentTypeBytes(resp.Header.ContentType())
		ctx.SetBody(buf.Bytes())
		x.status, x.outcome = resp.StatusCode(), outcomeUpstreamHTTPError
		return a, true
	}
	if !parseEmbedAnswer(x.route.name, buf.Bytes(), &a) || len(a.vectors) != want {
		x.upstream().NoteError()
		g.reject(ctx, x, apiError{502, "upstream_protocol_error", "the upstream sent a malformed reply", outcomeUpstreamProtocol, ""})
		return a, true
	}
	return a, false
}

// parseEmbedAnswer reads each route's reply (Ollama's api.EmbedResponse,
// its legacy {"embedding": [...]}, or openai.EmbeddingList), keeping each
// vector's bytes as sent.
func parseEmbedAnswer(route string, body []byte, a *embedAnswer) bool {
	switch route {
	case "/api/embed":
		var r struct {
			Embeddings      []json.RawMessage `json:"embeddings"`
			TotalDuration   int64             `json:"total_duration"`
			LoadDuration    int64             `json:"load_duration"`
			PromptEvalCount int64             `json:"prompt_eval_count"`
		}
		if json.Unmarshal(body, &r) != nil {
			return false
		}
		for _, v := range r.Embeddings {
			a.vectors = append(a.vectors, v)
		}
		a.totalDuration, a.loadDuration, a.promptTokens = r.TotalDuration, r.LoadDuration, r.PromptEvalCount
	case "/api/embeddings":
		var r struct {
			Embedding json.RawMessage `json:"embedding"`
		}
		if json.Unmarshal(body, &r) != nil || r.Embedding == nil {
			return false
		}
		a.vectors = [][]byte{r.Embedding}
	default: // /v1/embeddings
		var r struct {
			Data []struct {
				Embedding json.RawMessage `json:"embedding"`
				Index     int             `json:"index"`
			} `json:"data"`
			Usage struct {
				PromptTokens int64 `json:"prompt_tokens"`
			} `json:"usage"`
		}
		if json.Unmarshal(body, &r) != nil {
			return false
		}
		a.vectors = make([][]byte, len(r.Data))
		for _, d := range r.Data {
			// Each index once: a repeated one would leave another's
			// vector unset.
			if d.Index < 0 || d.Index >= len(r.Data) || a.vectors[d.Index] != nil {
				return false
			}
			a.vectors[d.Index] = d.Embedding
		}
		a.promptTokens = r.Usage.PromptTokens
	}
	// Every vector is a JSON array: it is written into the client's
	// answer and stored as it came.
	for _, v := range a.vectors {
		if len(v) == 0 || v[0] != '[' {
			return false
		}
	}
	return true
}

// embedBody writes the route's response as Ollama does: fields in its
// structs' order, durations and counts omitted when zero (omitempty) on
// /api/embed. The durations and token counts are the upstream call's, for
// the inputs it embedded; an answer wholly from the cache has none.
func embedBody(route, model string, vecs [][]byte, a embedAnswer) []byte {
	size := 128
	for _, v := range vecs {
		size += len(v) + 48
	}
	out := make([]byte, 0, size)
	name, _ := json.Marshal(model)
	switch route {
	case "/api/embed":
		out = append(out, `{"model":`...)
		out = append(out, name...)
		out = append(out, `,"embeddings":[`...)
		for i, v := range vecs {
			if i > 0 {
				out = append(out, ',')
			}
			out = append(out, v...)
		}
		out = append(out, ']')
		for _, f := range []struct {
			key string
			n   int64
		}{{"total_duration", a.totalDuration}, {"load_duration", a.loadDuration}, {"prompt_eval_count", a.promptTokens}} {
			if f.n != 0 {
				out = append(out, `,"`...)
				out = append(out, f.key...)
				out = append(out, `":`...)
				out = strconv.AppendInt(out, f.n, 10)
			}
		}
		return append(out, '}')
	case "/api/embeddings":
		out = append(out, `{"embedding":`...)
		out = append(out, vecs[0]...)
		return append(out, '}')
	}
	out = append(out, `{"object":"list","data":[`...)
	for i, v := range vecs {
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, `{"object":"embedding","embedding":`...)
		out = append(out, v...)
		out = append(out, `,"index":`...)
		out = strconv.AppendInt(out, int64(i), 10)
		out = append(out, '}')
	}
	out = append(out, `],"model":`...)
	out = append(out, name...)
	out = append(out, `,"usage":{"prompt_tokens":`...)
	out = strconv.AppendInt(out, a.promptTokens, 10)
	out = append(out, `,"total_tokens":`...)
	out = strconv.AppendInt(out, a.promptTokens, 10)
	return append(out, `}}`...)
}
