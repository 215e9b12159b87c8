package gateway

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
)

// Header names of the credentials the gateway accepts.
const (
	HeaderAPIKey        = "X-API-Key"
	HeaderAuthorization = "Authorization"
)

// Scopes a key can hold.
const (
	// ScopeInference: chat, generate, embed, /v1 inference, /v1/messages, /chat.
	ScopeInference = "inference"
	// ScopeModelsRead: tags, show, ps, version, /v1/models.
	ScopeModelsRead = "models:read"
	// ScopeModelsManage: pull, push, create, copy, delete, blobs.
	ScopeModelsManage = "models:manage"
)

type scopeSet uint8

const (
	scopeInference scopeSet = 1 << iota
	scopeModelsRead
	scopeModelsManage
)

func parseScopes(names []string) (scopeSet, error) {
	var s scopeSet
	for _, n := range names {
		switch strings.TrimSpace(n) {
		case ScopeInference:
			s |= scopeInference
		case ScopeModelsRead:
			s |= scopeModelsRead
		case ScopeModelsManage:
			s |= scopeModelsManage
		default:
			return 0, fmt.Errorf("unknown scope %q (want %s, %s or %s)", n, ScopeInference, ScopeModelsRead, ScopeModelsManage)
		}
	}
	return s, nil
}

// KeyConfig is one scoped key (config key auth.keys, auth.keys_file, or
// JSON in VEGA_AUTH_KEYS).
type KeyConfig struct {
	// Name identifies the key in logs and metrics; the key itself never
	// appears there.
	Name string `mapstructure:"name" json:"name" yaml:"name"`
	// Key is the secret itself; or give SHA256 instead.
	Key string `mapstructure:"key" json:"key" yaml:"key"`
	// SHA256 is the hex SHA-256 of the key, so config files need not hold it.
	SHA256 string `mapstructure:"sha256" json:"sha256" yaml:"sha256"`
	// Scopes the key holds: inference, models:read, models:manage.
	// Default inference and models:read.
	Scopes []string `mapstructure:"scopes" json:"scopes" yaml:"scopes"`
	// MaxConcurrent caps this key's requests in flight (429 above it);
	// 0 means no cap.
	MaxConcurrent int `mapstructure:"max_concurrent" json:"max_concurrent" yaml:"max_concurrent"`
	// RequestsPerMinute caps this key's request rate (429 above it); 0
	// means no cap.
	RequestsPerMinute int `mapstructure:"requests_per_minute" json:"requests_per_minute" yaml:"requests_per_minute"`
}

// apiKey is a configured key with its live counters.
type apiKey struct {
	name          string
	digest        [sha256.Size]byte
	scopes        scopeSet
	maxConcurrent int64
	perMinute     int64
	inFlight      atomic.Int64
	window        atomic.Int64 // unix minute of the current rate window
	windowCount   atomic.Int64
}

// admit takes a concurrency slot and a rate token; release gives the slot
// back. ok is false with the reason's apiError when the key is over a cap.
func (k *apiKey) admit(now time.Time) (apiError, bool) {
	if k.perMinute > 0 {
		minute := now.Unix() / 60
		if w := k.window.Load(); w != minute && k.window.CompareAndSwap(w, minute) {
			k.windowCount.Store(0)
		}
		if k.windowCount.Add(1) > k.perMinute {
			return apiError{429, "rate_limited", "this key's request rate limit is reached", outcomeClientError, fmt.Sprint(60 - now.Unix()%60)}, false
		}
	}
	if k.maxConcurrent > 0 {
		if k.inFlight.Add(1) > k.maxConcurrent {
			k.inFlight.Add(-1)
			return apiError{429, "key_concurrency_limit", "this key has too many requests in flight", outcomeClientError, retryAfterSeconds}, false
		}
	}
	return apiError{}, true
}

func (k *apiKey) release() {
	if k.maxConcurrent > 0 {
		k.inFlight.Add(-1)
	}
}

// Keyring holds the accepted keys as SHA-256 digests, never the keys, so a
// heap dump or a debug print shows no secret.
type Keyring struct {
	keys []*apiKey
}

