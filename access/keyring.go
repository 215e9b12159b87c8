package access

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"strings"
	"time"
)

// Identity is who a request was accepted as: a configured key's name,
// scopes and limits. It lives as long as the keyring that made it and is
// shared by every request with that key; its fields never change.
type Identity struct {
	// Name identifies the key in logs and metrics (never the key itself).
	Name string
	// Scopes are the routes the key may call.
	Scopes Scopes
	// Limits are the key's configured admission limits, which the limits
	// package enforces.
	Limits Limits
}

// Limits are a key's configured admission limits; zero means no limit.
type Limits struct {
	// MaxConcurrent caps the key's requests in flight.
	MaxConcurrent int64
	// RequestsPerMinute caps the key's requests per wall-clock minute.
	RequestsPerMinute int64
	// TokensPerMinute is the key's budget of prompt + completion tokens per
	// wall-clock minute.
	TokensPerMinute int64
	// TokensPerDay is the key's budget of tokens per UTC day.
	TokensPerDay int64
}

// apiKey is a configured key: its digest and who it makes the caller.
type apiKey struct {
	digest [sha256.Size]byte
	id     *Identity
}

// Keyring holds the accepted keys as SHA-256 digests, never the keys, so a
// heap dump or a debug print shows no secret. It never changes once built:
// a reload builds a new one.
type Keyring struct {
	keys []apiKey
	// ollama are the Ollama keys by the ssh wire form of their public key,
	// as the client sends it. Public keys are no secret, so a map lookup
	// (whose time depends on the key) gives nothing away.
	ollama     map[string]ollamaKey
	ollamaSkew time.Duration
	// names are every key's name, API and Ollama keys alike: a name is
	// what logs, metrics and limits know a key by.
	names map[string]bool
}

// NewKeyring builds a keyring from plain keys (auth.api_keys: scopes
// inference and models:read, named by their digest's first 8 hex digits)
// and scoped keys. No keys at all gives an open keyring.
func NewKeyring(plain []string, scoped []KeyConfig) (*Keyring, error) {
	return newKeyring(plain, scoped, nil, DefaultOllamaMaxSkew)
}

// newKeyring is NewKeyring with Ollama keys, whose signed ts may be skew
// away from the gateway's clock.
func newKeyring(plain []string, scoped []KeyConfig, ollama []OllamaKeyConfig, skew time.Duration) (*Keyring, error) {
	k := &Keyring{names: map[string]bool{}, ollamaSkew: skew}
	names := k.names
	digests := map[[sha256.Size]byte]bool{}
	add := func(ak apiKey) error {
		if names[ak.id.Name] {
			return fmt.Errorf("duplicate key name %q", ak.id.Name)
		}
		if digests[ak.digest] {
			return fmt.Errorf("key %q repeats an earlier key", ak.id.Name)
		}
		names[ak.id.Name], digests[ak.digest] = true, true
		k.keys = append(k.keys, ak)
		return nil
	}
	for i, key := range plain {
		if key == "" {
			return nil, fmt.Errorf("key #%d is empty", i+1)
		}
		d := sha256.Sum256([]byte(key))
		if err := add(apiKey{digest: d, id: &Identity{Name: "key-" + hex.EncodeToString(d[:4]), Scopes: defaultScopes}}); err != nil {
			return nil, err
		}
	}
	for i, kc := range scoped {
		id, err := kc.identity()
		if err != nil {
			return nil, fmt.Errorf("keys[%d]%s: %w", i, nameSuffix(kc.Name), err)
		}
		ak := apiKey{id: id}
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
		if err := add(ak); err != nil {
			return nil, fmt.Errorf("keys[%d]: %w", i, err)
		}
	}
	for i, oc := range ollama {
		id, err := KeyConfig{Name: oc.Name, Scopes: oc.Scopes, MaxConcurrent: oc.MaxConcurrent, RequestsPerMinute: oc.RequestsPerMinute,
			TokensPerMinute: oc.TokensPerMinute, TokensPerDay: oc.TokensPerDay}.identity()
		if err != nil {
			return nil, fmt.Errorf("ollama_keys[%d]%s: %w", i, nameSuffix(oc.Name), err)
		}
		wire, pub, err := parseOllamaKey(oc.PublicKey)
		if err != nil {
			return nil, fmt.Errorf("ollama_keys[%d] (%s): %w", i, oc.Name, err)
		}
		if names[id.Name] {
			return nil, fmt.Errorf("ollama_keys[%d]: duplicate key name %q", i, id.Name)
		}
		if _, dup := k.ollama[string(wire)]; dup {
			return nil, fmt.Errorf("ollama_keys[%d]: key %q repeats an earlier key", i, id.Name)
		}
		if k.ollama == nil {
			k.ollama = map[string]ollamaKey{}
		}
		names[id.Name] = true
		k.ollama[string(wire)] = ollamaKey{pub: pub, id: id}
	}
	return k, nil
}

// nameSuffix is " (name)" for an error message, or nothing without a name.
func nameSuffix(name string) string {
	if name == "" {
		return ""
	}
	return " (" + name + ")"
}

// identity checks a scoped key's name, scopes and limits.
func (kc KeyConfig) identity() (*Identity, error) {
	if kc.Name == "" {
		return nil, fmt.Errorf("name is required")
	}
	if kc.MaxConcurrent < 0 || kc.RequestsPerMinute < 0 || kc.TokensPerMinute < 0 || kc.TokensPerDay < 0 {
		return nil, fmt.Errorf("limits must not be negative")
	}
	scopes := defaultScopes
	if len(kc.Scopes) > 0 {
		var err error
		if scopes, err = ParseScopes(kc.Scopes); err != nil {
			return nil, err
		}
	}
	return &Identity{Name: kc.Name, Scopes: scopes,
		Limits: Limits{MaxConcurrent: int64(kc.MaxConcurrent), RequestsPerMinute: int64(kc.RequestsPerMinute),
			TokensPerMinute: kc.TokensPerMinute, TokensPerDay: kc.TokensPerDay}}, nil
}

// Open reports whether no keys are configured.
func (k *Keyring) Open() bool { return k.Len() == 0 }

// Identities lists who each configured key makes the caller: API keys in
// configuration order, then Ollama keys.
func (k *Keyring) Identities() []*Identity {
	out := make([]*Identity, 0, k.Len())
	for i := range k.keys {
		out = append(out, k.keys[i].id)
	}
	for _, ok := range k.ollama {
		out = append(out, ok.id)
	}
	return out
}

// Len is the number of configured keys, API and Ollama keys.
func (k *Keyring) Len() int { return len(k.keys) + len(k.ollama) }

// find compares the presented key's digest with every configured digest
// in constant time, without an early exit, so timing does not reveal which
// key or how much of one matched.
func (k *Keyring) find(presented []byte) *Identity {
	d := sha256.Sum256(presented)
	var found *Identity
	for i := range k.keys {
		if digestsEqual(d[:], k.keys[i].digest[:]) == 1 {
			found = k.keys[i].id
		}
	}
	return found
}

// digestsEqual is the comparison find makes for every key, a variable only
// so a test can count the calls (B-35: no early exit, whatever matches).
var digestsEqual = subtle.ConstantTimeCompare
