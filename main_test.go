package main

import (
	"bufio"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vega-gateway/vega-gateway/access"
	"github.com/vega-gateway/vega-gateway/ollamatest"
)

// TestMain lets the test binary act as vega-gateway in a subprocess, so the
// tests below run the real command: flags, config, signals, exit codes.
func TestMain(m *testing.M) {
	if os.Getenv("VEGA_TEST_RUN_MAIN") == "1" {
		os.Exit(run(os.Args[1:]))
	}
	os.Exit(m.Run())
}

func TestLoadConfigErrors(t *testing.T) {
	const secret = "super-secret-key-value-0123456789abcdef"
	for _, tc := range []struct {
		name    string
		yaml    string
		env     []string
		wantKey string
	}{
		{"unknown key", "pool:\n  max_conections: 5\n", nil, "pool.max_conections"},
		{"wrong type", "pool:\n  max_connections: lots\n", nil, "max_connections"},
		{"bad duration", "pool:\n  max_wait: soon\n", nil, "max_wait"},
		{"negative", "pool:\n  max_connections: -1\n", nil, "pool.max_connections"},
		{"bad url", "upstream:\n  url: ftp://x\n", nil, "upstream.url"},
		{"url with credentials", "upstream:\n  url: http://u:" + secret + "@x\n", nil, "upstream.url"},
		{"bad log level", "log:\n  level: loud\n", nil, "log.level"},
		{"yaml syntax", "pool: [\n", nil, "config file"},
		{"env wrong type", "", []string{"VEGA_POOL_MAX_CONNECTIONS=many"}, "max_connections"},
		{"public admin without keys", "", []string{"VEGA_ADMIN_LISTEN=0.0.0.0:8001"}, "admin.listen"},
		{"empty key", "auth:\n  api_keys: [\"\"]\n", nil, "auth.api_keys"},
		{"duplicate key", "auth:\n  api_keys: [\"" + secret + "\", \"" + secret + "\"]\n", nil, "auth.api_keys"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := ""
			if tc.yaml != "" {
				path = filepath.Join(t.TempDir(), "config.yaml")
				if err := os.WriteFile(path, []byte(tc.yaml), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			_, err := loadConfig(path, nil, tc.env)
			if err == nil {
				t.Fatalf("loadConfig accepted it")
			}
			if !strings.Contains(err.Error(), tc.wantKey) {
				t.Fatalf("error %q does not name %q", err, tc.wantKey)
			}
			if strings.Contains(err.Error(), secret) {
				t.Fatalf("error prints the secret: %q", err)
			}
		})
	}
	t.Run("missing file", func(t *testing.T) {
		if _, err := loadConfig(filepath.Join(t.TempDir(), "nope.yaml"), nil, nil); err == nil {
			t.Fatal("accepted a missing file")
		}
	})
}

func TestLoadConfigLayers(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.yaml")
	os.WriteFile(path, []byte("pool:\n  max_connections: 7\n  max_wait: 2s\nupstream:\n  default_model: qwen\n"), 0o600)
	c, err := loadConfig(path, map[string]any{"log.level": "debug"}, []string{
		"VEGA_POOL_MAX_CONNECTIONS=9", "VEGA_AUTH_API_KEYS=k1-aaaaaaaaaaaaaaaa, k2-bbbbbbbbbbbbbbbb", "VEGA_UNRELATED=1",
	})
	if err != nil {
		t.Fatal(err)
	}
	if c.Pool.MaxConnections != 9 || c.Pool.MaxWait != 2*time.Second || c.Upstream.DefaultModel != "qwen" ||
		c.Log.Level != "debug" || len(c.Auth.APIKeys) != 2 || c.Auth.APIKeys[1] != "k2-bbbbbbbbbbbbbbbb" {
		t.Fatalf("config %+v", c)
	}
	d, err := loadConfig("", nil, nil)
	if err != nil || d.Gateway.Listen != ":8000" || d.Admin.Listen != "127.0.0.1:8001" || d.Pool.MaxConnections != 100 ||
		d.Upstream.URL != "http://127.0.0.1:11434" || d.Upstream.FirstByteTimeout != 5*time.Minute {
		t.Fatalf("defaults %+v %v", d, err)
	}
}

// The repo's config.yaml must list every key at its default.
func TestRepoConfigIsDefaults(t *testing.T) {
	fromFile, err := loadConfig("config.yaml", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	fromDefaults, err := loadConfig(filepath.Join(t.TempDir(), "none.yaml"), nil, nil)
	_ = fromDefaults
	if err == nil {
		t.Fatal("missing file accepted")
	}
	var empty string
	d, _ := loadConfig(empty, nil, nil)
	a, _ := json.Marshal(fromFile)
	b, _ := json.Marshal(d)
	if string(a) != string(b) {
		t.Fatalf("config.yaml differs from the built-in defaults:\n%s\n%s", a, b)
	}
}

func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// gatewayProcess is vega-gateway running as a subprocess.
type gatewayProcess struct {
	cmd         *exec.Cmd
	data, admin string
	logDir      string
	stdout      *lockedBuffer
	exited      chan error
}

func startProcess(t *testing.T, args []string, env ...string) *gatewayProcess {
	t.Helper()
	p := &gatewayProcess{data: freeAddr(t), admin: freeAddr(t), logDir: filepath.Join(t.TempDir(), "logs"), stdout: &lockedBuffer{}, exited: make(chan error, 1)}
	p.cmd = exec.Command(os.Args[0], args...)
	p.cmd.Dir = t.TempDir() // no config.yaml there: defaults + env
	p.cmd.Env = append(os.Environ(), "VEGA_TEST_RUN_MAIN=1",
		"VEGA_GATEWAY_LISTEN="+p.data, "VEGA_ADMIN_LISTEN="+p.admin, "VEGA_LOG_DIR="+p.logDir,
		"VEGA_UPSTREAM_HEALTH_INTERVAL=100ms")
	p.cmd.Env = append(p.cmd.Env, env...)
	p.cmd.Stdout = p.stdout
	p.cmd.Stderr = p.stdout
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.exited <- p.cmd.Wait() }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.exited
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if r, err := http.Get("http://" + p.data + "/healthz"); err == nil {
			r.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("gateway did not start; output:\n%s", p.stdout.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return p
}

func (p *gatewayProcess) stop(t *testing.T) {
	t.Helper()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.exited:
		p.exited <- err
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v; output:\n%s", err, p.stdout.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no exit within 10s of SIGTERM")
	}
}

func get(t *testing.T, url string, hdr map[string]string) (int, http.Header, []byte) {
	t.Helper()
	return send(t, "GET", url, "", hdr)
}

func post(t *testing.T, url, body string, hdr map[string]string) (int, http.Header, []byte) {
	t.Helper()
	return send(t, "POST", url, body, hdr)
}

func send(t *testing.T, method, url, body string, hdr map[string]string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}

// TestServeDemo is the README's quick start: serve --demo, the curl lines,
// the log grep, then SIGTERM.
func TestServeDemo(t *testing.T) {
	const key = "demo-key-0123456789abcdef0123456789"
	p := startProcess(t, []string{"serve", "--demo"}, "VEGA_AUTH_API_KEYS="+key, "VEGA_LOG_LEVEL=debug")
	auth := map[string]string{"X-API-Key": key}

	st, h, body := post(t, "http://"+p.data+"/chat", `{"prompt":"test"}`, map[string]string{"X-API-Key": key, "X-Correlation-ID": "debug-issue-42"})
	if st != 200 || h.Get("X-Correlation-ID") != "debug-issue-42" || !strings.Contains(string(body), `"response"`) {
		t.Fatalf("/chat: %d %s", st, body)
	}
	if st, _, _ := post(t, "http://"+p.data+"/chat", `{"prompt":"test"}`, nil); st != 401 {
		t.Fatalf("/chat without key: %d", st)
	}
	// The demo is a fleet of three fakes: the /chat went to one of them,
	// each pool has its one client.
	st, _, body = get(t, "http://"+p.admin+"/admin/resources/pools", auth)
	var pools struct {
		Upstream string `json:"upstream"`
		Pools    []struct {
			Name       string `json:"name"`
			UsageStats struct {
				ClientsCreated int `json:"clients_created"`
				RequestsMade   int `json:"requests_made"`
			} `json:"usage_stats"`
		} `json:"pools"`
	}
	if st != 200 || json.Unmarshal(body, &pools) != nil || len(pools.Pools) != len(demoBackends) || pools.Upstream == "" {
		t.Fatalf("pools: %d %s", st, body)
	}
	requests := 0
	for i, b := range pools.Pools {
		if b.Name != demoBackends[i].name || b.UsageStats.ClientsCreated != 1 {
			t.Fatalf("pools[%d]: name %q, clients_created %d; want %q, 1", i, b.Name, b.UsageStats.ClientsCreated, demoBackends[i].name)
		}
		requests += b.UsageStats.RequestsMade
	}
	if requests != 1 {
		t.Fatalf("requests_made over the pools = %d, want 1: %s", requests, body)
	}
	if st, _, _ := get(t, "http://"+p.data+"/admin/resources/pools", auth); st != 404 {
		t.Fatalf("admin route on the data port: %d", st)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if st, _, _ := get(t, "http://"+p.admin+"/readyz", nil); st == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("/readyz never 200 in demo mode")
		}
		time.Sleep(20 * time.Millisecond)
	}
	p.stop(t)

	// grep debug-issue-42 logs/*.log: the request's whole life.
	f, err := os.Open(filepath.Join(p.logDir, "gateway.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var msgs []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if strings.Contains(sc.Text(), "debug-issue-42") {
			var m map[string]any
			if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
				t.Fatalf("log line not JSON: %s", sc.Text())
			}
			msgs = append(msgs, m["message"].(string))
		}
	}
	want := []string{"request received", "upstream call started", "request"}
	for _, w := range want {
		if !contains(msgs, w) {
			t.Fatalf("log lines for the ID: %q, missing %q", msgs, w)
		}
	}
	if strings.Contains(p.stdout.String(), key) {
		t.Fatal("API key printed")
	}
	logBytes, _ := os.ReadFile(filepath.Join(p.logDir, "gateway.log"))
	if strings.Contains(string(logBytes), key) {
		t.Fatal("API key logged")
	}
}

