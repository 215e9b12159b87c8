package access

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestReadKeysFile covers the shapes auth.keys_file accepts, and that a
// bad file's error names the file but never quotes a key.
func TestReadKeysFile(t *testing.T) {
	const secret = "kf-secret-0123456789abcdef0123456789"
	for _, tc := range []struct {
		name, body string
		want       []string // key names read; nil: an error
	}{
		{"yaml list", "- name: a\n  key: " + secret + "\n- name: b\n  sha256: " + strings.Repeat("ab", 32) + "\n", []string{"a", "b"}},
		{"yaml object", "keys:\n  - name: a\n    key: " + secret + "\n    scopes: [inference]\n", []string{"a"}},
		{"json list", `[{"name":"a","key":"` + secret + `","max_concurrent":2}]`, []string{"a"}},
		{"json object", `{"keys":[{"name":"a","key":"` + secret + `","requests_per_minute":5}]}`, []string{"a"}},
		{"empty", "", nil},
		{"unknown yaml field", "keys:\n  - name: a\n    key: " + secret + "\n    scope: [inference]\n", nil},
		{"unknown yaml field in a list", "- name: a\n  key: " + secret + "\n  scope: [inference]\n", nil},
		{"unknown json field", `[{"name":"a","key":"` + secret + `","limit":1}]`, nil},
		{"not a list", "- [" + secret, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "keys")
			if err := os.WriteFile(path, []byte(tc.body), 0o600); err != nil {
				t.Fatal(err)
			}
			got, _, err := ReadKeysFile(path)
			if tc.want == nil {
				if err == nil || !strings.Contains(err.Error(), path) || strings.Contains(err.Error(), secret) {
					t.Fatalf("err = %v, want one naming %s without the key", err, path)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, k := range got {
				names = append(names, k.Name)
			}
			if strings.Join(names, ",") != strings.Join(tc.want, ",") {
				t.Fatalf("names %v, want %v", names, tc.want)
			}
		})
	}
}

// TestReloadKeepsKeysOnError: Control.Reload swaps the keyring whole, and a
// bad file leaves the previous keys in force and is counted.
func TestReloadKeepsKeysOnError(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys.yaml")
	write := func(s string) {
		if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("- name: alice\n  key: alice-0123456789abcdef0123456789abcd\n")
	c, err := New(Config{KeysFile: path})
	if err != nil {
		t.Fatal(err)
	}
	check := func(key string) Status {
		var h = headerWith(HeaderAPIKey, key)
		r, _ := c.Check(h, timeZero)
		return r.Status
	}
	if got := check("alice-0123456789abcdef0123456789abcd"); got != OK {
		t.Fatalf("before reload: %v", got)
	}
	write("- name: bob\n  key: bob-0123456789abcdef0123456789abcdef\n")
	if err := c.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := check("alice-0123456789abcdef0123456789abcd"); got != Invalid {
		t.Fatalf("removed key after reload: %v", got)
	}
	write("- name: broken\n  scopes: [everything]\n")
	if err := c.Reload(); err == nil {
		t.Fatal("a bad file reloaded")
	}
	if got := check("bob-0123456789abcdef0123456789abcdef"); got != OK || c.ReloadFailures() != 1 {
		t.Fatalf("after a failed reload: %v, failures %d", got, c.ReloadFailures())
	}
	// A file caught empty (truncated, or swapped half-way) would be an open
	// gateway: refused, whatever its form.
	for i, empty := range []string{"", "[]\n", "{}\n", "keys: []\n"} {
		write(empty)
		if err := c.Reload(); err == nil {
			t.Fatalf("%q: an empty keys file reloaded", empty)
		}
		if c.Open() || check("bob-0123456789abcdef0123456789abcdef") != OK || check("") == OK || c.ReloadFailures() != int64(2+i) {
			t.Fatalf("%q: after refusing an empty file: open %v, failures %d", empty, c.Open(), c.ReloadFailures())
		}
	}
}
