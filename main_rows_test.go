package main

// Lifecycle and operations rows of RELIABILITY.md §2.5 and §3.6, run
// against the built binary (the test binary re-executed as vega-gateway).

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// runToExit runs vega-gateway with args until it exits (at most 10 s) and
// returns its combined output and exit error.
func runToExit(t *testing.T, args []string, env ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], args...)
	cmd.Dir = t.TempDir()
	cmd.Env = append(append(os.Environ(), "VEGA_TEST_RUN_MAIN=1", "VEGA_LOG_DIR="), env...)
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("still running after 10 s; output:\n%s", out)
	}
	return string(out), err
}

// wantFree fails if addr is bound.
func wantFree(t *testing.T, addr string) {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("%s left bound: %v", addr, err)
	}
	ln.Close()
}

// TestConfigFileUnusable is F-38: a config file that is missing, a
// directory or unreadable stops start-up with a non-zero exit, a message
// naming the file, and no port bound.
func TestConfigFileUnusable(t *testing.T) {
	dir := t.TempDir()
	loop := filepath.Join(dir, "loop.yaml")
	if err := os.Symlink(loop, loop); err != nil {
		t.Fatal(err)
	}
	unreadable := filepath.Join(dir, "unreadable.yaml")
	if err := os.WriteFile(unreadable, []byte("pool:\n  max_connections: 5\n"), 0o000); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, path string }{
		{"missing", filepath.Join(dir, "nope.yaml")},
		{"a directory", dir},
		{"a symlink loop", loop},
		{"unreadable", unreadable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.name == "unreadable" {
				if f, err := os.Open(tc.path); err == nil {
					f.Close()
					t.Skip("running as root: permissions do not make a file unreadable")
				}
			}
			data, admin := freeAddr(t), freeAddr(t)
			out, err := runToExit(t, []string{"serve", "--config", tc.path}, "VEGA_GATEWAY_LISTEN="+data, "VEGA_ADMIN_LISTEN="+admin)
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() == 0 {
				t.Fatalf("exit: %v; output:\n%s", err, out)
			}
			if !strings.Contains(out, "config file "+tc.path) || strings.Count(strings.TrimSpace(out), "\n") != 0 {
				t.Fatalf("want one line naming %s, got:\n%s", tc.path, out)
			}
			wantFree(t, data)
			wantFree(t, admin)
		})
	}
}

// TestAdminOnDataPort is F-40: the admin listener on the data listener's
// address is refused at start, by the config check when the two strings
// are equal and by the bind when they differ but collide.
func TestAdminOnDataPort(t *testing.T) {
	addr := freeAddr(t)
	_, port, _ := net.SplitHostPort(addr)
	for _, tc := range []struct{ name, data, admin, want string }{
		{"same address", addr, addr, "admin.listen: must differ from gateway.listen"},
		{"wildcard and loopback on one port", ":" + port, addr, "admin.listen"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := runToExit(t, []string{"serve"}, "VEGA_GATEWAY_LISTEN="+tc.data, "VEGA_ADMIN_LISTEN="+tc.admin)
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() == 0 || !strings.Contains(out, tc.want) {
				t.Fatalf("exit %v, want a non-zero exit naming %q; output:\n%s", err, tc.want, out)
			}
			wantFree(t, addr)
		})
	}
}

// keepAlive opens a connection, completes one request on it and leaves it
// idle, open for keep-alive.
func keepAlive(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Close {
		t.Fatalf("keep-alive request: %d close=%v", resp.StatusCode, resp.Close)
	}
	return c
}

