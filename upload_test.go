package main

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vega-gateway/vega-gateway/ollamatest"
)

// uploadRSSBound is what the gateway process may reach (VmHWM, its peak
// resident set) over a 1 GiB blob upload: its own start-up footprint and
// 64 KiB pieces, nowhere near the blob.
const uploadRSSBound = 32 << 20

// patternReader yields n bytes of a fixed 1 MiB pattern, generated once:
// a blob of any size without holding it.
type patternReader struct {
	block []byte
	n, at int64
}

func newPattern(n int64) *patternReader {
	b := make([]byte, 1<<20)
	for i := range b {
		b[i] = byte(i*31 + i>>8)
	}
	return &patternReader{block: b, n: n}
}

func (r *patternReader) Read(p []byte) (int, error) {
	if r.at >= r.n {
		return 0, io.EOF
	}
	off := r.at % int64(len(r.block))
	m := copy(p, r.block[off:])
	m = int(min(int64(m), r.n-r.at))
	r.at += int64(m)
	return m, nil
}

// patternDigest is the Ollama digest of n pattern bytes.
func patternDigest(n int64) string {
	h := sha256.New()
	_, _ = io.Copy(h, newPattern(n))
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}

var (
	buildOnce sync.Once
	builtBin  string
	buildErr  error
)

// gatewayBinary builds vega-gateway without the race detector (the test
// binary may have it, which would multiply the process's memory) once per
// test process.
func gatewayBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "vega-upload-")
		if err != nil {
			buildErr = err
			return
		}
		builtBin = filepath.Join(dir, "vega-gateway")
		out, err := exec.Command("go", "build", "-o", builtBin, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return builtBin
}

// startBinary runs the built gateway in front of upstream and waits for it
// to serve; it is killed at the test's end.
func startBinary(t testing.TB, upstream string, env ...string) (*exec.Cmd, string, *lockedBuffer) {
	t.Helper()
	addr := freeAddrTB(t)
	cmd := exec.Command(gatewayBinary(t), "serve")
	cmd.Dir = t.TempDir()
	cmd.Env = append(os.Environ(), "VEGA_GATEWAY_LISTEN="+addr, "VEGA_ADMIN_LISTEN="+freeAddrTB(t), "VEGA_LOG_DIR=",
		"VEGA_UPSTREAM_URL="+upstream, "VEGA_AUTH_ALLOW_MODEL_MANAGEMENT=true")
	cmd.Env = append(cmd.Env, env...)
	out := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-exited })
	deadline := time.Now().Add(10 * time.Second)
	for {
		if r, err := http.Get("http://" + addr + "/healthz"); err == nil {
			r.Body.Close()
			return cmd, "http://" + addr, out
		}
		if time.Now().After(deadline) {
			t.Fatalf("gateway did not start:\n%s", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func freeAddrTB(t testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// procStatus reads a kB field of /proc/<pid>/status, in bytes.
func procStatus(t testing.TB, pid int, field string) int64 {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

// uploadBlob POSTs n pattern bytes as the blob digest, chunked as the
// ollama CLI sends a file, and returns the status and the time it took.
func uploadBlob(t testing.TB, base, digest string, n int64) (int, time.Duration) {
	t.Helper()
	req, err := http.NewRequest("POST", base+"/api/blobs/"+digest, struct{ io.Reader }{newPattern(n)})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	resp, err := (&http.Client{Timeout: 10 * time.Minute}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	took := time.Since(start)
	if resp.StatusCode/100 != 2 {
		t.Fatalf("upload: %d %s", resp.StatusCode, body)
	}
	return resp.StatusCode, took
}

// TestBlobUploadRSS uploads a 1 GiB blob (VEGA_TEST_UPLOAD_BYTES to change
// it) through the vega-gateway binary to a fake Ollama, which checks its
// digest as it reads: the gateway's peak resident set stays under
// uploadRSSBound. The blob is generated as it is sent, never held.
func TestBlobUploadRSS(t *testing.T) {
	if testing.Short() {
		t.Skip("uploads 1 GiB")
	}
	n := int64(1 << 30)
	if v := os.Getenv("VEGA_TEST_UPLOAD_BYTES"); v != "" {
		var err error
		if n, err = strconv.ParseInt(v, 10, 64); err != nil {
			t.Fatal(err)
		}
	}
	fake, err := ollamatest.NewServer(ollamatest.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer fake.Close()
	digest := patternDigest(n)
	cmd, base, out := startBinary(t, fake.URL())
	pid := cmd.Process.Pid
	idle := procStatus(t, pid, "VmRSS")
	status, took := uploadBlob(t, base, digest, n)
	hwm := procStatus(t, pid, "VmHWM")
	if status != 201 {
		t.Fatalf("upload answered %d, want 201 (created)", status)
	}
	var got int64
	for _, r := range fake.Requests() {
		if r.Method == "POST" {
			got = r.BodySize
		}
	}
	if got != n {
		t.Fatalf("the fake received %d bytes, want %d; gateway output:\n%s", got, n, out.String())
	}
	t.Logf("%d MiB in %s (%.0f MiB/s); gateway RSS idle %.1f MiB, peak (VmHWM) %.1f MiB",
		n>>20, took.Round(time.Millisecond), float64(n)/(1<<20)/took.Seconds(), float64(idle)/(1<<20), float64(hwm)/(1<<20))
	if hwm > uploadRSSBound {
		t.Fatalf("gateway peak RSS %d MiB over a %d MiB upload, want under %d MiB", hwm>>20, n>>20, uploadRSSBound>>20)
	}
}

// BenchmarkBlobUpload uploads 256 MiB blobs straight to a fake Ollama and
// through the vega-gateway binary in front of it, in the same run: compare
// the two MB/s (go test -run '^$' -bench BlobUpload -count 5 .).
func BenchmarkBlobUpload(b *testing.B) {
	const n = 256 << 20
	digest := patternDigest(n)
	for _, via := range []string{"direct", "gateway"} {
		b.Run(via, func(b *testing.B) {
			fake, err := ollamatest.NewServer(ollamatest.Config{})
			if err != nil {
				b.Fatal(err)
			}
			defer fake.Close()
			base := fake.URL()
			if via == "gateway" {
				_, base, _ = startBinary(b, fake.URL())
			}
			b.SetBytes(n)
			b.ResetTimer()
			for range b.N {
				uploadBlob(b, base, digest, n)
				b.StopTimer()
				fake.ForgetBlobs()
				b.StartTimer()
			}
		})
	}
}
