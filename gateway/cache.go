package gateway

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"io"
	"strings"

	"github.com/valyala/fasthttp"

	"github.com/vega-gateway/vega-gateway/cache"
)

// HeaderCache is the request header that steers the response cache ("use":
// cache this request even though its options do not make it
// deterministic; "bypass": neither look up nor store) and the response
// header that says what the cache did (hit, miss, bypass).
const HeaderCache = "X-Vega-Cache"

// SetCache makes the gateway answer cacheable requests from c (embeddings,
// deterministic completions). Call it before Serve; nil leaves the cache
// off.
func (g *Gateway) SetCache(c *cache.Cache) { g.cache = c }

// completionRoutes are the routes whose answers are cached when the
// request is deterministic by its own options; native says where those
// options are (options.temperature and options.seed, or top level).
var completionRoutes = map[string]struct{ native bool }{
	"/api/chat": {true}, "/api/generate": {true}, "/chat": {true},
	"/v1/chat/completions": {false}, "/v1/completions": {false},
}

// cacheAsk reads X-Vega-Cache: "use", "bypass" or "".
func cacheAsk(h *fasthttp.RequestHeader) string {
	v := h.Peek(HeaderCache)
	switch {
	case len(v) == 0:
		return ""
	case bytes.EqualFold(v, []byte("bypass")):
		return "bypass"
	case bytes.EqualFold(v, []byte("use")):
		return "use"
	}
	return ""
}

// decodeBody decodes a JSON object keeping numbers as written, so that
// re-encoding it (json.Marshal sorts object keys) gives a canonical form
// in which 0.7 stays 0.7 and a large seed keeps every digit.
func decodeBody(body []byte) (map[string]any, bool) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var m map[string]any
	if dec.Decode(&m) != nil || m == nil || dec.More() {
		return nil, false
	}
	return m, true
}

// plainKeys reports whether every object key in body, at any depth, is
// written once and in lower-case ASCII. The key is built from the body
// decoded into a map, but the bytes that go upstream are the body as sent,
// and Ollama reads them differently: a repeated key keeps its last value
// in the map, while Ollama reads a later null on a string, bool or number
// field as "no change" (so `"system":"x","system":null` keeps "x", yet
// decodes as no system at all); and Ollama matches keys case-insensitively
// with Unicode folding (ſ is s, the Kelvin sign is k), the later spelling
// winning. Such a body could share a key with a plain request yet mean
// another, so it is not cached. Ollama's own fields are all lower-case
// ASCII. One token pass, without decoding values into a tree.
func plainKeys(body []byte) bool {
	type frame struct {
		object, wantKey bool
		seen            map[string]struct{}
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var stack []frame
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			return len(stack) == 0
		}
		if err != nil {
			return false
		}
		var top *frame
		if len(stack) > 0 {
			top = &stack[len(stack)-1]
		}
		if top != nil && top.object && top.wantKey {
			if d, ok := tok.(json.Delim); ok && d == '}' {
				stack = stack[:len(stack)-1]
				continue
			}
			k, ok := tok.(string)
			if !ok || !lowerASCII(k) {
				return false
			}
			if _, dup := top.seen[k]; dup {
				return false
			}
			if top.seen == nil {
				top.seen = make(map[string]struct{}, 8)
			}
			top.seen[k] = struct{}{}
			top.wantKey = false
			continue
		}
		if top != nil && top.object {
			top.wantKey = true // this token is the key's value (or opens it)
		}
		if d, ok := tok.(json.Delim); ok {
			switch d {
			case '{':
				stack = append(stack, frame{object: true, wantKey: true})
			case '[':
				stack = append(stack, frame{})
			case ']':
				stack = stack[:len(stack)-1]
			}
		}
	}
}

// lowerASCII: no byte outside ASCII, no upper-case letter.
func lowerASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 || 'A' <= s[i] && s[i] <= 'Z' {
			return false
		}
	}
	return true
}

