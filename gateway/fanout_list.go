package gateway

import (
	"cmp"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/vega-gateway/vega-gateway/fleet"
	"github.com/vega-gateway/vega-gateway/pool"
)

// serveList answers /api/tags, /api/ps or /v1/models with the union of
// the usable backends' lists (see serveFleetWide).
func (f *fanOut) serveList(ctx *fasthttp.RequestCtx, keyInAuthorization bool) {
	x := f.x
	for _, b := range f.g.fleet.Backends() {
		// The breaker is not visible outside fleet; a backend it took out
		// still answers a list, or is left out after the deadline.
		if b.Usable() {
			f.calls = append(f.calls, &backendCall{b: b})
		}
	}
	if len(f.calls) == 0 {
		e, _ := fleetError(fleet.ErrNoBackend, "")
		f.g.reject(ctx, x, e)
		return
	}
	f.op, f.deadline = "list", f.start.Add(listDeadline)
	f.buildRequests(ctx, keyInAuthorization)
	f.collect(false)
	if f.clientLeft.Load() {
		f.g.reject(ctx, x, errClientLeftFanOut)
		return
	}
	openAI := x.route.family == familyOpenAI
	var merged listMerge
	answered := 0
	for _, c := range f.calls {
		if c.err != nil || c.status != fasthttp.StatusOK {
			continue
		}
		if !f.head {
			if err := merged.add(c.body, openAI, x.route.name); err != nil {
				c.err = errMalformedList
				f.g.log.Warn().Str("correlation_id", x.id).Str("route", x.route.name).Str("backend", c.b.Name).
					Err(err).Msg("fleet-wide request failed on a backend")
				c.b.Pool.NoteError()
				continue
			}
		}
		answered++
	}
	if answered == 0 {
		if c := f.sameStatus(); c != nil {
			f.relayCall(ctx, c)
			return
		}
		f.fail(ctx, fasthttp.StatusBadGateway, nil, nil, f.calls)
		return
	}
	ctx.SetStatusCode(fasthttp.StatusOK)
	x.status, x.upstreamStatus = fasthttp.StatusOK, fasthttp.StatusOK
	if openAI {
		ctx.SetContentType("application/json")
	} else {
		ctx.SetContentType(contentTypeJSON)
	}
	if f.head {
		ctx.Response.SkipBody = true
		return
	}
	ctx.SetBody(merged.render(openAI))
}

// listMerge gathers the entries of several lists, each model once: the
// first seen wins, so backends are added in configuration order.
type listMerge struct {
	entries []listItem
	seen    map[string]bool
}

type listItem struct {
	raw  json.RawMessage
	sort int64 // Ollama's sort key, in seconds
}

// listBody is a list as Ollama sends it: "models" (native) or "data"
// (OpenAI), entries kept verbatim.
type listBody struct {
	Models []json.RawMessage `json:"models"`
	Data   []json.RawMessage `json:"data"`
}

// listKey is what an entry is deduplicated and sorted by.
type listKey struct {
	ID         string `json:"id"`
	Name       string `json:"name"`
	Model      string `json:"model"`
	ModifiedAt string `json:"modified_at"`
	ExpiresAt  string `json:"expires_at"`
	Created    int64  `json:"created"`
}

// errMalformedList: a backend's list did not parse; it is left out.
var errMalformedList = fmt.Errorf("malformed list: %w", pool.ErrProtocol)

func (m *listMerge) add(body []byte, openAI bool, route string) error {
	var lb listBody
	if err := json.Unmarshal(body, &lb); err != nil {
		return err
	}
	list := lb.Models
	if openAI {
		list = lb.Data
	}
	if m.seen == nil {
		m.seen = map[string]bool{}
	}
	for _, raw := range list {
		var k listKey
		if err := json.Unmarshal(raw, &k); err != nil {
			return err
		}
		name := fleet.NormalizeModel(cmp.Or(k.ID, k.Model, k.Name))
		if name != "" {
			if m.seen[name] {
				continue
			}
			m.seen[name] = true
		}
		it := listItem{raw: raw}
		switch route {
		case "/api/tags":
			it.sort = unixSeconds(k.ModifiedAt)
		case "/api/ps":
			it.sort = unixSeconds(k.ExpiresAt)
		default:
			it.sort = k.Created
		}
		m.entries = append(m.entries, it)
	}
	return nil
}

// unixSeconds reads an RFC 3339 time as Ollama compares them (whole
// seconds); 0 if absent or malformed.
func unixSeconds(s string) int64 {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return 0
	}
	return t.Unix()
}

// render writes the merged list in Ollama's format, sorted as Ollama sorts
// it: newest (or longest to live) first, ties in the order added.
func (m *listMerge) render(openAI bool) []byte {
	slices.SortStableFunc(m.entries, func(a, b listItem) int { return cmp.Compare(b.sort, a.sort) })
	raws := make([]json.RawMessage, len(m.entries))
	for i, it := range m.entries {
		raws[i] = it.raw
	}
	if openAI {
		if len(raws) == 0 {
			raws = nil // Ollama sends "data": null for an empty list
		}
		b, _ := json.Marshal(struct {
			Object string            `json:"object"`
			Data   []json.RawMessage `json:"data"`
		}{"list", raws})
		return append(b, '\n') // Ollama's encoder ends the body with one
	}
	b, _ := json.Marshal(struct {
		Models []json.RawMessage `json:"models"`
	}{raws})
	return b
}
