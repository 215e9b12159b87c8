package gateway

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/vega-gateway/vega-gateway/access"
)

// Body policy: the checks a pass-through request body must pass before it
// goes upstream — the model allowlist (B-64), the resource caps (B-65) and
// the registry allowlist of model management (B-63). All of them read one
// decode of the body, and only when one of them is configured for the
// route: with none, the body is never parsed.

// bodyFields is the part of Ollama's request types the checks read. It is
// decoded with encoding/json, as Ollama decodes the body (gin's
// ShouldBindJSON into api.ChatRequest and friends), so the gateway sees
// what Ollama will see: the last of duplicate keys wins, keys match
// case-insensitively, and two "options" objects merge into one map, as
// they do into Ollama's map[string]any (B-06).
type bodyFields struct {
	Model string `json:"model"`
	Name  string `json:"name"`
	// KeepAlive is nil when absent or null: Ollama's default applies.
	KeepAlive *keepAlive `json:"keep_alive"`
	// Options keys are matched exactly: Ollama's Options.FromMap looks them
	// up case-sensitively and ignores any other spelling.
	Options map[string]json.RawMessage `json:"options"`
	// MaxTokens (OpenAI, Anthropic) and MaxOutputTokens (OpenAI
	// responses) become options.num_predict in Ollama's compatibility
	// layers.
	MaxTokens       *float64 `json:"max_tokens"`
	MaxOutputTokens *float64 `json:"max_output_tokens"`
	// Insecure (pull, push) makes Ollama use plain HTTP to the registry.
	Insecure bool `json:"insecure"`
	// From (create) is a model to copy, pulled first if not local;
	// RemoteHost (create) makes the new model a proxy to another server.
	From       string `json:"from"`
	RemoteHost string `json:"remote_host"`
}

// keepAlive is Ollama's api.Duration as it reads keep_alive: a number of
// seconds or a Go duration string, negative meaning forever. Unlike
// Ollama's, its UnmarshalJSON never fails (a failure would stop the decode
// and hide later fields): a value Ollama cannot read is marked bad.
type keepAlive struct {
	d   time.Duration
	bad bool
}

func (k *keepAlive) UnmarshalJSON(b []byte) error {
	*k = keepAlive{}
	var v any
	if json.Unmarshal(b, &v) != nil {
		k.bad = true
		return nil
	}
	switch t := v.(type) {
	case float64:
		switch {
		case t < 0:
			k.d = math.MaxInt64
		case t >= float64(math.MaxInt64)/float64(time.Second):
			k.d = math.MaxInt64 // Ollama's conversion would overflow
		default:
			k.d = time.Duration(t * float64(time.Second))
		}
	case string:
		d, err := time.ParseDuration(t)
		switch {
		case err != nil:
			k.bad = true
		case d < 0:
			k.d = math.MaxInt64
		default:
			k.d = d
		}
	default:
		k.bad = true
	}
	return nil
}

// Errors of the body policy. Over a cap the request is refused, never
// rewritten: the client learns the limit and can retry within it, where a
// silent rewrite would change what it asked for (a model unloaded sooner,
// a reply cut short), and re-encoding a body cannot keep the client's key
// order and duplicates byte for byte. /chat rewrites (chat.max_tokens)
// because it builds its upstream body anyway.
var (
	errRegistryScheme    = apiError{403, "registry_not_allowed", "model names with a URL scheme are not allowed: name the registry host without one", outcomeClientError, ""}
	errRegistryForbidden = apiError{403, "registry_not_allowed", "this model's registry is not allowed on this gateway (gateway.pull_registries)", outcomeClientError, ""}
	errInsecureForbidden = apiError{403, "insecure_not_allowed", "insecure (plain HTTP) registry transfers are not allowed on this gateway (gateway.pull_allow_insecure)", outcomeClientError, ""}
)

func overLimit(field, limit string) apiError {
	return apiError{400, "option_over_limit", field + " is over this gateway's limit of " + limit, outcomeClientError, ""}
}

// checkBody applies the body policy to a POST of a pass-through route. It
// decodes the body only when a check applies to the route.
func (g *Gateway) checkBody(ctx *fasthttp.RequestCtx, x *exchange) (apiError, bool) {
	if !ctx.IsPost() {
		return apiError{}, true
	}
	c := &g.cfg
	inference := x.route.scope() == access.Inference
	switch {
	case inference:
		if g.allowed == nil && c.MaxKeepAlive <= 0 && c.MaxNumCtx <= 0 && c.MaxNumPredict <= 0 {
			return apiError{}, true // the hot path: nothing to check, nothing parsed
		}
	case x.route.name == "/api/pull", x.route.name == "/api/push", x.route.name == "/api/create":
	default:
		return apiError{}, true
	}
	var b bodyFields
	if err := json.Unmarshal(ctx.Request.Body(), &b); err != nil {
		// Ollama refuses most such bodies itself, but reads one it
		// would accept differently (it ignores data after the first
		// JSON value): refused here, it cannot pass unchecked.
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			return badJSON("field " + te.Field + " has the wrong type"), false
		}
		return badJSON("the request body is not a JSON object"), false
	}
	if inference {
		if g.allowed != nil && !g.allowed[normalizeModel(cmp.Or(b.Model, b.Name))] {
			return errModelNotAllowed, false
		}
		return g.checkCaps(&b)
	}
	return g.checkRegistry(x.route.name, &b)
}

