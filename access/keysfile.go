package access

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"

	"go.yaml.in/yaml/v3"
)

// fileEntry is one entry of a keys file: an API key (key or sha256) or an
// Ollama key (public_key), told apart by which fields it has.
type fileEntry struct {
	Name              string   `json:"name" yaml:"name"`
	Key               string   `json:"key" yaml:"key"`
	SHA256            string   `json:"sha256" yaml:"sha256"`
	PublicKey         string   `json:"public_key" yaml:"public_key"`
	Scopes            []string `json:"scopes" yaml:"scopes"`
	MaxConcurrent     int      `json:"max_concurrent" yaml:"max_concurrent"`
	RequestsPerMinute int      `json:"requests_per_minute" yaml:"requests_per_minute"`
	TokensPerMinute   int64    `json:"tokens_per_minute" yaml:"tokens_per_minute"`
	TokensPerDay      int64    `json:"tokens_per_day" yaml:"tokens_per_day"`
}

// ReadKeysFile reads keys from a YAML or JSON file: a list of keys, or an
// object {"keys": [...], "ollama_keys": [...]}. An entry with public_key is
// an Ollama key, one with key or sha256 an API key. Unknown fields are
// errors, so a typo in a scope or limit name is not silently ignored.
func ReadKeysFile(path string) ([]KeyConfig, []OllamaKeyConfig, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("auth.keys_file: %w", err)
	}
	trimmed := bytes.TrimSpace(b)
	var wrapped struct {
		Keys       []fileEntry       `json:"keys" yaml:"keys"`
		OllamaKeys []OllamaKeyConfig `json:"ollama_keys" yaml:"ollama_keys"`
	}
	var list []fileEntry
	if len(trimmed) > 0 && (trimmed[0] == '[' || trimmed[0] == '{') {
		dec := json.NewDecoder(bytes.NewReader(trimmed))
		dec.DisallowUnknownFields()
		if trimmed[0] == '[' {
			err = dec.Decode(&list)
		} else {
			err = dec.Decode(&wrapped)
			list = wrapped.Keys
		}
	} else {
		dec := yaml.NewDecoder(bytes.NewReader(trimmed))
		dec.KnownFields(true)
		var node yaml.Node
		if err = dec.Decode(&node); err == nil && len(node.Content) > 0 && node.Content[0].Kind == yaml.SequenceNode {
			// node.Decode would not refuse unknown fields: decode again.
			err = decodeStrict(trimmed, &list)
		} else if err == nil {
			err = decodeStrict(trimmed, &wrapped)
			list = wrapped.Keys
		}
	}
	if err != nil {
		// The decoder's message may quote the offending line, which may be
		// a key: say only where.
		return nil, nil, fmt.Errorf("auth.keys_file %s: not a valid list of keys (YAML or JSON; fields name, key or sha256 or public_key, scopes, max_concurrent, requests_per_minute, tokens_per_minute, tokens_per_day)", path)
	}
	var keys []KeyConfig
	ollama := wrapped.OllamaKeys
	for _, e := range list {
		if e.PublicKey != "" {
			if e.Key != "" || e.SHA256 != "" {
				return nil, nil, fmt.Errorf("auth.keys_file %s: key %q: give key, sha256 or public_key, not several", path, e.Name)
			}
			ollama = append(ollama, OllamaKeyConfig{Name: e.Name, PublicKey: e.PublicKey, Scopes: e.Scopes,
				MaxConcurrent: e.MaxConcurrent, RequestsPerMinute: e.RequestsPerMinute,
				TokensPerMinute: e.TokensPerMinute, TokensPerDay: e.TokensPerDay})
			continue
		}
		keys = append(keys, KeyConfig{Name: e.Name, Key: e.Key, SHA256: e.SHA256, Scopes: e.Scopes,
			MaxConcurrent: e.MaxConcurrent, RequestsPerMinute: e.RequestsPerMinute,
			TokensPerMinute: e.TokensPerMinute, TokensPerDay: e.TokensPerDay})
	}
	return keys, ollama, nil
}

func decodeStrict(b []byte, v any) error {
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	return dec.Decode(v)
}

// buildKeyring assembles the keyring from the config and the keys file.
func buildKeyring(cfg Config) (*Keyring, error) {
	scoped := append([]KeyConfig(nil), cfg.Keys...)
	ollama := append([]OllamaKeyConfig(nil), cfg.OllamaKeys...)
	if cfg.KeysFile != "" {
		keys, ollamaKeys, err := ReadKeysFile(cfg.KeysFile)
		if err != nil {
			return nil, err
		}
		scoped, ollama = append(scoped, keys...), append(ollama, ollamaKeys...)
	}
	kr, err := newKeyring(cfg.APIKeys, scoped, ollama, cfg.OllamaMaxSkew)
	if err != nil {
		return nil, fmt.Errorf("auth: %w", err)
	}
	return kr, nil
}
