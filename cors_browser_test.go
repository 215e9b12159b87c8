package main

import (
	"encoding/json"
	"html"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// corsPage is a page of another origin calling the gateway as a browser
// app does: fetch() with an X-API-Key header (which makes the browser send
// a preflight first), a streamed /api/chat read to its end, and a call
// without a key, whose 401 the page can read only if the gateway's CORS
// headers are on it. It writes what it saw into #out as JSON.
const corsPage = `<!doctype html><html><body><pre id="out">pending</pre><script>
(async () => {
  const gw = new URLSearchParams(location.search).get("gateway"), key = KEY, out = {};
  const call = async (name, f) => { try { out[name] = await f(); } catch (e) { out[name] = {error: String(e)}; } };
  await call("tags", async () => {
    const r = await fetch(gw + "/api/tags", {headers: {"X-API-Key": key}});
    const body = await r.json();
    return {status: r.status, correlation_id: r.headers.get("X-Correlation-ID"), models: body.models.length};
  });
  await call("chat", async () => {
    const r = await fetch(gw + "/api/chat", {method: "POST", headers: {"Content-Type": "application/json", "X-API-Key": key},
      body: JSON.stringify({model: "llama3.2", messages: [{role: "user", content: "hi"}]})});
    const text = await r.text();
    return {status: r.status, lines: text.trim().split("\n").length, done: text.includes('"done":true')};
  });
  await call("nokey", async () => {
    const r = await fetch(gw + "/api/tags");
    return {status: r.status, error: (await r.json()).error};
  });
  document.getElementById("out").textContent = JSON.stringify(out);
})();
</script></body></html>`

type corsCall struct {
	Status        int    `json:"status"`
	Error         string `json:"error"`
	CorrelationID string `json:"correlation_id"`
	Models        int    `json:"models"`
	Lines         int    `json:"lines"`
	Content       int    `json:"content"`
	Done          bool   `json:"done"`
}

var corsOut = regexp.MustCompile(`(?s)<pre id="out">(.*?)</pre>`)

// ollamaJSPage calls the gateway with the real ollama-js, its browser
// build (installed by .ci/run into testdata/ollamajs), as a web app does.
const ollamaJSPage = `<!doctype html><html><head><script type="importmap">{"imports": {"whatwg-fetch": "/whatwg-fetch.js"}}</script></head>
<body><pre id="out">pending</pre><script type="module">
const gw = new URLSearchParams(location.search).get("gateway"), out = {};
const show = () => { document.getElementById("out").textContent = JSON.stringify(out); };
try {
  out.list = {error: "loading ollama-js"}; show();
  const { Ollama } = await import("/ollama.mjs");
  out.list = {error: "listing"}; show();
  const ollama = new Ollama({host: gw, headers: {"X-API-Key": KEY}});
  out.list = {models: (await ollama.list()).models.length}; show();
  // Not streamed: headless chromium's virtual clock does not wait for a
  // body read chunk by chunk (TestBrowserCORS reads a stream whole).
  const r = await ollama.chat({model: "llama3.2", messages: [{role: "user", content: "hi"}], stream: false});
  out.chat = {content: r.message.content.length, done: r.done};
} catch (e) { out.error = String(e); }
show();
</script></body></html>`

// servePage serves page on a loopback address of its own (its own origin)
// and returns that origin, with ollama-js's browser build at /ollama.mjs.
// The page is told the gateway's address in its query.
func servePage(t *testing.T, addr, page, key string) string {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("cannot listen on %s: %v", addr, err)
	}
	page = strings.ReplaceAll(page, "KEY", `"`+key+`"`)
	files := map[string]string{
		"/ollama.mjs":      filepath.Join(ollamaJSDir, "node_modules", "ollama", "dist", "browser.mjs"),
		"/whatwg-fetch.js": filepath.Join(ollamaJSDir, "node_modules", "whatwg-fetch", "fetch.js"), // its ES module build, as bundlers take it
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if f, ok := files[r.URL.Path]; ok {
			w.Header().Set("Content-Type", "text/javascript")
			http.ServeFile(w, r, f)
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = w.Write([]byte(page))
	}), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return "http://" + ln.Addr().String()
}

// runCORSPage loads a page in headless chromium and returns what its
// fetches saw.
func runCORSPage(t *testing.T, origin, gateway string) map[string]corsCall {
	t.Helper()
	// --enable-logging=stderr: the page's console, for a failure message.
	dom, console := runChromium(t, "--enable-logging=stderr", "--virtual-time-budget=10000", "--dump-dom", origin+"/?gateway="+url.QueryEscape(gateway))
	m := corsOut.FindStringSubmatch(dom)
	if m == nil {
		t.Fatalf("no #out in the page:\n%s", tail(dom, 2000))
	}
	var out map[string]corsCall
	if err := json.Unmarshal([]byte(html.UnescapeString(m[1])), &out); err != nil {
		t.Fatalf("#out is not the page's result (%v): %s\nconsole:\n%s", err, m[1], tail(console, 3000))
	}
	return out
}

