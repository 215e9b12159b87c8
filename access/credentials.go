package access

import (
	"bytes"
	"time"

	"github.com/valyala/fasthttp"
)

// Header names of the credentials the gateway accepts.
const (
	HeaderAPIKey        = "X-API-Key"
	HeaderAuthorization = "Authorization"
)

var bearerPrefix = []byte("bearer ")

// credential is what a request presents, as credentials finds it.
type credential struct {
	// key is an API key, from X-API-Key or Authorization: Bearer.
	key []byte
	// signed is an Ollama signed credential, from Authorization.
	signed []byte
	// inAuthorization: key came in Authorization (so it is stripped
	// before forwarding).
	inAuthorization bool
	// ambiguous: two different credentials, or a repeated header; never
	// "first one wins".
	ambiguous bool
}

// credentials finds the credential in X-API-Key and Authorization (Bearer,
// or an Ollama signed credential), reading each header once.
func credentials(h *fasthttp.RequestHeader) credential {
	// PeekAll returns a slice fasthttp reuses on the next PeekAll: keep the
	// value (which points into the header buffer), not the slice.
	apiKeys := h.PeekAll(HeaderAPIKey)
	if len(apiKeys) > 1 {
		return credential{ambiguous: true}
	}
	var apiKey []byte
	if len(apiKeys) == 1 {
		apiKey = apiKeys[0]
	}
	var bearer []byte
	authz := h.PeekAll(HeaderAuthorization)
	if len(authz) > 1 {
		return credential{ambiguous: true}
	}
	if len(authz) == 1 {
		v := authz[0]
		if len(v) >= len(bearerPrefix) && bytes.EqualFold(v[:len(bearerPrefix)], bearerPrefix) {
			bearer = bytes.TrimLeft(v[len(bearerPrefix):], " ")
		} else if signed, ok := looksSigned(v); ok {
			if apiKey != nil {
				return credential{ambiguous: true}
			}
			return credential{signed: signed}
		}
	}
	switch {
	case apiKey != nil && bearer != nil:
		if !bytes.Equal(apiKey, bearer) {
			return credential{ambiguous: true}
		}
		return credential{key: bearer, inAuthorization: true}
	case apiKey != nil:
		return credential{key: apiKey}
	case bearer != nil:
		return credential{key: bearer, inAuthorization: true}
	}
	return credential{}
}

// Status is the outcome of checking a request's credentials.
type Status uint8

// The outcomes of Check. Only OK and Open let a request through.
const (
	OK        Status = iota // a configured key matched
	Open                    // no keys configured: the gateway is open
	Missing                 // no credential presented
	Invalid                 // a credential presented that matches no key
	Ambiguous               // two different credentials, or a repeated header

	// The refusals of an Ollama signed request (ollama.go).
	SignedMalformed    // Authorization or ts not in the client's form
	SignedUnknownKey   // a public key not in auth.ollama_keys
	SignedBadSignature // the signature does not cover this method, path and ts
	SignedStale        // ts older than auth.ollama_max_skew
	SignedFuture       // ts further ahead than auth.ollama_max_skew
)

// String is the status as the access log's reason for a refusal.
func (s Status) String() string {
	switch s {
	case OK:
		return "ok"
	case Open:
		return "open"
	case Missing:
		return "missing credential"
	case Invalid:
		return "unknown key"
	case Ambiguous:
		return "ambiguous credentials"
	case SignedMalformed:
		return "malformed signed request"
	case SignedUnknownKey:
		return "unknown ollama key"
	case SignedBadSignature:
		return "bad signature"
	case SignedStale:
		return "stale ts"
	case SignedFuture:
		return "future ts"
	}
	return "unknown"
}

// Result is Check's answer: the outcome, and what of the request carried
// the credential, which the gateway must not forward upstream.
type Result struct {
	Status Status
	// InAuthorization: the Authorization header held the gateway's
	// credential (X-API-Key is never forwarded anyway).
	InAuthorization bool
	// SignedTS: the query's ts parameter was part of an Ollama signed
	// credential, not something for Ollama.
	SignedTS bool
	// KeyName is the key the request was made with, when known: the
	// accepted key, or the Ollama key whose signature failed or was out of
	// time (for the log: whose client is misconfigured).
	KeyName string
}

// Accepted reports whether the request may go on: a key matched, or the
// gateway is open.
func (r Result) Accepted() bool { return r.Status == OK || r.Status == Open }

// check authenticates a request against this keyring at now; the Identity
// is nil unless Status is OK.
func (k *Keyring) check(h *fasthttp.RequestHeader, now time.Time) (Result, *Identity) {
	if k.Open() {
		return Result{Status: Open}, nil
	}
	c := credentials(h)
	switch {
	case c.ambiguous:
		return Result{Status: Ambiguous}, nil
	case c.signed != nil:
		return k.checkSigned(h, c.signed, now)
	case len(c.key) == 0:
		return Result{Status: Missing}, nil
	}
	if id := k.find(c.key); id != nil {
		return Result{Status: OK, InAuthorization: c.inAuthorization, KeyName: id.Name}, id
	}
	return Result{Status: Invalid}, nil
}

// Allowed reports whether the request carries a valid key (or the keyring
// is open). It is what the admin listener uses to guard its routes.
func (k *Keyring) Allowed(ctx *fasthttp.RequestCtx) bool {
	r, _ := k.check(&ctx.Request.Header, time.Now())
	return r.Accepted()
}
