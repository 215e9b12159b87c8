package access

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"

	"go.yaml.in/yaml/v3"
)

// ReadKeysFile reads scoped keys from a YAML or JSON file: a list of keys,
// or an object {"keys": [...]}. Unknown fields are errors, so a typo in a
// scope or limit name is not silently ignored.
func ReadKeysFile(path string) ([]KeyConfig, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("auth.keys_file: %w", err)
	}
	trimmed := bytes.TrimSpace(b)
	var wrapped struct {
		Keys []KeyConfig `json:"keys" yaml:"keys"`
	}
	var list []KeyConfig
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
			err = node.Decode(&list)
		} else if err == nil {
			err = decodeStrict(trimmed, &wrapped)
			list = wrapped.Keys
		}
	}
	if err != nil {
		// The decoder's message may quote the offending line, which may be
		// a key: say only where.
		return nil, fmt.Errorf("auth.keys_file %s: not a valid list of keys (YAML or JSON; fields name, key or sha256, scopes, max_concurrent, requests_per_minute, tokens_per_minute, tokens_per_day)", path)
	}
	return list, nil
}

func decodeStrict(b []byte, v any) error {
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	return dec.Decode(v)
}

// buildKeyring assembles the keyring from the config and the keys file.
func buildKeyring(cfg Config) (*Keyring, error) {
	scoped := append([]KeyConfig(nil), cfg.Keys...)
	if cfg.KeysFile != "" {
		fromFile, err := ReadKeysFile(cfg.KeysFile)
		if err != nil {
			return nil, err
		}
		scoped = append(scoped, fromFile...)
	}
	kr, err := NewKeyring(cfg.APIKeys, scoped)
	if err != nil {
		return nil, fmt.Errorf("auth: %w", err)
	}
	return kr, nil
}