// TestServeWithoutOllama: the gateway starts and serves with no upstream,
// says so, and answers 502 (then 503 once health checks mark it down).
func TestServeWithoutOllama(t *testing.T) {
	p := startProcess(t, []string{"serve"}, "VEGA_UPSTREAM_URL=http://"+freeAddr(t))
	if st, _, _ := get(t, "http://"+p.admin+"/readyz", nil); st != 503 {
		t.Fatalf("/readyz = %d with no upstream", st)
	}
	st, _, body := post(t, "http://"+p.data+"/chat", `{"prompt":"test"}`, nil)
	if st != 502 && st != 503 {
		t.Fatalf("/chat = %d %s", st, body)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		st, h, body := post(t, "http://"+p.data+"/api/chat", `{"model":"llama3.2"}`, nil)
		if st == 503 && strings.Contains(string(body), "upstream_unhealthy") && h.Get("Retry-After") != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("never failed fast: %d %s", st, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The log line may trail the state it reports by a batch interval.
	for !strings.Contains(p.stdout.String(), "upstream") || !strings.Contains(p.stdout.String(), "not reachable") {
		if time.Now().After(deadline) {
			t.Fatalf("logs do not say the upstream is unreachable:\n%s", p.stdout.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	p.stop(t)
}

// TestUnwritableLogDir: a log dir that cannot be created is a warning,
// not a failure (read-only containers).
func TestUnwritableLogDir(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, nil, 0o600)
	p := startProcess(t, []string{"serve", "--demo"}, "VEGA_LOG_DIR="+filepath.Join(file, "logs"))
	if !strings.Contains(p.stdout.String(), "warning: log.dir") {
		t.Fatalf("no warning:\n%s", p.stdout.String())
	}
	p.stop(t)
}

func TestHealthcheckCommand(t *testing.T) {
	p := startProcess(t, []string{"serve", "--demo"})
	if code := healthcheckCommand([]string{"--url", "http://" + p.data + "/healthz"}, io.Discard); code != 0 {
		t.Fatalf("healthcheck against a live gateway: exit %d", code)
	}
	if code := healthcheckCommand([]string{"--url", "http://" + freeAddr(t) + "/healthz"}, io.Discard); code != 1 {
		t.Fatalf("healthcheck against a closed port: exit %d", code)
	}
	p.stop(t)
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func TestScopedKeysFromEnv(t *testing.T) {
	c, err := loadConfig("", nil, []string{`VEGA_AUTH_KEYS=[{"name":"ops","key":"ops-key-0123456789abcdef0123456789","scopes":["models:manage"]}]`})
	if err != nil || len(c.Auth.Keys) != 1 || c.Auth.Keys[0].Name != "ops" || c.Auth.Keys[0].Scopes[0] != "models:manage" {
		t.Fatalf("%+v %v", c.Auth.Keys, err)
	}
	_, err = loadConfig("", nil, []string{`VEGA_AUTH_KEYS=[{"name":"ops","key":"ops-key-secret-value","scope":["x"]}]`})
	if err == nil || strings.Contains(err.Error(), "ops-key-secret-value") {
		t.Fatalf("bad VEGA_AUTH_KEYS: %v", err)
	}
}

// TestOllamaKeysFromEnv: VEGA_AUTH_OLLAMA_KEYS is a JSON list like
// VEGA_AUTH_KEYS, auth.ollama_max_skew a duration with its default, and a
// bad public key stops start-up naming auth.ollama_keys.
func TestOllamaKeysFromEnv(t *testing.T) {
	const pub = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFQSgwOrYt9JCHRRmwsxKB5Y3Jd1MNrIb4zIOO6PJnx0 me@laptop"
	c, err := loadConfig("", nil, []string{`VEGA_AUTH_OLLAMA_KEYS=[{"name":"laptop","public_key":"` + pub + `","scopes":["inference"]}]`})
	if err != nil || len(c.Auth.OllamaKeys) != 1 || c.Auth.OllamaKeys[0].Name != "laptop" || c.Auth.OllamaKeys[0].PublicKey != pub ||
		c.Auth.OllamaMaxSkew != access.DefaultOllamaMaxSkew {
		t.Fatalf("%+v %v", c.Auth, err)
	}
	c, err = loadConfig("", nil, []string{"VEGA_AUTH_OLLAMA_MAX_SKEW=90s"})
	if err != nil || c.Auth.OllamaMaxSkew != 90*time.Second {
		t.Fatalf("skew %v %v", c.Auth.OllamaMaxSkew, err)
	}
	for _, env := range []string{`VEGA_AUTH_OLLAMA_KEYS=[{"name":"laptop","key":"x"}]`, "VEGA_AUTH_OLLAMA_MAX_SKEW=soon"} {
		if _, err := loadConfig("", nil, []string{env}); err == nil || !strings.Contains(err.Error(), "auth.ollama_") {
			t.Fatalf("%s: %v", env, err)
		}
	}
	if _, err := access.New(access.Config{OllamaKeys: []access.OllamaKeyConfig{{Name: "laptop", PublicKey: "ssh-ed25519 AAAA"}}}); err == nil ||
		!strings.Contains(err.Error(), "ollama_keys[0] (laptop): public_key") {
		t.Fatalf("bad public key: %v", err)
	}
}

// TestCORSFromEnv: VEGA_GATEWAY_CORS_ALLOWED_ORIGINS is comma-separated,
// the other gateway.cors keys have their defaults, and a bad origin stops
// start-up naming the key.
func TestCORSFromEnv(t *testing.T) {
	c, err := loadConfig("", nil, []string{"VEGA_GATEWAY_CORS_ALLOWED_ORIGINS=https://app.example, http://localhost:5173", "VEGA_GATEWAY_CORS_MAX_AGE=10m"})
	if err != nil || strings.Join(c.Gateway.CORS.AllowedOrigins, "|") != "https://app.example|http://localhost:5173" ||
		c.Gateway.CORS.MaxAge != 10*time.Minute {
		t.Fatalf("%+v %v", c.Gateway.CORS, err)
	}
	cmd := exec.Command(os.Args[0], "serve")
	cmd.Dir = t.TempDir()
	cmd.Env = append(os.Environ(), "VEGA_TEST_RUN_MAIN=1", "VEGA_GATEWAY_LISTEN="+freeAddr(t), "VEGA_ADMIN_LISTEN="+freeAddr(t), "VEGA_LOG_DIR=",
		"VEGA_GATEWAY_CORS_ALLOWED_ORIGINS=https://app.example/path")
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "gateway.cors.allowed_origins") {
		t.Fatalf("bad origin: err=%v output=%s", err, out)
	}
}

// TestPortInUse: start-up fails with a message naming the key and binds
// nothing (the admin port stays free).
func TestPortInUse(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	admin := freeAddr(t)
	cmd := exec.Command(os.Args[0], "serve")
	cmd.Dir = t.TempDir()
	cmd.Env = append(os.Environ(), "VEGA_TEST_RUN_MAIN=1", "VEGA_GATEWAY_LISTEN="+busy.Addr().String(), "VEGA_ADMIN_LISTEN="+admin, "VEGA_LOG_DIR=")
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "gateway.listen") {
		t.Fatalf("err=%v output=%s", err, out)
	}
	ln, err := net.Listen("tcp", admin)
	if err != nil {
		t.Fatalf("admin port left bound: %v", err)
	}
	ln.Close()
}

func TestDefaultHealthURL(t *testing.T) {
	for in, want := range map[string]string{
		"": "http://127.0.0.1:8000/healthz", ":9000": "http://127.0.0.1:9000/healthz",
		"0.0.0.0:8080": "http://127.0.0.1:8080/healthz", "[::]:7000": "http://127.0.0.1:7000/healthz",
	} {
		if got := defaultHealthURL(in, false); got != want {
			t.Errorf("%q: %q, want %q", in, got, want)
		}
	}
	if got, want := defaultHealthURL(":8443", true), "https://127.0.0.1:8443/healthz"; got != want {
		t.Errorf("with TLS: %q, want %q", got, want)
	}
}

// openStream starts a streaming /api/chat and returns its reader after the
// first line arrived. A "fault:" model is sent as the fake's fault header on
// llama3.2: a fleet routes by the models its backends list, and fault
// models are never listed.
func openStream(t *testing.T, addr, model string) (*bufio.Reader, func()) {
	t.Helper()
	mode, fault := strings.CutPrefix(model, ollamatest.FaultModelPrefix)
	if fault {
		model = "llama3.2"
	}
	req, err := http.NewRequest("POST", "http://"+addr+"/api/chat",
		strings.NewReader(`{"model":"`+model+`","messages":[{"role":"user","content":"hi"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if fault {
		req.Header.Set(ollamatest.FaultHeader, mode)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(resp.Body)
	if _, err := r.ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	return r, func() { resp.Body.Close() }
}

// TestSIGTERMDrains: readiness drops at once, a short stream finishes, a
// long one ends with shutting_down at the drain deadline, exit 0.
func TestSIGTERMDrains(t *testing.T) {
	p := startProcess(t, []string{"serve", "--demo"}, "VEGA_GATEWAY_DRAIN_TIMEOUT=700ms")
	long, closeLong := openStream(t, p.data, "fault:infinite")
	defer closeLong()
	short, closeShort := openStream(t, p.data, "llama3.2")
	defer closeShort()
	start := time.Now()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	deadline := time.Now().Add(time.Second)
	for {
		st, _, _ := get(t, "http://"+p.admin+"/readyz", nil)
		if st == 503 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("/readyz not 503 after SIGTERM")
		}
		time.Sleep(10 * time.Millisecond)
	}
	rest, _ := io.ReadAll(short)
	if !strings.Contains(string(rest), `"done":true`) {
		t.Fatalf("short stream cut by the drain: %q", rest)
	}
	rest, _ = io.ReadAll(long)
	if !strings.Contains(string(rest), `"code":"shutting_down"`) || strings.Contains(string(rest), `"done":true`) {
		t.Fatalf("long stream did not end with shutting_down: ...%q", tailOf(string(rest), 200))
	}
	select {
	case err := <-p.exited:
		p.exited <- err
		if err != nil {
			t.Fatalf("exit: %v\n%s", err, p.stdout.String())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no exit after the drain")
	}
	if took := time.Since(start); took > 4*time.Second {
		t.Fatalf("drain took %s", took)
	}
	if _, err := net.DialTimeout("tcp", p.data, 200*time.Millisecond); err == nil {
		t.Fatal("data port still accepting after exit")
	}
	// One access line per request: the two streams among them.
	lines := 0
	for _, l := range strings.Split(p.stdout.String(), "\n") {
		if strings.Contains(l, `"message":"request"`) && strings.Contains(l, `"route":"/api/chat"`) {
			lines++
		}
	}
	if lines != 2 {
		t.Fatalf("%d access lines for the 2 streams:\n%s", lines, p.stdout.String())
	}
}

// TestSecondSignalExitsAtOnce.
func TestSecondSignalExitsAtOnce(t *testing.T) {
	p := startProcess(t, []string{"serve", "--demo"}, "VEGA_GATEWAY_DRAIN_TIMEOUT=30s")
	_, closeLong := openStream(t, p.data, "fault:infinite")
	defer closeLong()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	time.Sleep(200 * time.Millisecond)
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.exited:
		p.exited <- err
		if err == nil {
			t.Fatal("exit 0 after a forced stop")
		}
	case <-time.After(3 * time.Second):
		t.Fatal("second signal did not exit at once")
	}
}

func tailOf(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// TestLogSinkFailsAtRuntime: gateway.log is a device that refuses every
// write (Linux's /dev/full); requests are unaffected and stdout still logs.
func TestLogSinkFailsAtRuntime(t *testing.T) {
	if _, err := os.Stat("/dev/full"); err != nil {
		t.Skip("no /dev/full")
	}
	dir := t.TempDir()
	if err := os.Symlink("/dev/full", filepath.Join(dir, "gateway.log")); err != nil {
		t.Fatal(err)
	}
	p := startProcess(t, []string{"serve", "--demo"}, "VEGA_LOG_DIR="+dir)
	for i := 0; i < 20; i++ {
		if st, _, body := post(t, "http://"+p.data+"/chat", `{"prompt":"hi"}`, map[string]string{"X-Correlation-ID": "full-disk-" + strings.Repeat("x", i%3)}); st != 200 {
			t.Fatalf("request %d: %d %s", i, st, body)
		}
	}
	p.stop(t)
	if !strings.Contains(p.stdout.String(), "full-disk-") {
		t.Fatal("stdout lost the access lines when the log file failed")
	}
}
