package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"image/png"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vega-gateway/vega-gateway/ollamatest"
)

// chromiumPath is Debian's chromium. The test installs nothing: CI runs
// `apt-get install -y chromium` before it; elsewhere the test skips.
const chromiumPath = "/usr/bin/chromium"

// chromiumTimeout bounds one chromium run; it is killed (with its
// renderer and zygote children) after this long.
const chromiumTimeout = 60 * time.Second

// TestBrowserAdminPage loads the admin status page in headless chromium
// after a burst of mixed traffic through the demo fleet and checks that it
// shows the burst: tiles filled in, every chart drawn with several samples,
// the models table, the backends table. It saves a screenshot to
// artifacts/admin-page.png.
func TestBrowserAdminPage(t *testing.T) {
	if _, err := os.Stat(chromiumPath); err != nil {
		t.Skipf("%s not found (%v): install it with `apt-get install -y chromium` to run the browser test", chromiumPath, err)
	}
	p := startProcess(t, []string{"serve", "--demo"}, "VEGA_CACHE_ENABLED=true")
	data, adminURL := "http://"+p.data, "http://"+p.admin

	// The burst: streamed and whole replies, native and OpenAI, one
	// failing request and one client that leaves mid-stream. The faults are
	// asked of the fake by header on an installed model: the fleet routes by
	// the models its backends list.
	chat := func(model string, stream bool) string {
		return `{"model":"` + model + `","messages":[{"role":"user","content":"hi"}],"stream":` + strconv.FormatBool(stream) + `}`
	}
	calls := []struct {
		path, body, fault string
		disconnect        bool
	}{
		{"/api/chat", chat("llama3.2", true), "", false},
		{"/api/chat", chat("llama3.2", true), "", false},
		{"/api/chat", chat("qwen2.5:0.5b", false), "", false},
		{"/api/generate", `{"model":"llama3.2","prompt":"hi","stream":false}`, "", false},
		{"/api/generate", `{"model":"qwen2.5:0.5b","prompt":"hi"}`, "", false},
		{"/v1/chat/completions", `{"model":"llama3.2","messages":[{"role":"user","content":"hi"}],"stream":true}`, "", false},
		{"/v1/chat/completions", `{"model":"qwen2.5:0.5b","messages":[{"role":"user","content":"hi"}]}`, "", false},
		{"/chat", `{"prompt":"hi"}`, "", false},
		{"/api/chat", chat("llama3.2", false), "fail_status=500", false},
		{"/api/chat", chat("llama3.2", true), "infinite", true},
	}
	statuses := make([]int, len(calls))
	var wg sync.WaitGroup
	for i, c := range calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			statuses[i] = browserTestCall(t, data+c.path, c.body, c.fault, c.disconnect)
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	if statuses[8] != 500 {
		t.Fatalf("the failing request answered %d, want 500", statuses[8])
	}
	for i, st := range statuses[:8] {
		if st != 200 {
			t.Fatalf("call %d (%s) answered %d", i, calls[i].path, st)
		}
	}
	// Records land when streams close: wait until the stats count the
	// whole burst and the disconnect.
	var st struct {
		RequestsTotal     int `json:"requests_total"`
		ClientDisconnects int `json:"client_disconnects"`
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, _, body := get(t, adminURL+"/admin/resources/stats", nil)
		if code != 200 || json.Unmarshal(body, &st) != nil {
			t.Fatalf("stats: %d %s", code, body)
		}
		if st.RequestsTotal >= len(calls) && st.ClientDisconnects >= 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stats never counted the burst: %s", body)
		}
		time.Sleep(20 * time.Millisecond)
	}

	// The response cache: one embedding repeated until it is a hit (the
	// model's digest is known once the catalogues are fetched).
	deadline = time.Now().Add(10 * time.Second)
	for {
		_, h, _ := post(t, data+"/api/embed", `{"model":"nomic-embed-text","input":["page"]}`, nil)
		if h.Get("X-Vega-Cache") == "hit" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no cache hit within 10 s (last: %q)", h.Get("X-Vega-Cache"))
		}
		time.Sleep(50 * time.Millisecond)
	}

	// Keep a little streaming traffic going while the page polls, so the
	// rate and pool charts have something to draw.
	bg, stopBG := context.WithCancel(context.Background())
	var bgWG sync.WaitGroup
	for w := range 2 {
		bgWG.Add(1)
		go func() {
			defer bgWG.Done()
			models := []string{"llama3.2", "qwen2.5:0.5b"}
			for bg.Err() == nil {
				req, _ := http.NewRequestWithContext(bg, "POST", data+"/api/chat", strings.NewReader(chat(models[w], true)))
				if resp, err := http.DefaultClient.Do(req); err == nil {
					_, _ = bytes.NewBuffer(nil).ReadFrom(resp.Body)
					resp.Body.Close()
				}
				select {
				case <-bg.Done():
				case <-time.After(50 * time.Millisecond):
				}
			}
		}()
	}
	defer func() { stopBG(); bgWG.Wait() }()

	page := adminURL + "/admin/"
	start := time.Now()
	dom, _ := runChromium(t, "--virtual-time-budget=6000", "--dump-dom", page)
	t.Logf("chromium --dump-dom took %s", time.Since(start).Round(time.Millisecond))
	checkAdminDOM(t, dom, len(calls))

	shot, err := filepath.Abs(filepath.Join("artifacts", "admin-page.png"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(shot), 0o755); err != nil {
		t.Fatal(err)
	}
	_ = os.Remove(shot)
	start = time.Now()
	// Without the compositor flag a screenshot taken under virtual time can
	// catch the page half repainted (stale tiles after a table update).
	runChromium(t, "--virtual-time-budget=6000", "--run-all-compositor-stages-before-draw", "--hide-scrollbars",
		"--screenshot="+shot, "--window-size=1280,900", page)
	t.Logf("chromium --screenshot took %s", time.Since(start).Round(time.Millisecond))
	checkScreenshot(t, shot)
	t.Logf("screenshot: %s", shot)
}