// TestSIGTERMClosesIdleConns is F-33: on SIGTERM the data listener stops
// accepting and idle keep-alive connections are closed at once, while a
// stream still drains; then the process exits 0.
func TestSIGTERMClosesIdleConns(t *testing.T) {
	p := startProcess(t, []string{"serve", "--demo"}, "VEGA_GATEWAY_DRAIN_TIMEOUT=2s")
	long, closeLong := openStream(t, p.data, "fault:infinite")
	defer closeLong()
	idle := []net.Conn{keepAlive(t, p.data), keepAlive(t, p.data), keepAlive(t, p.data)}
	start := time.Now()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	for i, c := range idle {
		_ = c.SetReadDeadline(time.Now().Add(time.Second))
		n, err := c.Read(make([]byte, 1))
		if n != 0 || !(errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)) {
			t.Fatalf("idle connection %d after SIGTERM: n=%d err=%v, want closed within 1 s", i, n, err)
		}
	}
	deadline := time.Now().Add(time.Second)
	for {
		c, err := net.DialTimeout("tcp", p.data, 100*time.Millisecond)
		if err != nil {
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("data listener still accepting 1 s after SIGTERM")
		}
		time.Sleep(10 * time.Millisecond)
	}
	select {
	case err := <-p.exited:
		t.Fatalf("exited (%v) before the drain: listener and idle connections were not closed 'at once' but at exit", err)
	default:
	}
	if st, _, _ := get(t, "http://"+p.admin+"/readyz", nil); st != 503 {
		t.Fatalf("/readyz during the drain: %d", st)
	}
	t.Logf("idle connections and listener closed %s after SIGTERM, stream still draining", time.Since(start))
	rest, _ := io.ReadAll(long)
	if !strings.Contains(string(rest), `"code":"shutting_down"`) {
		t.Fatalf("stream: ...%q", tailOf(string(rest), 200))
	}
	select {
	case err := <-p.exited:
		p.exited <- err
		if err != nil {
			t.Fatalf("exit: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no exit after the drain")
	}
}

// metricValue scrapes name (no labels) from the admin listener.
func metricValue(t *testing.T, admin, name string) float64 {
	t.Helper()
	st, _, body := get(t, "http://"+admin+"/metrics", nil)
	if st != 200 {
		t.Fatalf("/metrics: %d", st)
	}
	for _, l := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(l, name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return f
		}
	}
	t.Fatalf("/metrics has no %s", name)
	return 0
}

