package access

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/valyala/fasthttp"
	"golang.org/x/crypto/ssh"
)

// DefaultOllamaMaxSkew is config key auth.ollama_max_skew's default: how
// far a signed request's ts may be from the gateway's clock.
const DefaultOllamaMaxSkew = 5 * time.Minute

// OllamaKeyConfig is one Ollama client key (config key auth.ollama_keys,
// auth.keys_file, or JSON in VEGA_AUTH_OLLAMA_KEYS): the public half of a
// client's ~/.ollama/id_ed25519, which the Ollama CLI and Go client sign
// requests with when OLLAMA_AUTH=1.
type OllamaKeyConfig struct {
	// Name identifies the key in logs and metrics.
	Name string `mapstructure:"name" json:"name" yaml:"name"`
	// PublicKey is the key as one authorized_keys line, what
	// `cat ~/.ollama/id_ed25519.pub` prints ("ssh-ed25519 AAAA... comment").
	PublicKey string `mapstructure:"public_key" json:"public_key" yaml:"public_key"`
	// Scopes the key holds, as for API keys. Default inference and
	// models:read.
	Scopes []string `mapstructure:"scopes" json:"scopes" yaml:"scopes"`
	// MaxConcurrent caps this key's requests in flight (429 above it);
	// 0 means no cap.
	MaxConcurrent int `mapstructure:"max_concurrent" json:"max_concurrent" yaml:"max_concurrent"`
	// RequestsPerMinute caps this key's request rate (429 above it); 0
	// means no cap.
	RequestsPerMinute int `mapstructure:"requests_per_minute" json:"requests_per_minute" yaml:"requests_per_minute"`
	// TokensPerMinute and TokensPerDay are the key's token budgets, as for
	// API keys; 0 means no budget.
	TokensPerMinute int64 `mapstructure:"tokens_per_minute" json:"tokens_per_minute" yaml:"tokens_per_minute"`
	TokensPerDay    int64 `mapstructure:"tokens_per_day" json:"tokens_per_day" yaml:"tokens_per_day"`
}

// ollamaKey is a configured Ollama key: the ed25519 key signatures are
// checked with, and who it makes the caller.
type ollamaKey struct {
	pub ed25519.PublicKey
	id  *Identity
}

// parseOllamaKey reads an authorized_keys line. Ollama's client keys are
// ed25519 (it generates nothing else, and signs with the raw ed25519
// signature), so other types are refused at start-up rather than failing
// every request.
func parseOllamaKey(line string) (wire []byte, pub ed25519.PublicKey, err error) {
	pk, _, options, rest, err := ssh.ParseAuthorizedKey([]byte(strings.TrimSpace(line)))
	if err != nil {
		return nil, nil, fmt.Errorf("public_key: not an authorized_keys line (want what `cat ~/.ollama/id_ed25519.pub` prints)")
	}
	if len(options) > 0 || len(bytes.TrimSpace(rest)) > 0 {
		return nil, nil, fmt.Errorf("public_key: one key, without authorized_keys options")
	}
	if pk.Type() != ssh.KeyAlgoED25519 {
		return nil, nil, fmt.Errorf("public_key: type %s, want %s (Ollama's key type)", pk.Type(), ssh.KeyAlgoED25519)
	}
	cpk, ok := pk.(ssh.CryptoPublicKey)
	if !ok {
		return nil, nil, fmt.Errorf("public_key: not usable")
	}
	pub, ok = cpk.CryptoPublicKey().(ed25519.PublicKey)
	if !ok {
		return nil, nil, fmt.Errorf("public_key: not an ed25519 key")
	}
	return pk.Marshal(), pub, nil
}

// looksSigned reports whether an Authorization value looks like an Ollama
// signed credential, "<base64 public key>:<base64 signature>": one token
// with a colon and no space. Bearer tokens and other schemes have a space,
// so they never look like one.
func looksSigned(v []byte) ([]byte, bool) {
	v = bytes.TrimSpace(v)
	if bytes.IndexByte(v, ' ') >= 0 || bytes.IndexByte(v, ':') < 0 {
		return nil, false
	}
	return v, true
}