// NewKeyring builds a keyring from plain keys (auth.api_keys: scopes
// inference and models:read, named by their digest's first 8 hex digits)
// and scoped keys. No keys at all gives an open keyring.
func NewKeyring(plain []string, scoped []KeyConfig) (*Keyring, error) {
	k := &Keyring{}
	names := map[string]bool{}
	digests := map[[sha256.Size]byte]bool{}
	add := func(ak *apiKey) error {
		if names[ak.name] {
			return fmt.Errorf("duplicate key name %q", ak.name)
		}
		if digests[ak.digest] {
			return fmt.Errorf("key %q repeats an earlier key", ak.name)
		}
		names[ak.name], digests[ak.digest] = true, true
		k.keys = append(k.keys, ak)
		return nil
	}
	for i, key := range plain {
		if key == "" {
			return nil, fmt.Errorf("key #%d is empty", i+1)
		}
		d := sha256.Sum256([]byte(key))
		if err := add(&apiKey{name: "key-" + hex.EncodeToString(d[:4]), digest: d, scopes: scopeInference | scopeModelsRead}); err != nil {
			return nil, err
		}
	}
	for i, kc := range scoped {
		ak := &apiKey{name: kc.Name, maxConcurrent: int64(kc.MaxConcurrent), perMinute: int64(kc.RequestsPerMinute)}
		if ak.name == "" {
			return nil, fmt.Errorf("keys[%d]: name is required", i)
		}
		switch {
		case kc.Key != "" && kc.SHA256 != "":
			return nil, fmt.Errorf("keys[%d] (%s): give key or sha256, not both", i, kc.Name)
		case kc.Key != "":
			ak.digest = sha256.Sum256([]byte(kc.Key))
		case kc.SHA256 != "":
			b, err := hex.DecodeString(strings.TrimSpace(kc.SHA256))
			if err != nil || len(b) != sha256.Size {
				return nil, fmt.Errorf("keys[%d] (%s): sha256 must be 64 hex digits", i, kc.Name)
			}
			copy(ak.digest[:], b)
		default:
			return nil, fmt.Errorf("keys[%d] (%s): key or sha256 is required", i, kc.Name)
		}
		if kc.MaxConcurrent < 0 || kc.RequestsPerMinute < 0 {
			return nil, fmt.Errorf("keys[%d] (%s): limits must not be negative", i, kc.Name)
		}
		scopes := kc.Scopes
		if len(scopes) == 0 {
			scopes = []string{ScopeInference, ScopeModelsRead}
		}
		var err error
		if ak.scopes, err = parseScopes(scopes); err != nil {
			return nil, fmt.Errorf("keys[%d] (%s): %w", i, kc.Name, err)
		}
		if err := add(ak); err != nil {
			return nil, fmt.Errorf("keys[%d]: %w", i, err)
		}
	}
	return k, nil
}

// Open reports whether no keys are configured.
func (k *Keyring) Open() bool { return len(k.keys) == 0 }

// Len is the number of configured keys.
func (k *Keyring) Len() int { return len(k.keys) }

// find compares the presented key's digest with every configured digest
// in constant time, without an early exit, so timing does not reveal which
// key or how much of one matched.
func (k *Keyring) find(presented []byte) *apiKey {
	d := sha256.Sum256(presented)
	var found *apiKey
	for _, ak := range k.keys {
		if digestsEqual(d[:], ak.digest[:]) == 1 {
			found = ak
		}
	}
	return found
}

// digestsEqual is the comparison find makes for every key, a variable only
// so a test can count the calls (B-35: no early exit, whatever matches).
var digestsEqual = subtle.ConstantTimeCompare

var bearerPrefix = []byte("bearer ")

// credentials extracts the presented key from X-API-Key or Authorization:
// Bearer. fromAuthorization says the key came in Authorization (so it is
// stripped before forwarding). Two different credentials, or a repeated
// header, are ambiguous: never "first one wins".
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

// authResult is the outcome of checking a request's credentials.
type authResult uint8

const (
	authOK        authResult = iota // a configured key matched
	authOpen                        // no keys configured: the gateway is open
	authMissing                     // no credential presented
	authInvalid                     // a credential presented that matches no key
	authAmbiguous                   // two different credentials, or a repeated header
)

// check authenticates a request; key is the matched key (nil when open).
func (k *Keyring) check(h *fasthttp.RequestHeader) (res authResult, key *apiKey, fromAuthz bool) {
	if k.Open() {
		return authOpen, nil, false
	}
	presented, fromAuthz, ambiguous := credentials(h)
	switch {
	case ambiguous:
		return authAmbiguous, nil, false
	case len(presented) == 0:
		return authMissing, nil, false
	}
	if ak := k.find(presented); ak != nil {
		return authOK, ak, fromAuthz
	}
	return authInvalid, nil, false
}

// Allowed reports whether the request carries a valid key (or the keyring
// is open). It is what the admin listener uses to guard its routes.
func (k *Keyring) Allowed(ctx *fasthttp.RequestCtx) bool {
	r, _, _ := k.check(&ctx.Request.Header)
	return r == authOK || r == authOpen
}