// browserTestCall sends one request, with the fake's fault header if fault
// is set, and reads the answer; with disconnect it leaves after three
// stream lines. It returns the status. The demo backends load a model in
// 1.5 s and hold one at a time, so a call may wait for two loads.
func browserTestCall(t *testing.T, url, body, fault string, disconnect bool) int {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", url, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if fault != "" {
		req.Header.Set(ollamatest.FaultHeader, fault)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Errorf("%s: %v", url, err)
		return 0
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for lines := 0; sc.Scan(); {
		lines++
		if disconnect && lines == 3 {
			cancel() // the client goes away mid-stream
			return resp.StatusCode
		}
	}
	if disconnect {
		t.Errorf("%s: the stream ended before the client could leave it", url)
	}
	return resp.StatusCode
}

// runChromium runs headless chromium with a fresh profile and returns its
// stdout and stderr. The whole process group is killed after
// chromiumTimeout.
func runChromium(t *testing.T, args ...string) (stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), chromiumTimeout)
	defer cancel()
	base := []string{
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-dev-shm-usage", "--user-data-dir=" + t.TempDir(),
	}
	cmd := exec.CommandContext(ctx, chromiumPath, append(base, args...)...)
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir()) // no writes to the real home
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if cmd.Process != nil {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // stray children
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		t.Fatalf("chromium killed after %s; stderr:\n%s", chromiumTimeout, tail(errb.String(), 4000))
	}
	if err != nil {
		t.Fatalf("chromium %v: %v; stderr:\n%s", args, err, tail(errb.String(), 4000))
	}
	return out.String(), errb.String()
}

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

var (
	domAttr = func(id, attr string) *regexp.Regexp {
		return regexp.MustCompile(`<[a-z]+ [^>]*id="` + regexp.QuoteMeta(id) + `"[^>]*\b` + attr + `="([^"]*)"`)
	}
	domText = func(id string) *regexp.Regexp {
		return regexp.MustCompile(`id="` + regexp.QuoteMeta(id) + `"[^>]*>([^<]*)<`)
	}
	bodySamples = regexp.MustCompile(`<body[^>]*\bdata-samples="(\d+)"`)
	modelRow    = regexp.MustCompile(`<tr><td>([^<]+)</td><td>(\d+)</td>`)
	backendRow  = regexp.MustCompile(`<tr data-backend="([^"]+)">(.*?)</tr>`)
	pickCell    = regexp.MustCompile(`<td>[a-z_]+ [0-9]`)
)

