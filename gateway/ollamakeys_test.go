package gateway_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	ollama "github.com/ollama/ollama/api"
	ollamaauth "github.com/ollama/ollama/auth"
	"golang.org/x/crypto/ssh"

	"github.com/vega-gateway/vega-gateway/access"
	"github.com/vega-gateway/vega-gateway/ollamatest"
)

// ollamaHome makes a home directory holding ~/.ollama/id_ed25519 as the
// Ollama CLI generates it (cmd/cmd.go: an ed25519 key in OpenSSH PEM, and
// its authorized_keys line in id_ed25519.pub), and returns the directory
// and the public key line, what `cat ~/.ollama/id_ed25519.pub` prints.
func ollamaHome(t *testing.T) (home, pub string) {
	t.Helper()
	pk, sk, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(sk, "")
	if err != nil {
		t.Fatal(err)
	}
	sshPub, err := ssh.NewPublicKey(pk)
	if err != nil {
		t.Fatal(err)
	}
	home = t.TempDir()
	dir := filepath.Join(home, ".ollama")
	pub = strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sshPub))) + " test@vega"
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "id_ed25519"), pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "id_ed25519.pub"), []byte(pub+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return home, pub
}

// signedEnv is a gateway that knows one Ollama key, "laptop" (inference
// and models:read), with the process set up as a user of the Ollama CLI
// with OLLAMA_AUTH=1: HOME holds the key, OLLAMA_HOST is the gateway.
// The environment is process-wide: tests using it do not run in parallel.
func signedEnv(t *testing.T) (*env, string) {
	t.Helper()
	home, pub := ollamaHome(t)
	e := startEnv(t, envOptions{fake: ollamatest.Config{Tokens: 5}, auth: access.Config{
		OllamaKeys: []access.OllamaKeyConfig{{Name: "laptop", PublicKey: pub, Scopes: []string{access.ScopeInference, access.ScopeModelsRead}}},
	}})
	t.Setenv("HOME", home)
	t.Setenv("OLLAMA_AUTH", "1")
	t.Setenv("OLLAMA_HOST", e.url)
	return e, home
}

// wantNotForwarded checks that no request the fake received carried the
// signed credential or its ts.
func wantNotForwarded(t *testing.T, e *env) {
	t.Helper()
	reqs := e.fake.Requests()
	if len(reqs) == 0 {
		t.Fatal("the fake received nothing")
	}
	for _, r := range reqs {
		if r.Header.Get("Authorization") != "" || strings.Contains(r.RawQuery, "ts=") {
			t.Fatalf("%s %s?%s reached Ollama with Authorization %q", r.Method, r.Path, r.RawQuery, r.Header.Get("Authorization"))
		}
	}
}

// TestOllamaSignedKeys is issue #16 part 1 with the real Ollama Go client
// (the library the ollama CLI is built on): with OLLAMA_AUTH=1 it signs each
// request with ~/.ollama/id_ed25519, and the gateway accepts it for the
// key's scopes, logs the key's name, and forwards neither the signature nor
// its ts.
func TestOllamaSignedKeys(t *testing.T) {
	e, _ := signedEnv(t)
	client, err := ollama.ClientFromEnvironment()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	list, err := client.List(ctx)
	if err != nil || len(list.Models) == 0 {
		t.Fatalf("List: %v %v", list, err)
	}

	var chunks []string
	var final ollama.ChatResponse
	stream := true
	err = client.Chat(ctx, &ollama.ChatRequest{Model: "llama3.2", Stream: &stream,
		Messages: []ollama.Message{{Role: "user", Content: "hi"}}}, func(r ollama.ChatResponse) error {
		chunks = append(chunks, r.Message.Content)
		if r.Done {
			final = r
		}
		return nil
	})
	if err != nil || len(chunks) < 2 || !final.Done {
		t.Fatalf("Chat: %d chunks, done %v, err %v", len(chunks), final.Done, err)
	}

	// The key lacks models:manage: Pull is refused before Ollama sees it.
	err = client.Pull(ctx, &ollama.PullRequest{Model: "llama3.2"}, func(ollama.ProgressResponse) error { return nil })
	var se ollama.StatusError
	if !errors.As(err, &se) || se.StatusCode != http.StatusForbidden {
		t.Fatalf("Pull with a key without models:manage: %v, want 403", err)
	}
	for _, r := range e.fake.Requests() {
		if r.Path == "/api/pull" {
			t.Fatal("a refused pull reached Ollama")
		}
	}

	// No replay cache: the same call made again and again within one
	// second carries identical headers (ed25519 is deterministic), and each
	// is accepted; so are concurrent ones.
	for i := range 3 {
		if _, err := client.List(ctx); err != nil {
			t.Fatalf("List #%d: %v", i+2, err)
		}
	}
	ts := strconv.FormatInt(time.Now().Unix(), 10)
	token, err := ollamaauth.Sign(ctx, []byte("GET,/api/tags?ts="+ts))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	statuses := make([]int, 5)
	for i := range statuses {
		wg.Go(func() {
			st, _, _ := e.do("GET", "/api/tags?ts="+ts, "", map[string]string{"Authorization": token})
			statuses[i] = st
		})
	}
	wg.Wait()
	for i, st := range statuses {
		if st != 200 {
			t.Fatalf("identical signed request #%d: status %d", i, st)
		}
	}

	// Other query parameters (the client sorts them with ts) go through;
	// only ts is taken out.
	if st, _, body := e.do("GET", "/api/tags?foo=bar&ts="+ts, "", map[string]string{"Authorization": token}); st != 200 {
		t.Fatalf("signed request with another parameter: %d %s", st, body)
	}
	if reqs := e.fake.Requests(); reqs[len(reqs)-1].RawQuery != "foo=bar" {
		t.Fatalf("forwarded query %q, want foo=bar", reqs[len(reqs)-1].RawQuery)
	}

	wantNotForwarded(t, e)
	sig := token[strings.IndexByte(token, ':')+1:]
	logs := e.logs.String()
	if strings.Contains(logs, sig) {
		t.Fatal("the signature reached the log")
	}
	n := 0
	for _, m := range e.logs.lines(t) {
		if m["message"] == "request" && m["status"] == float64(200) {
			n++
			if m["key_id"] != "laptop" {
				t.Fatalf("access line without the key's name: %v", m)
			}
		}
	}
	if n < 10 {
		t.Fatalf("%d successful access lines, want at least 10", n)
	}
}