// TestLogDropsCounted is F-42's counter: gateway.log fails on every write
// (Linux's /dev/full) and the log queue is tiny, so a burst overflows it;
// requests are unaffected and the dropped lines show on /metrics as
// vega_log_dropped_total. (Write errors themselves are not counted: there
// is no log_write_errors_total.)
func TestLogDropsCounted(t *testing.T) {
	if _, err := os.Stat("/dev/full"); err != nil {
		t.Skip("no /dev/full")
	}
	dir := t.TempDir()
	if err := os.Symlink("/dev/full", filepath.Join(dir, "gateway.log")); err != nil {
		t.Fatal(err)
	}
	p := startProcess(t, []string{"serve", "--demo"}, "VEGA_LOG_DIR="+dir, "VEGA_LOG_BUFFER_LINES=2", "VEGA_LOG_LEVEL=debug")
	if got := metricValue(t, p.admin, "vega_log_dropped_total"); got < 0 {
		t.Fatalf("vega_log_dropped_total = %v", got)
	}
	const n, workers = 200, 20
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += workers {
				resp, err := http.Post("http://"+p.data+"/api/chat", "application/json",
					strings.NewReader(`{"model":"llama3.2","stream":false,"messages":[{"role":"user","content":"hi"}]}`))
				if err != nil {
					errs <- err
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					errs <- fmt.Errorf("request %d: %d", i, resp.StatusCode)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if got := metricValue(t, p.admin, "vega_log_dropped_total"); got <= 0 {
		t.Fatalf("vega_log_dropped_total = %v after %d requests through a 2-line log queue", got, n)
	}
	// Every line the file refused is counted, and stderr says so once (a
	// minute), while the lines still reach stdout.
	if got := metricValue(t, p.admin, "vega_log_write_errors_total"); got <= 0 {
		t.Fatalf("vega_log_write_errors_total = %v with gateway.log on /dev/full", got)
	}
	if c := strings.Count(p.stdout.String(), "warning: writing gateway.log failed"); c != 1 {
		t.Fatalf("%d write-failure warnings, want 1 (rate-limited)", c)
	}
	if !strings.Contains(p.stdout.String(), `"message":"request"`) {
		t.Fatal("no access line reached stdout")
	}
	p.stop(t)
}

// procCPU returns the user+system CPU time of a process, in clock ticks.
func procCPU(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return ut + st
}

// TestFDExhaustion is F-26: with its file descriptors capped below the
// connections offered, the gateway does not spin on accept errors, logs
// them rate-limited, keeps its open stream going and accepts again once
// connections close.
func TestFDExhaustion(t *testing.T) {
	prlimit, err := exec.LookPath("prlimit")
	if err != nil {
		t.Skip("prlimit not installed: cannot cap a running process's file descriptors")
	}
	p := startProcess(t, []string{"serve", "--demo"})
	pid := p.cmd.Process.Pid
	// A stream of 150 tokens × 20 ms runs through the flood.
	req, _ := http.NewRequest("POST", "http://"+p.data+"/api/chat", strings.NewReader(`{"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}`))
	req.Header.Set("X-Ollamatest-Tokens", "150")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	stream := bufio.NewReader(resp.Body)
	if _, err := stream.ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(prlimit, "--pid", strconv.Itoa(pid), "--nofile=64:64").CombinedOutput(); err != nil {
		t.Skipf("prlimit --pid: %v %s", err, out)
	}
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if len(fds) >= 60 {
		t.Skipf("the gateway already holds %d fds", len(fds))
	}
	const offered = 100
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range offered {
		c, err := net.DialTimeout("tcp", p.data, time.Second)
		if err != nil {
			t.Fatalf("dial: %v", err) // the kernel's backlog takes them
		}
		conns = append(conns, c)
	}
	floodStart := time.Now()
	deadline := time.Now().Add(3 * time.Second)
	for !strings.Contains(p.stdout.String(), "cannot accept connections") {
		if time.Now().After(deadline) {
			t.Fatalf("no accept warning with %d fds offered %d connections; output:\n%s", len(fds), offered, tailOf(p.stdout.String(), 2000))
		}
		time.Sleep(10 * time.Millisecond)
	}
	before := procCPU(t, pid)
	time.Sleep(time.Second)
	if used := procCPU(t, pid) - before; used > 50 { // ticks of 10 ms: a spinning accept loop burns about 100
		t.Fatalf("%d ticks of CPU in 1 s while out of file descriptors: accept loop spins", used)
	}
	select {
	case err := <-p.exited:
		t.Fatalf("the gateway exited when it ran out of file descriptors: %v\n%s", err, tailOf(p.stdout.String(), 2000))
	default:
	}
	rest, err := io.ReadAll(stream)
	if err != nil || !strings.Contains(string(rest), `"done":true`) {
		t.Fatalf("the open stream did not complete: %v ...%q", err, tailOf(string(rest), 200))
	}
	for _, c := range conns {
		c.Close()
	}
	conns = nil
	deadline = time.Now().Add(5 * time.Second)
	for {
		c := &http.Client{Timeout: 500 * time.Millisecond}
		if r, err := c.Get("http://" + p.data + "/healthz"); err == nil {
			r.Body.Close()
			if r.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("not serving again 5 s after the connections closed")
		}
		time.Sleep(50 * time.Millisecond)
	}
	warnings := strings.Count(p.stdout.String(), "cannot accept connections")
	if limit := int(time.Since(floodStart)/time.Second) + 2; warnings > limit {
		t.Fatalf("%d accept warnings in %s: not rate-limited", warnings, time.Since(floodStart))
	}
	p.stop(t)
}

// TestAdminHoldsNoSecrets is B-74: with a canary data key, admin key and
// prompt in play, no admin response (JSON routes, page, metrics, probes)
// and no log line carries any of them, in plain, base64 or URL-encoded
// form; and no pprof or expvar route exists on either listener.
func TestAdminHoldsNoSecrets(t *testing.T) {
	const (
		key      = "canary-data-key-4c1f9a7e2b6d8035c1f9a7e2b6d80"
		adminKey = "canary-admin-key-9e2b6d8035c1f4a7e2b6d8035c1f"
		prompt   = "canary-prompt-7d3e1b9c5a"
	)
	p := startProcess(t, []string{"serve", "--demo"}, "VEGA_AUTH_API_KEYS="+key, "VEGA_AUTH_ADMIN_API_KEYS="+adminKey)
	auth := map[string]string{"X-API-Key": key}
	post(t, "http://"+p.data+"/chat", `{"prompt":"`+prompt+`"}`, auth)
	post(t, "http://"+p.data+"/api/chat", `{"model":"llama3.2","messages":[{"role":"user","content":"`+prompt+`"}]}`, auth)
	post(t, "http://"+p.data+"/api/chat", `{"model":"fault:fail_status=500","messages":[{"role":"user","content":"`+prompt+`"}]}`, auth)
	post(t, "http://"+p.data+"/chat", `{"prompt":"`+prompt+`"}`, map[string]string{"X-API-Key": key + "x"})
	get(t, "http://"+p.admin+"/admin/resources/pools", map[string]string{"X-API-Key": adminKey + "x"})

	var seen strings.Builder
	adminAuth := map[string]string{"X-API-Key": adminKey}
	for _, path := range []string{"/admin/resources/pools", "/admin/resources/stats", "/metrics", "/admin/", "/admin/app.js", "/admin/app.css", "/readyz", "/healthz"} {
		st, h, body := get(t, "http://"+p.admin+path, adminAuth)
		if st != 200 && !(path == "/readyz" && st == 503) {
			t.Fatalf("admin %s: %d", path, st)
		}
		seen.WriteString(path + "\n")
		for k, v := range h {
			seen.WriteString(k + ": " + strings.Join(v, ",") + "\n")
		}
		seen.Write(body)
	}
	for _, path := range []string{"/debug/pprof/", "/debug/pprof/heap", "/debug/pprof/goroutine?debug=2", "/debug/pprof/cmdline", "/debug/vars"} {
		for _, base := range []string{p.admin, p.data} {
			st, _, body := get(t, "http://"+base+path, map[string]string{"X-API-Key": adminKey})
			if st != 404 && st != 401 || strings.Contains(string(body), "profile") || strings.Contains(string(body), "memstats") {
				t.Fatalf("%s%s: %d %.200s", base, path, st, body)
			}
			seen.Write(body)
		}
	}
	p.stop(t)
	logFile, _ := os.ReadFile(filepath.Join(p.logDir, "gateway.log"))
	if !strings.Contains(string(logFile), `"route":"/chat"`) {
		t.Fatal("gateway.log holds no access line: the grep below would prove nothing")
	}
	all := seen.String() + p.stdout.String() + string(logFile)
	for _, s := range []string{key, adminKey, prompt} {
		for _, form := range []string{s, base64.StdEncoding.EncodeToString([]byte(s)), url.QueryEscape(s), s[:24]} {
			if i := strings.Index(all, form); i >= 0 {
				t.Fatalf("secret %.12q… found near %q", s, all[max(0, i-80):i])
			}
		}
	}
}

// TestSIGHUPReloadsKeys is F-39 through the binary: SIGHUP re-reads
// auth.keys_file; a bad file is refused (logged, counted in
// vega_config_reload_failures_total) and the previous keys keep working;
// a good one takes effect at once.
func TestSIGHUPReloadsKeys(t *testing.T) {
	const oldKey, newKey = "sighup-old-key-0123456789abcdef0123", "sighup-new-key-0123456789abcdef0123"
	keysFile := filepath.Join(t.TempDir(), "keys.yaml")
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(keysFile, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("- name: old\n  key: " + oldKey + "\n")
	p := startProcess(t, []string{"serve", "--demo"}, "VEGA_AUTH_KEYS_FILE="+keysFile)
	status := func(key string) int {
		t.Helper()
		st, _, _ := get(t, "http://"+p.data+"/api/tags", map[string]string{"X-API-Key": key})
		return st
	}
	if status(oldKey) != 200 || status(newKey) != 401 {
		t.Fatal("keys at start: want the old key only")
	}
	hup := func() {
		t.Helper()
		if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
	}

	write("- name: new\n  key: [not, a, key\n")
	hup()
	deadline := time.Now().Add(3 * time.Second)
	for metricValue(t, p.admin, "vega_config_reload_failures_total") != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("vega_config_reload_failures_total never reached 1; output:\n%s", tailOf(p.stdout.String(), 2000))
		}
		time.Sleep(20 * time.Millisecond)
	}
	if status(oldKey) != 200 || status(newKey) != 401 {
		t.Fatal("after a bad reload: the old key must still be the only one")
	}
	// The metric moves before the log line is out: lines leave through the
	// log's batch writer (up to trace.WriteInterval later), then a pipe.
	for !strings.Contains(p.stdout.String(), "key reload failed; the previous keys stay in force") {
		if time.Now().After(deadline) {
			t.Fatalf("the failed reload was not logged; output:\n%s", tailOf(p.stdout.String(), 2000))
		}
		time.Sleep(10 * time.Millisecond)
	}

	write("- name: new\n  key: " + newKey + "\n")
	hup()
	deadline = time.Now().Add(3 * time.Second)
	for status(newKey) != 200 {
		if time.Now().After(deadline) {
			t.Fatal("the new key never took effect")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if status(oldKey) != 401 {
		t.Fatal("the old key still works after a reload that dropped it")
	}
	if got := metricValue(t, p.admin, "vega_config_reload_failures_total"); got != 1 {
		t.Fatalf("vega_config_reload_failures_total = %v after a good reload, want still 1", got)
	}
	if strings.Contains(p.stdout.String(), oldKey) || strings.Contains(p.stdout.String(), newKey) {
		t.Fatal("a key reached the log")
	}
	p.stop(t)
}

// TestInvalidConfigExits is F-37 through the binary: a bad setting stops
// start-up at once with a non-zero exit and a message naming the setting,
// never echoes a secret, and binds neither port.
func TestInvalidConfigExits(t *testing.T) {
	const secret = "f37-secret-password-0123456789"
	for _, tc := range []struct {
		name string
		env  []string
		want string
	}{
		{"bad duration", []string{"VEGA_GATEWAY_READ_TIMEOUT=soon"}, "gateway.read_timeout"},
		{"negative bound", []string{"VEGA_POOL_MAX_CONNECTIONS=-1"}, "pool.max_connections"},
		{"credentials in the upstream URL", []string{"VEGA_UPSTREAM_URL=http://admin:" + secret + "@127.0.0.1:11434"}, "upstream.url"},
		{"unknown log level", []string{"VEGA_LOG_LEVEL=loud"}, "log.level"},
		{"bad trusted proxy", []string{"VEGA_GATEWAY_TRUSTED_PROXIES=not-an-address"}, "gateway.trusted_proxies"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data, admin := freeAddr(t), freeAddr(t)
			start := time.Now()
			out, err := runToExit(t, []string{"serve"}, append([]string{"VEGA_GATEWAY_LISTEN=" + data, "VEGA_ADMIN_LISTEN=" + admin}, tc.env...)...)
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() == 0 {
				t.Fatalf("exit %v, want non-zero; output:\n%s", err, out)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("took %v to refuse the config", d)
			}
			if !strings.Contains(out, tc.want) {
				t.Fatalf("output does not name %s:\n%s", tc.want, out)
			}
			if strings.Contains(out, secret) {
				t.Fatalf("the secret is in the output:\n%s", out)
			}
			wantFree(t, data)
			wantFree(t, admin)
		})
	}
}