func hasUpper(s string) bool {
	for i := 0; i < len(s); i++ {
		if 'A' <= s[i] && s[i] <= 'Z' {
			return true
		}
	}
	return false
}

// canonical encodes a request body for its key: keys sorted (json.Marshal
// sorts map keys), numbers as written, without keep_alive (how long the
// model stays loaded changes no answer) and without top-level nulls or an
// empty options object, which Ollama reads as absent (its Go client sends
// "options": null).
func canonical(m map[string]any) ([]byte, error) {
	for k, v := range m {
		if o, ok := v.(map[string]any); v == nil || (k == "options" && ok && len(o) == 0) || k == "keep_alive" {
			delete(m, k)
		}
	}
	return json.Marshal(m)
}

// deterministic: temperature 0 and a seed set, in the options object
// (native) or at the top level (OpenAI).
func deterministic(m map[string]any, native bool) bool {
	src := m
	if native {
		o, ok := m["options"].(map[string]any)
		if !ok {
			return false
		}
		src = o
	}
	t, ok := src["temperature"].(json.Number)
	if !ok {
		return false
	}
	if f, err := t.Float64(); err != nil || f != 0 {
		return false
	}
	_, seeded := src["seed"].(json.Number)
	return seeded
}

// cacheScope is the first part of every key: the key name under
// cache.scope key, nothing under global.
func (g *Gateway) cacheScope(x *exchange) []byte {
	if g.cache.Global() {
		return []byte("global")
	}
	return []byte("key:" + x.keyName)
}

// bypassCache marks x as not cached.
func (g *Gateway) bypassCache(ctx *fasthttp.RequestCtx, x *exchange, n int) {
	x.cacheState = cache.Bypass.String()
	g.cache.Note(x.route.name, x.model, cache.Bypass, n)
	ctx.Response.Header.Set(HeaderCache, x.cacheState)
}

// lookupCompletion decides whether a completion request is cached and
// looks it up. body is the request as it goes upstream (for /chat, the
// Ollama request built from it). On a hit it answers the request and
// returns true; on a miss x carries the key, and the answer is stored as
// it passes (storeReply, stream recording).
func (g *Gateway) lookupCompletion(ctx *fasthttp.RequestCtx, x *exchange, body []byte) bool {
	ask := cacheAsk(&ctx.Request.Header)
	if ask == "bypass" {
		g.bypassCache(ctx, x, 1)
		return false
	}
	m, ok := decodeBody(body)
	// plainKeys last: a sampled request (most traffic) skips its pass.
	if !ok || (ask != "use" && !deterministic(m, completionRoutes[x.route.name].native)) || !plainKeys(body) {
		g.bypassCache(ctx, x, 1)
		return false
	}
	model, _ := m["model"].(string)
	digest, ok := g.fleet.Digest(model)
	if !ok {
		g.bypassCache(ctx, x, 1)
		return false
	}
	canon, err := canonical(m)
	if err != nil {
		g.bypassCache(ctx, x, 1)
		return false
	}
	key := cache.NewKey(g.cacheScope(x), []byte(x.route.name), []byte(digest), canon)
	if v := g.cache.Get(context.Background(), []cache.Key{key})[0]; v != nil {
		if e, ok := decodeEntry(v); ok {
			g.replay(ctx, x, e)
			return true
		}
	}
	x.cacheState = cache.Miss.String()
	x.cacheKey, x.cacheStore = key, true
	g.cache.Note(x.route.name, x.model, cache.Miss, 1)
	ctx.Response.Header.Set(HeaderCache, x.cacheState)
	return false
}

// cachedAnswer is a stored completion: the response's content type and
// body, whether it was a stream (NDJSON lines or SSE events, recorded as
// they were sent), and the correlation ID the body carries (/chat puts it
// in its final line; a replay carries its own).
type cachedAnswer struct {
	streamed    bool
	contentType []byte
	id          []byte
	body        []byte
}