// checkAdminDOM asserts what the rendered page shows after the burst.
func checkAdminDOM(t *testing.T, dom string, burst int) {
	t.Helper()
	fail := func(format string, args ...any) {
		t.Helper()
		t.Fatalf(format+"\nDOM:\n%s", append(args, tail(dom, 6000))...)
	}
	m := bodySamples.FindStringSubmatch(dom)
	if m == nil {
		fail("the page never rendered a sample (no data-samples on body)")
	}
	if n, _ := strconv.Atoi(m[1]); n < 2 {
		fail("only %d samples rendered, want >= 2", n)
	}
	// Every chart is drawn with several points (the rate charts need two
	// samples for their first point).
	for _, c := range []struct {
		id  string
		min int
	}{{"c-pool", 2}, {"c-rps", 1}, {"c-lat", 2}, {"c-tps", 1}} {
		m := domAttr(c.id, "data-points").FindStringSubmatch(dom)
		if m == nil {
			fail("chart %s not drawn (no data-points)", c.id)
		}
		if n, _ := strconv.Atoi(m[1]); n < c.min {
			fail("chart %s has %d points, want >= %d", c.id, n, c.min)
		}
	}
	text := func(id string) string {
		m := domText(id).FindStringSubmatch(dom)
		if m == nil {
			fail("no element %s", id)
		}
		return strings.TrimSpace(m[1])
	}
	if n, err := strconv.Atoi(text("t-requests")); err != nil || n < burst {
		fail("Requests tile %q, want a number >= %d", text("t-requests"), burst)
	}
	if v := text("t-tokens"); !regexp.MustCompile(`^[1-9][0-9.k]* / [1-9][0-9.k]*$`).MatchString(v) {
		fail("Tokens tile %q, want non-zero prompt / completion", v)
	}
	if v := text("t-disconnects"); v == "0" || v == "–" {
		fail("Client disconnects tile %q, want >= 1", v)
	}
	if v := text("t-uptime"); !strings.Contains(v, "s") {
		fail("Uptime tile %q", v)
	}
	want := fmt.Sprintf("%d/%d backends healthy", len(demoBackends), len(demoBackends))
	if v := text("health"); v != want {
		fail("health badge %q, want %s", v, want)
	}
	if v := text("status"); !strings.HasPrefix(v, "updated") {
		fail("status line %q, want updated …", v)
	}
	if v := text("version"); !strings.Contains(v, "go1.") {
		fail("version %q", v)
	}
	rows := map[string]int{}
	for _, r := range modelRow.FindAllStringSubmatch(dom, -1) {
		rows[r[1]], _ = strconv.Atoi(r[2])
	}
	for _, want := range []string{"llama3.2", "qwen2.5:0.5b"} {
		if rows[want] < 1 {
			fail("models table %v lacks %s", rows, want)
		}
	}
	// The backends table: one healthy row per demo backend, its loaded
	// models, and the picks that sent the burst there.
	backends := backendRow.FindAllStringSubmatch(dom, -1)
	if len(backends) != len(demoBackends) {
		fail("backends table has %d rows, want %d", len(backends), len(demoBackends))
	}
	picked := 0
	for i, r := range backends {
		if r[1] != demoBackends[i].name || !strings.Contains(r[2], `<td class="ok">healthy</td>`) {
			fail("backends row %d: %q %s, want %s healthy", i, r[1], r[2], demoBackends[i].name)
		}
		if pickCell.MatchString(r[2]) {
			picked++
		}
	}
	if picked == 0 {
		fail("no backend row shows picks after the burst")
	}
	if v := text("cache-summary"); !strings.HasPrefix(v, "hit rate ") || !strings.Contains(v, "entries") {
		fail("cache summary %q, want hit rate … entries …", v)
	}
	if !strings.Contains(dom, "<td>/api/embed</td><td>nomic-embed-text</td>") {
		fail("the cache table has no /api/embed nomic-embed-text row")
	}
	if v := text("routing"); !strings.HasPrefix(v, "policy model_aware") {
		fail("routing line %q, want policy model_aware …", v)
	}
	// Each legend names its series with the latest value.
	for _, l := range []string{"l-pool", "l-rps", "l-lat", "l-tps"} {
		if !regexp.MustCompile(`id="` + l + `"><span>`).MatchString(dom) {
			fail("legend %s empty", l)
		}
	}
}

// checkScreenshot asserts the file is a 1280x900 PNG with real content: a
// blank or error page has a handful of colours, the status page hundreds.
func checkScreenshot(t *testing.T, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("no screenshot: %v", err)
	}
	if len(b) < 20<<10 || !bytes.HasPrefix(b, []byte("\x89PNG\r\n\x1a\n")) {
		t.Fatalf("screenshot is %d bytes, not a non-trivial PNG", len(b))
	}
	img, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	if got := img.Bounds().Size(); got != image.Pt(1280, 900) {
		t.Fatalf("screenshot is %v, want 1280x900", got)
	}
	colors := map[[3]uint32]struct{}{}
	for y := 0; y < 900; y += 3 {
		for x := 0; x < 1280; x += 3 {
			r, g, b, _ := img.At(x, y).RGBA()
			colors[[3]uint32{r >> 8, g >> 8, b >> 8}] = struct{}{}
		}
	}
	if len(colors) < 50 {
		t.Fatalf("screenshot has %d colours: blank or an error page", len(colors))
	}
}
