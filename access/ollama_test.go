package access

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
	"golang.org/x/crypto/ssh"
)

// testOllamaKey is a client key: its authorized_keys line and a signer
// that makes the Authorization value the Ollama client sends.
func testOllamaKey(t testing.TB) (line string, sign func(challenge string) string) {
	t.Helper()
	pk, sk, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sp, err := ssh.NewPublicKey(pk)
	if err != nil {
		t.Fatal(err)
	}
	wire := base64.StdEncoding.EncodeToString(sp.Marshal())
	return ssh.KeyAlgoED25519 + " " + wire + " me@host", func(c string) string {
		return wire + ":" + base64.StdEncoding.EncodeToString(ed25519.Sign(sk, []byte(c)))
	}
}

func TestParseOllamaKey(t *testing.T) {
	good, _ := testOllamaKey(t)
	for _, tc := range []struct {
		name, line, err string
	}{
		{"authorized_keys line", good, ""},
		{"without comment", strings.Join(strings.Fields(good)[:2], " "), ""},
		{"not a key", "hello", "not an authorized_keys line"},
		{"options", `command="x" ` + good, "without authorized_keys options"},
		{"rsa", "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQC7 x", "not an authorized_keys line"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := parseOllamaKey(tc.line)
			if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
				t.Fatalf("err = %v, want %q", err, tc.err)
			}
		})
	}
}

func TestQueryTS(t *testing.T) {
	for _, tc := range []struct {
		query, ts, rest string
		ok              bool
	}{
		{"ts=1700000000", "1700000000", "", true},
		{"a=1&ts=17&b=2", "17", "a=1&b=2", true},
		{"", "", "", false},
		{"ts=", "", "", false},
		{"ts=-1", "", "", false},
		{"ts=1&ts=1", "", "", false},
		{"ts=12345678901234567890", "", "", false},
		{"t%73=1", "", "t%73=1", false},
	} {
		ts, ok := tsParam([]byte(tc.query))
		if ok != tc.ok || string(ts) != tc.ts {
			t.Errorf("tsParam(%q) = %q %v, want %q %v", tc.query, ts, ok, tc.ts, tc.ok)
		}
		if tc.ok || tc.rest != "" {
			if got := string(AppendWithoutTS(nil, []byte(tc.query))); got != tc.rest {
				t.Errorf("AppendWithoutTS(%q) = %q, want %q", tc.query, got, tc.rest)
			}
		}
	}
}

// TestCheckSigned covers the verdicts on signed requests, at a fixed clock.
func TestCheckSigned(t *testing.T) {
	line, sign := testOllamaKey(t)
	_, other := testOllamaKey(t)
	kr, err := newKeyring(nil, nil, []OllamaKeyConfig{{Name: "laptop", PublicKey: line}}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1_700_000_000, 0)
	at := func(d time.Duration) string { return strconv.FormatInt(now.Add(d).Unix(), 10) }
	for _, tc := range []struct {
		name, method, uri, authz string
		apiKey                   bool
		want                     Status
	}{
		{"ok", "GET", "/api/tags?ts=" + at(0), sign("GET,/api/tags?ts=" + at(0)), false, OK},
		{"edge of the window", "GET", "/api/tags?ts=" + at(-time.Minute), sign("GET,/api/tags?ts=" + at(-time.Minute)), false, OK},
		{"stale", "GET", "/api/tags?ts=" + at(-61*time.Second), sign("GET,/api/tags?ts=" + at(-61*time.Second)), false, SignedStale},
		{"future", "GET", "/api/tags?ts=" + at(61*time.Second), sign("GET,/api/tags?ts=" + at(61*time.Second)), false, SignedFuture},
		{"other key", "GET", "/api/tags?ts=" + at(0), other("GET,/api/tags?ts=" + at(0)), false, SignedUnknownKey},
		{"path", "GET", "/api/ps?ts=" + at(0), sign("GET,/api/tags?ts=" + at(0)), false, SignedBadSignature},
		{"method", "POST", "/api/tags?ts=" + at(0), sign("GET,/api/tags?ts=" + at(0)), false, SignedBadSignature},
		{"no ts", "GET", "/api/tags", sign("GET,/api/tags?ts=" + at(0)), false, SignedMalformed},
		{"with an API key too", "GET", "/api/tags?ts=" + at(0), sign("GET,/api/tags?ts=" + at(0)), true, Ambiguous},
		{"bearer is an API key", "GET", "/api/tags?ts=" + at(0), "Bearer a:b", false, Invalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var h fasthttp.RequestHeader
			h.SetMethod(tc.method)
			h.SetRequestURI(tc.uri)
			h.Set(HeaderAuthorization, tc.authz)
			if tc.apiKey {
				h.Set(HeaderAPIKey, "k")
			}
			res, id := kr.check(&h, now)
			if res.Status != tc.want || (id != nil) != (tc.want == OK) {
				t.Fatalf("status %v identity %v, want %v", res.Status, id, tc.want)
			}
			if tc.want == OK && (id.Name != "laptop" || !res.SignedTS || !res.InAuthorization || id.Scopes != defaultScopes) {
				t.Fatalf("accepted as %+v, result %+v", id, res)
			}
		})
	}
}

// TestOllamaKeysFromFile: auth.keys_file holds Ollama keys beside API keys,
// in the list form (told apart by public_key) and the object form, and a
// name is unique across both kinds.
func TestOllamaKeysFromFile(t *testing.T) {
	line, sign := testOllamaKey(t)
	line2, _ := testOllamaKey(t)
	dir := t.TempDir()
	for _, tc := range []struct {
		name, body, err string
	}{
		{"list", "- name: laptop\n  public_key: " + line + "\n- name: ci\n  key: ci-0123456789abcdef0123456789abcdef\n", ""},
		{"object", "keys:\n  - name: ci\n    key: ci-0123456789abcdef0123456789abcdef\nollama_keys:\n  - name: laptop\n    public_key: " + line + "\n    scopes: [inference]\n", ""},
		{"json", `{"ollama_keys":[{"name":"laptop","public_key":"` + line + `","max_concurrent":1}]}`, ""},
		{"same name", "- name: laptop\n  public_key: " + line + "\n- name: laptop\n  public_key: " + line2 + "\n", "duplicate key name"},
		{"same key", "- name: laptop\n  public_key: " + line + "\n- name: desk\n  public_key: " + line + "\n", "repeats an earlier key"},
		{"name shared with an API key", "- name: laptop\n  key: k-0123456789abcdef0123456789abcdef\n- name: laptop\n  public_key: " + line + "\n", "duplicate key name"},
		{"key and public_key", "- name: laptop\n  key: k-0123456789abcdef0123456789abcdef\n  public_key: " + line + "\n", "not several"},
		{"bad public key", "- name: laptop\n  public_key: ssh-ed25519 AAAA\n", "public_key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "_"))
			if err := os.WriteFile(path, []byte(tc.body), 0o600); err != nil {
				t.Fatal(err)
			}
			c, err := New(Config{KeysFile: path})
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var h fasthttp.RequestHeader
			ts := strconv.FormatInt(time.Now().Unix(), 10)
			h.SetRequestURI("/api/tags?ts=" + ts)
			h.Set(HeaderAuthorization, sign("GET,/api/tags?ts="+ts))
			if res, id := c.Check(&h, time.Now()); res.Status != OK || id.Name != "laptop" {
				t.Fatalf("signed request: %+v", res)
			}
		})
	}
}