// TestBrowserCORS is issue #16 part 2 in a real browser: a page on one
// loopback origin calls the gateway on another with fetch() and a key.
// From the allowed origin the preflight, the keyed calls (a streamed chat
// among them) and the keyless 401 are all visible to the page; from an
// origin not allowed, the browser blocks every call.
func TestBrowserCORS(t *testing.T) {
	if _, err := os.Stat(chromiumPath); err != nil {
		t.Skipf("%s not found (%v): install it with `apt-get install -y chromium` to run the browser test", chromiumPath, err)
	}
	const key = "browser-cors-key-0123456789abcdef0123"
	allowed := servePage(t, "127.0.0.2:0", corsPage, key)
	other := servePage(t, "127.0.0.3:0", corsPage, key)
	p := startProcess(t, []string{"serve", "--demo"}, "VEGA_AUTH_API_KEYS="+key, "VEGA_GATEWAY_CORS_ALLOWED_ORIGINS="+allowed)
	gw := "http://" + p.data
	warmUp(t, gw, key)

	out := runCORSPage(t, allowed, gw)
	if c := out["tags"]; c.Status != 200 || c.Models == 0 || c.CorrelationID == "" {
		t.Fatalf("tags from the allowed origin: %+v", c)
	}
	if c := out["chat"]; c.Status != 200 || c.Lines < 2 || !c.Done {
		t.Fatalf("streamed chat from the allowed origin: %+v", c)
	}
	if c := out["nokey"]; c.Status != 401 || c.Error == "" {
		t.Fatalf("call without a key from the allowed origin: %+v", c)
	}

	out = runCORSPage(t, other, gw)
	for name, c := range out {
		if c.Status != 0 || !strings.Contains(c.Error, "Failed to fetch") {
			t.Fatalf("%s from an origin not allowed: %+v, want the browser to block it", name, c)
		}
	}
	if len(out) != 3 {
		t.Fatalf("page result %v", out)
	}
	// The preflights were answered by the gateway: the access log has them
	// as 204 (allowed) and 403 (not allowed) OPTIONS lines.
	b, err := os.ReadFile(filepath.Join(p.logDir, "gateway.log"))
	if err != nil {
		t.Fatal(err)
	}
	logs := string(b)
	if !regexp.MustCompile(`"method":"OPTIONS"[^\n]*"status":204`).MatchString(logs) ||
		!regexp.MustCompile(`"method":"OPTIONS"[^\n]*"status":403`).MatchString(logs) {
		t.Fatalf("no preflight lines in the access log:\n%s", tail(logs, 3000))
	}
}

// ollamaJSDir is where .ci/run installs ollama-js (npm ci).
var ollamaJSDir = filepath.Join("testdata", "ollamajs")

// TestBrowserOllamaJS: the real ollama-js in a page of an allowed origin
// lists models and chats through the gateway with its key.
func TestBrowserOllamaJS(t *testing.T) {
	if _, err := os.Stat(chromiumPath); err != nil {
		t.Skipf("%s not found (%v): install it with `apt-get install -y chromium` to run the browser test", chromiumPath, err)
	}
	if _, err := os.Stat(filepath.Join(ollamaJSDir, "node_modules", "ollama", "dist", "browser.mjs")); err != nil {
		if os.Getenv("VEGA_REQUIRE_OLLAMA_JS") == "1" {
			t.Fatalf("ollama-js is required: %v (npm ci --prefix testdata/ollamajs)", err)
		}
		t.Skipf("ollama-js not installed (%v): run `npm ci --prefix testdata/ollamajs`", err)
	}
	const key = "browser-ollamajs-key-0123456789abcdef"
	origin := servePage(t, "127.0.0.2:0", ollamaJSPage, key)
	p := startProcess(t, []string{"serve", "--demo"}, "VEGA_AUTH_API_KEYS="+key, "VEGA_GATEWAY_CORS_ALLOWED_ORIGINS="+origin)
	out := runCORSPage(t, origin, "http://"+p.data)
	if c := out["list"]; c.Models == 0 || c.Error != "" {
		t.Fatalf("ollama-js list from the page: %+v", c)
	}
	if c := out["chat"]; c.Content == 0 || !c.Done {
		t.Fatalf("ollama-js chat from the page: %+v", c)
	}
}

// warmUp loads llama3.2 on a demo backend before a page streams from it:
// headless chromium's virtual clock runs on while a response streams, so a
// cold load's seconds before the first token would outlast the page's time.
func warmUp(t *testing.T, gateway, key string) {
	t.Helper()
	req, err := http.NewRequest("POST", gateway+"/api/chat", strings.NewReader(`{"model":"llama3.2","messages":[{"role":"user","content":"hi"}],"stream":false}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-API-Key", key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("warm-up chat: %d", resp.StatusCode)
	}
}
