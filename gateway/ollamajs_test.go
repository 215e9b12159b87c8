package gateway_test

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/vega-gateway/vega-gateway/access"
	"github.com/vega-gateway/vega-gateway/ollamatest"
)

// ollamaJSDir is where .ci/run installs ollama-js (npm ci): the real
// client, pinned by its package-lock.json.
var ollamaJSDir = filepath.Join("..", "testdata", "ollamajs")

// needOllamaJS skips the test when node or the installed ollama-js is
// missing, unless VEGA_REQUIRE_OLLAMA_JS=1 (CI) makes that a failure.
func needOllamaJS(t *testing.T) string {
	t.Helper()
	node, err := exec.LookPath("node")
	if err == nil {
		_, err = os.Stat(filepath.Join(ollamaJSDir, "node_modules", "ollama", "package.json"))
	}
	if err != nil {
		if os.Getenv("VEGA_REQUIRE_OLLAMA_JS") == "1" {
			t.Fatalf("ollama-js is required: %v (npm ci --prefix testdata/ollamajs)", err)
		}
		t.Skipf("ollama-js not installed (%v): run `npm ci --prefix testdata/ollamajs`", err)
	}
	return node
}

// TestOllamaJSThroughGateway drives the real ollama-js client (Node) through
// the gateway: the key given as a header, X-API-Key or Authorization:
// Bearer, lists models and streams a chat; without it ollama-js reports
// the gateway's 401.
func TestOllamaJSThroughGateway(t *testing.T) {
	node := needOllamaJS(t)
	const key = "ollama-js-key-0123456789abcdef012345"
	e := startEnv(t, envOptions{fake: ollamatest.Config{Tokens: 5}, auth: access.Config{APIKeys: []string{key}}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, node, filepath.Join(ollamaJSDir, "client.mjs"), e.url, key).CombinedOutput()
	if err != nil {
		t.Fatalf("node: %v\n%s", err, out)
	}
	var got map[string]struct {
		Models int    `json:"models"`
		Parts  int    `json:"parts"`
		Done   bool   `json:"done"`
		Error  string `json:"error"`
		Status int    `json:"status"`
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("client output: %v\n%s", err, out)
	}
	if c := got["list"]; c.Models == 0 || c.Error != "" {
		t.Fatalf("list with X-API-Key: %+v", c)
	}
	if c := got["chat_stream"]; c.Parts < 2 || !c.Done || c.Error != "" {
		t.Fatalf("streamed chat with Bearer: %+v", c)
	}
	if c := got["no_key"]; c.Status != 401 || c.Error == "" {
		t.Fatalf("list without a key: %+v, want ollama-js's error for the 401", c)
	}
	for _, r := range e.fake.Requests() {
		if r.Header.Get("Authorization") != "" || r.Header.Get("X-API-Key") != "" {
			t.Fatalf("the key reached Ollama on %s", r.Path)
		}
	}
}
