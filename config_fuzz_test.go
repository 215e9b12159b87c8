package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzConfig: loading never panics, and a config that loads never turns
// auth off by accident (keys in the file are keys in the config).
func FuzzConfig(f *testing.F) {
	for _, s := range []string{"", "pool:\n  max_connections: 5\n", "auth:\n  api_keys: [a-key-0123456789abcdef0123456789ab]\n",
		"auth:\n  api_keys: a-key\n", "pool: [\n", "upstream:\n  url: ftp://x\n", "log:\n  level: debug\n", "gateway:\n  listen: 5\n",
		"auth:\n  keys: [{name: a, key: k, scopes: [inference]}]\n"} {
		f.Add([]byte(s))
	}
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, yaml []byte) {
		path := filepath.Join(dir, "config.yaml")
		if err := os.WriteFile(path, yaml, 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := loadConfig(path, nil, nil)
		if err != nil {
			return
		}
		if len(yaml) > 0 && containsAll(string(yaml), "api_keys", "a-key-0123456789abcdef0123456789ab") && len(c.Auth.APIKeys) == 0 {
			t.Fatalf("keys in the file but none in the config: %q", yaml)
		}
	})
}

func containsAll(s string, subs ...string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}