// checkCaps applies gateway.max_keep_alive, max_num_ctx and
// max_num_predict wherever the fields appear in an inference body.
func (g *Gateway) checkCaps(b *bodyFields) (apiError, bool) {
	c := &g.cfg
	if c.MaxKeepAlive > 0 && b.KeepAlive != nil {
		if b.KeepAlive.bad {
			return badField("keep_alive must be a number of seconds or a duration such as \"5m\""), false
		}
		if b.KeepAlive.d > c.MaxKeepAlive {
			return overLimit("keep_alive", c.MaxKeepAlive.String()+" (negative means forever)"), false
		}
	}
	if c.MaxNumCtx > 0 {
		if e, ok := checkOption(b.Options, "num_ctx", c.MaxNumCtx, false); !ok {
			return e, false
		}
	}
	if c.MaxNumPredict > 0 {
		if e, ok := checkOption(b.Options, "num_predict", c.MaxNumPredict, true); !ok {
			return e, false
		}
		for _, f := range []struct {
			name string
			v    *float64
		}{{"max_tokens", b.MaxTokens}, {"max_output_tokens", b.MaxOutputTokens}} {
			if f.v != nil && overCap(*f.v, c.MaxNumPredict, true) {
				return overLimit(f.name, strconv.Itoa(c.MaxNumPredict)), false
			}
		}
	}
	return apiError{}, true
}

// checkOption checks options[key] against limit. Ollama reads an integer
// option from a JSON number (truncated) and skips null; any other type is
// refused here, as Ollama refuses it.
func checkOption(opts map[string]json.RawMessage, key string, limit int, negativeIsUnbounded bool) (apiError, bool) {
	raw, ok := opts[key]
	if !ok {
		return apiError{}, true
	}
	var v any
	_ = json.Unmarshal(raw, &v) // raw is valid JSON: it was decoded once already
	switch n := v.(type) {
	case nil:
		return apiError{}, true
	case float64:
		if overCap(n, limit, negativeIsUnbounded) {
			return overLimit("options."+key, strconv.Itoa(limit)), false
		}
		return apiError{}, true
	}
	return badField("options." + key + " must be a number"), false
}

// overCap compares a JSON number with a cap the way Ollama will use it:
// truncated to an integer; for num_predict a negative value means no
// limit (-1) or "fill the context" (-2).
func overCap(v float64, limit int, negativeIsUnbounded bool) bool {
	v = math.Trunc(v)
	return v > float64(limit) || negativeIsUnbounded && v < 0
}

// checkRegistry applies gateway.pull_registries and pull_allow_insecure to
// pull, push and create.
func (g *Gateway) checkRegistry(route string, b *bodyFields) (apiError, bool) {
	if route == "/api/create" {
		if b.From != "" {
			if e, ok := g.registryAllowed(b.From); !ok {
				return e, false
			}
		}
		if b.RemoteHost != "" && !g.hostAllowed(remoteHostOf(b.RemoteHost)) {
			return errRegistryForbidden, false
		}
		return apiError{}, true
	}
	// Ollama takes model, else the deprecated name (cmp.Or).
	if e, ok := g.registryAllowed(cmp.Or(b.Model, b.Name)); !ok {
		return e, false
	}
	if b.Insecure && !g.cfg.PullAllowInsecure {
		// Ollama then downgrades https to http for the whole transfer, so
		// anyone on the path can serve the manifest and its blobs.
		return errInsecureForbidden, false
	}
	return apiError{}, true
}

// registryAllowed checks the registry host of a model name.
func (g *Gateway) registryAllowed(name string) (apiError, bool) {
	host, scheme := registryOf(name)
	if scheme {
		return errRegistryScheme, false
	}
	if !g.hostAllowed(host) {
		return errRegistryForbidden, false
	}
	return apiError{}, true
}

func (g *Gateway) hostAllowed(host string) bool {
	for _, h := range g.cfg.PullRegistries {
		if h == "*" || strings.EqualFold(h, host) {
			return true
		}
	}
	return false
}

// registryOf splits a model name as Ollama's model.ParseName does,
// [scheme://][host/]namespace/model[:tag]: the host is everything before
// the last two path segments, and a name with fewer segments (or an empty
// host) is on the default registry. Backslashes count as slashes, as they
// do for Ollama on Windows. scheme reports a "://" anywhere in the name.
func registryOf(name string) (host string, scheme bool) {
	if strings.Contains(name, "://") {
		return "", true
	}
	s := strings.ReplaceAll(name, `\`, "/")
	i := strings.LastIndexByte(s, '/')
	if i < 0 {
		return DefaultPullRegistry, false
	}
	j := strings.LastIndexByte(s[:i], '/')
	if j <= 0 {
		return DefaultPullRegistry, false
	}
	return s[:j], false
}

// remoteHostOf is the host[:port] of create's remote_host as Ollama reads
// it: an optional scheme, then the host up to the first slash; a bare path
// is Ollama's own localhost.
func remoteHostOf(raw string) string {
	if strings.HasPrefix(raw, "/") {
		return "localhost"
	}
	if _, rest, ok := strings.Cut(raw, "://"); ok {
		raw = rest
	}
	host, _, _ := strings.Cut(raw, "/")
	return host
}

// validatePolicy checks the body policy's keys.
func (c Config) validatePolicy() error {
	for name, n := range map[string]int{"max_num_ctx": c.MaxNumCtx, "max_num_predict": c.MaxNumPredict, "max_in_flight": c.MaxInFlight} {
		if n < 0 {
			return fmt.Errorf("gateway.%s: must not be negative, got %d", name, n)
		}
	}
	if c.MaxKeepAlive < 0 {
		return fmt.Errorf("gateway.max_keep_alive: must not be negative, got %s", c.MaxKeepAlive)
	}
	for i, h := range c.PullRegistries {
		if h == "" || strings.ContainsAny(h, "/\\ ") {
			return fmt.Errorf("gateway.pull_registries: entry #%d %q is not a host, host:port or \"*\"", i+1, h)
		}
	}
	return nil
}
