package gateway

import (
	"bytes"

	"github.com/vega-gateway/vega-gateway/access"
)

// family is a route's client family: it decides the error body shape and
// the stream framing.
type family uint8

const (
	familyNative    family = iota // "/", /api/*, unknown paths: Ollama's {"error": "..."}
	familyOpenAI                  // /v1/*: OpenAI's error object
	familyAnthropic               // /v1/messages: Anthropic's error object
	familyChat                    // Vega's POST /chat
	familyProbe                   // GET /healthz on the data listener
)

// route is what the gateway knows about a path before forwarding it.
type route struct {
	// name is the path template, used in logs and metric labels so their
	// cardinality stays bounded.
	name   string
	family family
	// manage marks model-management routes (pull, push, create, copy,
	// delete, blobs).
	manage bool
	// read marks read-only model routes (tags, show, ps, version).
	read bool
}

// scope is the key scope the route needs.
func (r route) scope() access.Scopes {
	switch {
	case r.manage:
		return access.ModelsManage
	case r.read:
		return access.ModelsRead
	}
	return access.Inference
}

var (
	routeUnknown = route{name: "unknown", family: familyNative}
	routeChat    = route{name: "/chat", family: familyChat}
	routeHealthz = route{name: "/healthz", family: familyProbe}
	// routeAdminOnly: admin paths exist only on the admin listener; the
	// data listener answers 404 itself rather than forward them.
	routeAdminOnly = route{name: "admin_only", family: familyNative}
)

// exactRoutes are the known fixed paths.
var exactRoutes = map[string]route{
	"/":                    {name: "/", family: familyNative, read: true},
	"/api/version":         {name: "/api/version", family: familyNative, read: true},
	"/api/chat":            {name: "/api/chat", family: familyNative},
	"/api/generate":        {name: "/api/generate", family: familyNative},
	"/api/embed":           {name: "/api/embed", family: familyNative},
	"/api/embeddings":      {name: "/api/embeddings", family: familyNative},
	"/api/tags":            {name: "/api/tags", family: familyNative, read: true},
	"/api/show":            {name: "/api/show", family: familyNative, read: true},
	"/api/ps":              {name: "/api/ps", family: familyNative, read: true},
	"/api/pull":            {name: "/api/pull", family: familyNative, manage: true},
	"/api/push":            {name: "/api/push", family: familyNative, manage: true},
	"/api/create":          {name: "/api/create", family: familyNative, manage: true},
	"/api/copy":            {name: "/api/copy", family: familyNative, manage: true},
	"/api/delete":          {name: "/api/delete", family: familyNative, manage: true},
	"/v1/chat/completions": {name: "/v1/chat/completions", family: familyOpenAI},
	"/v1/completions":      {name: "/v1/completions", family: familyOpenAI},
	"/v1/embeddings":       {name: "/v1/embeddings", family: familyOpenAI},
	"/v1/responses":        {name: "/v1/responses", family: familyOpenAI},
	"/v1/models":           {name: "/v1/models", family: familyOpenAI, read: true},
	"/v1/messages":         {name: "/v1/messages", family: familyAnthropic},
	"/chat":                routeChat,
	"/healthz":             routeHealthz,
	"/readyz":              routeAdminOnly,
	"/metrics":             routeAdminOnly,
}

var (
	prefixBlobs    = []byte("/api/blobs/")
	prefixV1Models = []byte("/v1/models/")
	prefixV1       = []byte("/v1/")
	prefixAdmin    = []byte("/admin")
)

// classify maps a normalised path (fasthttp's ctx.Path) to its route. It is
// a pure function of the path: authorisation decided on it cannot be
// bypassed by encodings that fasthttp normalises away.
func classify(path []byte) route {
	if r, ok := exactRoutes[string(path)]; ok { // no allocation: map lookup by string(bytes)
		return r
	}
	switch {
	case bytes.HasPrefix(path, prefixAdmin):
		return routeAdminOnly
	case bytes.HasPrefix(path, prefixBlobs):
		return route{name: "/api/blobs/:digest", family: familyNative, manage: true}
	case bytes.HasPrefix(path, prefixV1Models):
		return route{name: "/v1/models/:model", family: familyOpenAI, read: true}
	case bytes.HasPrefix(path, prefixV1):
		return route{name: "unknown", family: familyOpenAI}
	}
	return routeUnknown
}