// checkSigned verifies an Ollama signed request. The Ollama client (api/
// client.go, auth/auth.go) signs "METHOD,PATH?ts=SECONDS" with ed25519:
// PATH is the API path it was asked for and ts the query parameter it adds
// to the URL; it sends Authorization: <the base64 ssh wire form of its
// public key>:<base64 signature>. The gateway rebuilds that string from the
// request as received (the method, the path as sent, the ts parameter's
// value), so a changed method, path or ts fails the signature; then ts
// must be within skew of now.
//
// There is no replay cache: ed25519 signatures are deterministic, so a
// client making the same call twice in one second, or several at once,
// sends identical headers, all legitimate. A captured header is worth
// the same call (with any body, which the signature does not cover) until
// ts leaves the skew window; TLS is what keeps headers from being captured.
func (k *Keyring) checkSigned(h *fasthttp.RequestHeader, cred []byte, now time.Time) (Result, *Identity) {
	refuse := func(s Status, name string) (Result, *Identity) { return Result{Status: s, KeyName: name}, nil }
	i := bytes.IndexByte(cred, ':')
	wire, err1 := base64.StdEncoding.DecodeString(string(cred[:i]))
	sig, err2 := base64.StdEncoding.DecodeString(string(cred[i+1:]))
	if err1 != nil || err2 != nil || len(sig) != ed25519.SignatureSize {
		return refuse(SignedMalformed, "")
	}
	uri := h.RequestURI()
	path, query := uri, []byte(nil)
	if q := bytes.IndexByte(uri, '?'); q >= 0 {
		path, query = uri[:q], uri[q+1:]
	}
	ts, ok := tsParam(query)
	if !ok {
		return refuse(SignedMalformed, "")
	}
	key, ok := k.ollama[string(wire)]
	if !ok {
		return refuse(SignedUnknownKey, "")
	}
	msg := make([]byte, 0, len(h.Method())+len(path)+len(ts)+5)
	msg = append(append(append(msg, h.Method()...), ','), path...)
	msg = append(append(msg, "?ts="...), ts...)
	if !ed25519.Verify(key.pub, msg, sig) {
		return refuse(SignedBadSignature, key.id.Name)
	}
	secs, err := strconv.ParseInt(string(ts), 10, 64)
	if err != nil {
		return refuse(SignedMalformed, key.id.Name)
	}
	skew := k.ollamaSkew
	switch signed := time.Unix(secs, 0); {
	case signed.Before(now.Add(-skew)):
		return refuse(SignedStale, key.id.Name)
	case signed.After(now.Add(skew)):
		return refuse(SignedFuture, key.id.Name)
	}
	return Result{Status: OK, InAuthorization: true, SignedTS: true, KeyName: key.id.Name}, key.id
}

// tsParam finds the one ts parameter of a raw query, as the Ollama client
// writes it (url.Values.Encode: "ts=1700000000", digits only). Missing,
// repeated or not decimal digits: not ok.
func tsParam(query []byte) ([]byte, bool) {
	var ts []byte
	found := false
	for pair := range bytes.SplitSeq(query, []byte{'&'}) {
		name, value, _ := bytes.Cut(pair, []byte{'='})
		if string(name) != "ts" {
			continue
		}
		if found {
			return nil, false
		}
		ts, found = value, true
	}
	if !found || len(ts) == 0 || len(ts) > 19 {
		return nil, false
	}
	for _, c := range ts {
		if c < '0' || c > '9' {
			return nil, false
		}
	}
	return ts, true
}

// AppendWithoutTS appends query less its ts parameters to dst: what a
// signed request's query is forwarded as (ts means nothing to Ollama).
func AppendWithoutTS(dst, query []byte) []byte {
	first := true
	for pair := range bytes.SplitSeq(query, []byte{'&'}) {
		name, _, _ := bytes.Cut(pair, []byte{'='})
		if string(name) == "ts" || len(pair) == 0 {
			continue
		}
		if !first {
			dst = append(dst, '&')
		}
		dst, first = append(dst, pair...), false
	}
	return dst
}