// TestOllamaSignedKeyRefusals: each way a signed request can be wrong is a
// 401 in Ollama's error shape, with the reason in the access log, and
// nothing reaches Ollama. The requests are signed by Ollama's own
// auth.Sign, then changed as each case says.
func TestOllamaSignedKeyRefusals(t *testing.T) {
	e, home := signedEnv(t)
	ctx := context.Background()
	otherHome, _ := ollamaHome(t)
	// signAs signs as the Ollama client whose key is in dir/.ollama (the
	// client reads HOME at each signature; signedEnv's t.Setenv restores it).
	signAs := func(dir, challenge string) string {
		t.Helper()
		os.Setenv("HOME", dir)
		defer os.Setenv("HOME", home)
		token, err := ollamaauth.Sign(ctx, []byte(challenge))
		if err != nil {
			t.Fatal(err)
		}
		return token
	}
	sign := func(challenge string) string { return signAs(home, challenge) }
	now := time.Now().Unix()
	ts := func(off time.Duration) string { return strconv.FormatInt(now+int64(off/time.Second), 10) }
	for _, tc := range []struct {
		name   string
		method string
		target string
		authz  func() string
		reason string
	}{
		{"unknown key", "GET", "/api/tags?ts=" + ts(0), func() string { return signAs(otherHome, "GET,/api/tags?ts="+ts(0)) }, "unknown ollama key"},
		{"wrong signature", "GET", "/api/tags?ts=" + ts(0), func() string {
			tok := sign("GET,/api/tags?ts=" + ts(0))
			i := strings.IndexByte(tok, ':')
			sig, _ := base64.StdEncoding.DecodeString(tok[i+1:])
			sig[10] ^= 1
			return tok[:i+1] + base64.StdEncoding.EncodeToString(sig)
		}, "bad signature"},
		{"path changed", "GET", "/api/ps?ts=" + ts(0), func() string { return sign("GET,/api/tags?ts=" + ts(0)) }, "bad signature"},
		{"method changed", "POST", "/api/show?ts=" + ts(0), func() string { return sign("GET,/api/show?ts=" + ts(0)) }, "bad signature"},
		{"ts changed", "GET", "/api/tags?ts=" + ts(time.Second), func() string { return sign("GET,/api/tags?ts=" + ts(0)) }, "bad signature"},
		{"stale ts", "GET", "/api/tags?ts=" + ts(-6*time.Minute), func() string { return sign("GET,/api/tags?ts=" + ts(-6*time.Minute)) }, "stale ts"},
		{"future ts", "GET", "/api/tags?ts=" + ts(6*time.Minute), func() string { return sign("GET,/api/tags?ts=" + ts(6*time.Minute)) }, "future ts"},
		{"no ts", "GET", "/api/tags", func() string { return sign("GET,/api/tags?ts=" + ts(0)) }, "malformed signed request"},
		{"two ts", "GET", "/api/tags?ts=" + ts(0) + "&ts=" + ts(0), func() string { return sign("GET,/api/tags?ts=" + ts(0)) }, "malformed signed request"},
		{"not base64", "GET", "/api/tags?ts=" + ts(0), func() string { return "not*base64:also*not" }, "malformed signed request"},
		{"short signature", "GET", "/api/tags?ts=" + ts(0), func() string {
			tok := sign("GET,/api/tags?ts=" + ts(0))
			return tok[:strings.IndexByte(tok, ':')+1] + base64.StdEncoding.EncodeToString([]byte("short"))
		}, "malformed signed request"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e.fake.ResetStats()
			id := "signed-" + strings.ReplaceAll(tc.name, " ", "-")
			st, _, body := e.do(tc.method, tc.target, "", map[string]string{"Authorization": tc.authz(), "X-Correlation-ID": id})
			m := decodeJSON(t, body)
			if msg, _ := m["error"].(string); st != 401 || msg == "" {
				t.Fatalf("status %d body %s, want 401 with Ollama's {\"error\": ...}", st, body)
			}
			e.wantOutcome(t, id, "auth_failed")
			if got := e.logs.accessLines(t, id)[0]["auth_reason"]; got != tc.reason {
				t.Fatalf("auth_reason %v, want %q", got, tc.reason)
			}
			if n := len(e.fake.Requests()); n != 0 {
				t.Fatalf("%d requests reached Ollama", n)
			}
		})
	}

	// The real client with a key the gateway does not list gets Ollama's
	// own 401 error.
	t.Setenv("HOME", otherHome)
	client, err := ollama.ClientFromEnvironment()
	if err != nil {
		t.Fatal(err)
	}
	_, err = client.List(ctx)
	var ae ollama.AuthorizationError
	if !errors.As(err, &ae) || ae.StatusCode != http.StatusUnauthorized {
		t.Fatalf("List with an unlisted key: %v, want a 401 AuthorizationError", err)
	}
}
