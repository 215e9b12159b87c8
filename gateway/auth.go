package gateway

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"

	"github.com/valyala/fasthttp"
)

// Header names of the credentials the gateway accepts.
const (
	HeaderAPIKey        = "X-API-Key"
	HeaderAuthorization = "Authorization"
)

// authResult is the outcome of checking a request's credentials.
type authResult uint8

const (
	authOK        authResult = iota // a configured key matched
	authOpen                        // no keys configured: the gateway is open
	authMissing                     // no credential presented
	authInvalid                     // a credential presented that matches no key
	authAmbiguous                   // two different credentials, or a repeated header
)

// Keyring holds SHA-256 digests of the accepted keys, never the keys, so a
// heap dump or a debug print shows no secret.
type Keyring struct {
	digests [][sha256.Size]byte
}

// NewKeyring builds a keyring. An empty list gives an open keyring that
// accepts everything. Empty keys are refused: they would authenticate an
// empty header.
func NewKeyring(keys []string) (*Keyring, error) {
	k := &Keyring{}
	for i, key := range keys {
		if key == "" {
			return nil, fmt.Errorf("key #%d is empty", i+1)
		}
		k.digests = append(k.digests, sha256.Sum256([]byte(key)))
	}
	return k, nil
}

// Open reports whether no keys are configured.
func (k *Keyring) Open() bool { return len(k.digests) == 0 }

// match compares the presented key's digest with every configured digest
// in constant time, without an early exit, so timing does not reveal which
// key or how much of one matched.
func (k *Keyring) match(presented []byte) bool {
	d := sha256.Sum256(presented)
	found := 0
	for i := range k.digests {
		found |= subtle.ConstantTimeCompare(d[:], k.digests[i][:])
	}
	return found == 1
}

var bearerPrefix = []byte("bearer ")

// credentials extracts the presented key from X-API-Key or Authorization:
// Bearer. fromAuthorization says the key came in Authorization (so it is
// stripped before forwarding).
func credentials(h *fasthttp.RequestHeader) (key []byte, fromAuthorization bool, ambiguous bool) {
	apiKeys := h.PeekAll(HeaderAPIKey)
	if len(apiKeys) > 1 {
		return nil, false, true
	}
	var bearer []byte
	authz := h.PeekAll(HeaderAuthorization)
	if len(authz) > 1 {
		return nil, false, true
	}
	if len(authz) == 1 {
		v := authz[0]
		if len(v) >= len(bearerPrefix) && bytes.EqualFold(v[:len(bearerPrefix)], bearerPrefix) {
			bearer = bytes.TrimLeft(v[len(bearerPrefix):], " ")
		}
	}
	switch {
	case len(apiKeys) == 1 && bearer != nil:
		if !bytes.Equal(apiKeys[0], bearer) {
			return nil, false, true
		}
		return bearer, true, false
	case len(apiKeys) == 1:
		return apiKeys[0], false, false
	case bearer != nil:
		return bearer, true, false
	}
	return nil, false, false
}

// check authenticates a request.
func (k *Keyring) check(h *fasthttp.RequestHeader) (authResult, bool) {
	if k.Open() {
		return authOpen, false
	}
	key, fromAuthz, ambiguous := credentials(h)
	switch {
	case ambiguous:
		return authAmbiguous, false
	case len(key) == 0:
		return authMissing, false
	case k.match(key):
		return authOK, fromAuthz
	}
	return authInvalid, false
}

// ErrUnauthorized is returned by Allowed's callers' checks when a request
// carries no valid key. Send the correct key as X-API-Key or
// Authorization: Bearer.
var ErrUnauthorized = errors.New("gateway: missing or invalid API key")

// Allowed reports whether the request carries a valid key (or the keyring
// is open). It is what the admin listener uses to guard its routes.
func (k *Keyring) Allowed(ctx *fasthttp.RequestCtx) bool {
	r, _ := k.check(&ctx.Request.Header)
	return r == authOK || r == authOpen
}
