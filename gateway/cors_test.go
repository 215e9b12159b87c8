package gateway_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/vega-gateway/vega-gateway/access"
	"github.com/vega-gateway/vega-gateway/fleet"
	"github.com/vega-gateway/vega-gateway/gateway"
	"github.com/vega-gateway/vega-gateway/ollamatest"
	"github.com/vega-gateway/vega-gateway/pool"
)

const (
	corsKey    = "cors-key-0123456789abcdef0123456789ab"
	corsOrigin = "http://app.example:5173"
)

// TestCORS is issue #16 part 2 over plain HTTP: with gateway.cors set, a
// preflight from an allowed origin is answered by the gateway without a
// key and never reaches Ollama; real requests still need a key and carry
// the CORS headers; other origins get none; the page's Origin is not
// forwarded (Ollama would refuse it: OLLAMA_ORIGINS).
func TestCORS(t *testing.T) {
	preflight := func(origin, method, headers string) map[string]string {
		return map[string]string{"Origin": origin, "Access-Control-Request-Method": method, "Access-Control-Request-Headers": headers}
	}
	withKey := func(h map[string]string) map[string]string { h["X-API-Key"] = corsKey; return h }
	for _, tc := range []struct {
		name     string
		origins  []string
		method   string
		path     string
		body     string
		hdr      map[string]string
		status   int
		acao     string // Access-Control-Allow-Origin wanted ("" = none)
		upstream bool   // the request reaches Ollama
	}{
		{"preflight from an allowed origin", []string{corsOrigin}, "OPTIONS", "/api/chat", "",
			preflight(corsOrigin, "POST", "content-type,x-api-key"), 204, corsOrigin, false},
		{"preflight with Authorization", []string{corsOrigin}, "OPTIONS", "/v1/chat/completions", "",
			preflight(corsOrigin, "POST", "authorization,content-type,x-stainless-os"), 204, corsOrigin, false},
		{"preflight from another origin", []string{corsOrigin}, "OPTIONS", "/api/chat", "",
			preflight("http://evil.example", "POST", "x-api-key"), 403, "", false},
		{"preflight for a method not allowed", []string{corsOrigin}, "OPTIONS", "/api/chat", "",
			preflight(corsOrigin, "PROPFIND", ""), 403, "", false},
		{"preflight for a header not allowed", []string{corsOrigin}, "OPTIONS", "/api/chat", "",
			preflight(corsOrigin, "POST", "x-api-key,x-secret"), 403, "", false},
		{"preflight, any origin", []string{"*"}, "OPTIONS", "/api/tags", "",
			preflight("http://anything.example", "GET", "x-api-key"), 204, "*", false},
		{"real request from an allowed origin", []string{corsOrigin}, "GET", "/api/tags", "",
			withKey(map[string]string{"Origin": corsOrigin}), 200, corsOrigin, true},
		{"streamed request from an allowed origin", []string{corsOrigin}, "POST", "/api/chat",
			`{"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}`,
			withKey(map[string]string{"Origin": corsOrigin}), 200, corsOrigin, true},
		{"allowed origin without a key", []string{corsOrigin}, "GET", "/api/tags", "",
			map[string]string{"Origin": corsOrigin}, 401, corsOrigin, false},
		{"another origin with a key", []string{corsOrigin}, "GET", "/api/tags", "",
			withKey(map[string]string{"Origin": "http://evil.example"}), 200, "", true},
		{"no origin", []string{corsOrigin}, "GET", "/api/tags", "", withKey(map[string]string{}), 200, "", true},
		{"CORS off: a preflight needs a key", nil, "OPTIONS", "/api/chat", "",
			preflight(corsOrigin, "POST", "x-api-key"), 401, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := startEnv(t, envOptions{fake: ollamatest.Config{Tokens: 3}, auth: access.Config{APIKeys: []string{corsKey}},
				gateway: gateway.Config{CORS: gateway.CORSConfig{AllowedOrigins: tc.origins}}})
			st, h, body := e.do(tc.method, tc.path, tc.body, tc.hdr)
			if st != tc.status {
				t.Fatalf("status %d, want %d: %s", st, tc.status, body)
			}
			if got := h.Get("Access-Control-Allow-Origin"); got != tc.acao {
				t.Fatalf("Access-Control-Allow-Origin %q, want %q", got, tc.acao)
			}
			if tc.origins != nil && !hasToken(h.Values("Vary"), "Origin") {
				t.Fatalf("Vary %q, want Origin", h.Values("Vary"))
			}
			if tc.acao == "" {
				for k := range h {
					if strings.HasPrefix(strings.ToLower(k), "access-control-") {
						t.Fatalf("%s sent to a page not allowed", k)
					}
				}
			}
			switch {
			case st == 204:
				if !strings.Contains(h.Get("Access-Control-Allow-Methods"), tc.hdr["Access-Control-Request-Method"]) ||
					h.Get("Access-Control-Max-Age") != "7200" {
					t.Fatalf("preflight headers %v", h)
				}
				for _, want := range strings.Split(tc.hdr["Access-Control-Request-Headers"], ",") {
					if want != "" && !hasToken(h.Values("Access-Control-Allow-Headers"), want) {
						t.Fatalf("Access-Control-Allow-Headers %q lacks %q", h.Get("Access-Control-Allow-Headers"), want)
					}
				}
			case tc.acao != "":
				if !strings.Contains(h.Get("Access-Control-Expose-Headers"), "X-Correlation-ID") {
					t.Fatalf("Access-Control-Expose-Headers %q", h.Get("Access-Control-Expose-Headers"))
				}
			}
			reqs := e.fake.Requests()
			if got := len(reqs) > 0; got != tc.upstream {
				t.Fatalf("reached Ollama: %v, want %v", got, tc.upstream)
			}
			for _, r := range reqs {
				if r.Method == "OPTIONS" || tc.origins != nil && r.Header.Get("Origin") != "" {
					t.Fatalf("Ollama got %s with Origin %q", r.Method, r.Header.Get("Origin"))
				}
			}
		})
	}
}