// encodeEntry lays an answer out as: flags, content type and ID (each
// length-prefixed), body.
func encodeEntry(e cachedAnswer) []byte {
	out := make([]byte, 0, 1+2+len(e.contentType)+2+len(e.id)+len(e.body))
	var flags byte
	if e.streamed {
		flags = 1
	}
	out = append(out, flags)
	out = binary.BigEndian.AppendUint16(out, uint16(len(e.contentType)))
	out = append(out, e.contentType...)
	out = binary.BigEndian.AppendUint16(out, uint16(len(e.id)))
	out = append(out, e.id...)
	return append(out, e.body...)
}

func decodeEntry(b []byte) (cachedAnswer, bool) {
	var e cachedAnswer
	if len(b) < 3 {
		return e, false
	}
	e.streamed = b[0]&1 != 0
	n := int(binary.BigEndian.Uint16(b[1:]))
	b = b[3:]
	if len(b) < n+2 {
		return e, false
	}
	e.contentType, b = b[:n], b[n:]
	n = int(binary.BigEndian.Uint16(b))
	b = b[2:]
	if len(b) < n {
		return e, false
	}
	e.id, e.body = b[:n], b[n:]
	return e, true
}

// storeAnswer keeps a complete, successful answer under x's key.
func (g *Gateway) storeAnswer(x *exchange, streamed bool, contentType, body []byte) {
	if !x.cacheStore || len(contentType) > 0xffff {
		return
	}
	x.cacheStore = false
	var id []byte
	if x.route.family == familyChat {
		id = []byte(x.id)
	}
	v := encodeEntry(cachedAnswer{streamed: streamed, contentType: contentType, id: id, body: body})
	g.cache.Set(context.Background(), []cache.Key{x.cacheKey}, [][]byte{v})
}

// replay answers a request from a stored answer: the same body (the same
// frames, for a stream), with this request's correlation ID where /chat
// carries one.
func (g *Gateway) replay(ctx *fasthttp.RequestCtx, x *exchange, e cachedAnswer) {
	x.cacheState = cache.Hit.String()
	g.cache.Note(x.route.name, x.model, cache.Hit, 1)
	body := e.body
	if len(e.id) > 0 {
		body = bytes.ReplaceAll(body, append(append([]byte(`"correlation_id":"`), e.id...), '"'),
			append(append([]byte(`"correlation_id":"`), x.id...), '"'))
	}
	ctx.SetStatusCode(fasthttp.StatusOK)
	ctx.Response.Header.SetContentTypeBytes(e.contentType)
	ctx.Response.Header.Set(HeaderCache, x.cacheState)
	if e.streamed {
		ctx.Response.Header.Set("Cache-Control", "no-cache")
	}
	ctx.SetBody(body)
	x.status = fasthttp.StatusOK
	replayTelemetry(x, e.streamed, body)
}

// replayTelemetry notes the token counts and done reason a replayed
// answer carries, as the original's were.
func replayTelemetry(x *exchange, streamed bool, body []byte) {
	if !streamed {
		if x.route.family != familyChat {
			noteReplyTelemetry(x, body)
		}
		return
	}
	for len(body) > 0 {
		i := bytes.IndexByte(body, '\n')
		if i < 0 {
			i = len(body) - 1
		}
		line := body[:i+1]
		body = body[i+1:]
		if strings.HasPrefix(x.route.name, "/v1/") {
			if bytes.Contains(line, usageKey) || bytes.Contains(line, finishReasonKey) {
				if j := bytes.Index(line, dataPrefix); j >= 0 {
					readOpenAIUsage(x, bytes.TrimSpace(line[j+len(dataPrefix):]))
				}
			}
		} else if x.route.family != familyChat {
			readFinalChunk(x, line)
		}
	}
}

// recordable: a frame that may go into a stored stream (not an error).
func recordable(frame []byte) bool {
	return !bytes.Contains(frame, []byte(`{"error"`))
}