// hasToken reports whether a comma-separated header value holds tok
// (case-insensitive).
func hasToken(values []string, tok string) bool {
	for _, v := range values {
		for _, s := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(s), strings.TrimSpace(tok)) {
				return true
			}
		}
	}
	return false
}

// TestCORSReplacesUpstreamHeaders: with CORS on, an upstream's own
// Access-Control-* headers (here a proxy before Ollama allowing any origin
// with credentials) never reach the page: the gateway's replace them.
func TestCORSReplacesUpstreamHeaders(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Access-Control-Allow-Origin", "*")
		w.Header().Set("Access-Control-Allow-Credentials", "true")
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"models":[]}`))
	}))
	defer up.Close()
	e := startEnv(t, envOptions{noFake: true, upURL: up.URL, auth: access.Config{APIKeys: []string{corsKey}},
		gateway: gateway.Config{CORS: gateway.CORSConfig{AllowedOrigins: []string{corsOrigin}}}})
	for _, origin := range []string{corsOrigin, "http://evil.example", ""} {
		st, h, _ := e.do("GET", "/api/tags", "", map[string]string{"X-API-Key": corsKey, "Origin": origin})
		want := ""
		if origin == corsOrigin {
			want = corsOrigin
		}
		if st != 200 || h.Get("Access-Control-Allow-Origin") != want || h.Get("Access-Control-Allow-Credentials") != "" {
			t.Fatalf("origin %q: status %d, headers %v", origin, st, h)
		}
	}
}

// TestCORSConfig: a bad gateway.cors value stops start-up naming its key.
func TestCORSConfig(t *testing.T) {
	p, err := pool.New(pool.UpstreamConfig{URL: "http://127.0.0.1:1"}, pool.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	for _, tc := range []struct {
		name string
		cfg  gateway.CORSConfig
		key  string
	}{
		{"origin with a path", gateway.CORSConfig{AllowedOrigins: []string{"https://app.example/"}}, "gateway.cors.allowed_origins"},
		{"host only", gateway.CORSConfig{AllowedOrigins: []string{"app.example"}}, "gateway.cors.allowed_origins"},
		{"bad method", gateway.CORSConfig{AllowedOrigins: []string{"*"}, AllowedMethods: []string{"GET, POST"}}, "gateway.cors.allowed_methods"},
		{"bad header", gateway.CORSConfig{AllowedOrigins: []string{"*"}, AllowedHeaders: []string{"X-A: b"}}, "gateway.cors.allowed_headers"},
		{"negative max age", gateway.CORSConfig{AllowedOrigins: []string{"*"}, MaxAge: -1}, "gateway.cors.max_age"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := gateway.New(gateway.Config{CORS: tc.cfg}, gateway.ChatConfig{}, access.Config{}, fleet.Single(p), zerolog.Nop())
			if err == nil || !strings.Contains(err.Error(), tc.key) {
				t.Fatalf("err = %v, want one naming %s", err, tc.key)
			}
		})
	}
}
