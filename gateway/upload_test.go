package gateway_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	ollama "github.com/ollama/ollama/api"

	"github.com/vega-gateway/vega-gateway/access"
	"github.com/vega-gateway/vega-gateway/gateway"
	"github.com/vega-gateway/vega-gateway/ollamatest"
)

// blobOf returns n bytes of a pattern that depends on seed, and their
// Ollama digest.
func blobOf(n int, seed byte) ([]byte, string) {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7) ^ seed
	}
	sum := sha256.Sum256(b)
	return b, "sha256:" + hex.EncodeToString(sum[:])
}

// blobRequests returns the fake's records of POST /api/blobs/ requests.
func blobRequests(fake *ollamatest.Server) []ollamatest.Request {
	var out []ollamatest.Request
	for _, r := range fake.Requests() {
		if r.Method == "POST" && strings.HasPrefix(r.Path, "/api/blobs/") {
			out = append(out, r)
		}
	}
	return out
}

// rawRequest writes head (request line and headers) to a new connection,
// and returns it with a reader for the answer.
func rawRequest(t *testing.T, url, head string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := io.WriteString(c, head); err != nil {
		t.Fatal(err)
	}
	return c, bufio.NewReader(c)
}

// TestBlobUploadStreamsThrough: blob bodies far above gateway.max_body_bytes
// reach the fake whole, with its digest checked there, framed by length or
// by chunks; Ollama's answers (201 created, 200 already there, 400 digest
// mismatch) come back as they were.
func TestBlobUploadStreamsThrough(t *testing.T) {
	e := startEnv(t, envOptions{gateway: gateway.Config{MaxBodyBytes: 1 << 20}, auth: access.Config{AllowModelManagement: true}})
	data, digest := blobOf(8<<20, 1)
	other, otherDigest := blobOf(3<<20, 2)
	cases := []struct {
		name     string
		digest   string
		body     []byte
		chunked  bool
		status   int
		wantBody string
	}{
		{"created, by length", digest, data, false, 201, ""},
		{"already there", digest, data, false, 200, ""},
		{"created, chunked", otherDigest, other, true, 201, ""},
		{"digest mismatch", "sha256:" + strings.Repeat("ab", 32), data[:1<<20], true, 400, "digest mismatch"},
		{"bad digest", "sha256:xyz", []byte("x"), false, 400, "invalid digest format"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var body io.Reader = bytes.NewReader(tc.body)
			if tc.chunked {
				body = struct{ io.Reader }{body} // net/http sends an unknown length chunked
			}
			req, _ := http.NewRequest("POST", e.url+"/api/blobs/"+tc.digest, body)
			resp, err := testClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			got, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.status || !strings.Contains(string(got), tc.wantBody) {
				t.Fatalf("POST blob: %d %s, want %d with %q", resp.StatusCode, got, tc.status, tc.wantBody)
			}
		})
	}
	if st, _, _ := e.do("HEAD", "/api/blobs/"+digest, "", nil); st != 200 {
		t.Fatalf("HEAD uploaded blob: %d, want 200", st)
	}
	// The blob already there was not uploaded again: the gateway asked
	// first (HEAD), and relayed Ollama's 200.
	recs := blobRequests(e.fake)
	if len(recs) != len(cases)-1 || recs[0].BodySize != int64(len(data)) || recs[1].BodySize != int64(len(other)) {
		t.Fatalf("the fake received %d uploads (%+v), want %d with the whole bodies", len(recs), recs, len(cases)-1)
	}
	// The other routes keep their small limit: a 2 MiB body is refused at
	// its first byte (sent alone: a client still writing the rest when the
	// connection closes may see a reset instead of the answer).
	c, r := rawRequest(t, e.url, fmt.Sprintf("POST /api/show HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n{", 2<<20))
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(r, nil)
	if err != nil || resp.StatusCode != 413 {
		t.Fatalf("2 MiB /api/show body: %v %v, want 413", resp, err)
	}
}

// TestBlobUploadFailures: what a client does wrong mid-upload ends the
// upstream upload too (the fake sees its request broken off, not hanging)
// and gets a clear answer where it is still there to read one.
func TestBlobUploadFailures(t *testing.T) {
	const limit = 4 << 20
	digest := "sha256:" + strings.Repeat("cd", 32)
	cases := []struct {
		name string
		// head is sent, then body; then the client waits for the answer,
		// or hangs up (hangUp).
		head     string
		body     string
		hangUp   bool
		status   int // 0: no answer expected
		wantBody string
		outcome  string
		// reached: the fake saw the upload start (and must see it end).
		reached bool
	}{
		// The body's first byte is sent: the server calls the handler
		// once one is in (a client that waits asks with Expect).
		{name: "over the limit by Content-Length",
			head: fmt.Sprintf("POST /api/blobs/%s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n", digest, limit+1),
			body: "x", status: 413, wantBody: "gateway.max_blob_bytes", outcome: "client_error"},
		{name: "over the limit, chunked",
			head:   fmt.Sprintf("POST /api/blobs/%s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n", digest),
			body:   strings.Repeat(fmt.Sprintf("%x\r\n%s\r\n", 1<<20, strings.Repeat("z", 1<<20)), 5),
			status: 413, wantBody: "gateway.max_blob_bytes", outcome: "client_error", reached: true},
		{name: "idle mid-body",
			head: fmt.Sprintf("POST /api/blobs/%s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n", digest, 2<<20),
			body: strings.Repeat("y", 1<<20), status: 408, wantBody: "no upload bytes received for 300ms", outcome: "client_error", reached: true},
		{name: "client hangs up mid-body",
			head: fmt.Sprintf("POST /api/blobs/%s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n", digest, 2<<20),
			body: strings.Repeat("y", 1<<20), hangUp: true, outcome: "client_closed", reached: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := startEnv(t, envOptions{
				gateway: gateway.Config{MaxBlobBytes: limit, ReadTimeout: 300 * time.Millisecond},
				auth:    access.Config{AllowModelManagement: true},
			})
			id := "upload-" + strings.NewReplacer(" ", "-", ",", "").Replace(tc.name)
			c, r := rawRequest(t, e.url, tc.head+"X-Correlation-ID: "+id+"\r\n\r\n")
			_, _ = io.WriteString(c, tc.body)
			if tc.reached {
				waitFor(t, 5*time.Second, "the upload to reach the fake", func() bool { return len(blobRequests(e.fake)) == 1 })
			}
			if tc.hangUp {
				c.Close()
			} else {
				_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
				resp, err := http.ReadResponse(r, nil)
				if err != nil {
					t.Fatalf("no answer: %v", err)
				}
				b, _ := io.ReadAll(resp.Body)
				if resp.StatusCode != tc.status || !strings.Contains(string(b), tc.wantBody) || !strings.Contains(string(b), id) {
					t.Fatalf("answer %d %s, want %d with %q and the correlation ID", resp.StatusCode, b, tc.status, tc.wantBody)
				}
				if !resp.Close {
					t.Fatalf("answer without Connection: close; the rest of the body is still on the wire")
				}
			}
			e.wantOutcome(t, id, tc.outcome)
			if !tc.reached {
				if n := len(blobRequests(e.fake)); n != 0 {
					t.Fatalf("the fake received %d uploads, want none", n)
				}
				return
			}
			waitFor(t, 5*time.Second, "the fake's upload to end", func() bool {
				recs := blobRequests(e.fake)
				return !recs[0].Finished.IsZero()
			})
			if rec := blobRequests(e.fake)[0]; !rec.Cancelled || rec.BodySize > limit {
				t.Fatalf("fake's record %+v: want the upload broken off before its end", rec)
			}
		})
	}
}

// TestOllamaCreateThroughFleet is `ollama create` from a GGUF file, as the
// Ollama client library does it, through a gateway in front of three
// backends: the blob (sent chunked, as the CLI sends a file) goes to every
// backend at once, each checks its digest, and the create that names it
// succeeds on all of them. Pinned to one backend, an upload goes there
// only; a backend that cannot be reached leaves the others' uploads whole.
func TestOllamaCreateThroughFleet(t *testing.T) {
	e := startFleetEnv(t, [][]string{{"llama3.2"}, {"llama3.2"}, {"llama3.2"}}, ollamatest.Config{}, nil)
	client := e.client(t)
	ctx := context.Background()
	data, digest := blobOf(6<<20, 3)
	if err := client.CreateBlob(ctx, digest, struct{ io.Reader }{bytes.NewReader(data)}); err != nil {
		t.Fatalf("CreateBlob: %v", err)
	}
	for i, f := range e.fakes {
		recs := blobRequests(f)
		if len(recs) != 1 || recs[0].BodySize != int64(len(data)) {
			t.Fatalf("backend %d received %+v, want the whole blob once", i, recs)
		}
	}
	var last ollama.ProgressResponse
	err := client.Create(ctx, &ollama.CreateRequest{Model: "mine", Files: map[string]string{"model.gguf": digest}},
		func(p ollama.ProgressResponse) error { last = p; return nil })
	if err != nil || last.Status != "success" {
		t.Fatalf("Create: %v, last progress %+v", err, last)
	}
	err = client.Create(ctx, &ollama.CreateRequest{Model: "other", Files: map[string]string{"model.gguf": "sha256:" + strings.Repeat("0", 64)}},
		func(ollama.ProgressResponse) error { return nil })
	if err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Fatalf("Create naming a blob never uploaded: %v, want Ollama's error", err)
	}

	// Pinned: only gpu-b gets it.
	pinned, pinnedDigest := blobOf(1<<20, 4)
	req, _ := http.NewRequest("POST", e.url+"/api/blobs/"+pinnedDigest, bytes.NewReader(pinned))
	req.Header.Set(gateway.HeaderBackend, "gpu-b")
	resp, err := testClient.Do(req)
	if err != nil || resp.StatusCode != 201 {
		t.Fatalf("pinned upload: %v %v", resp, err)
	}
	resp.Body.Close()
	for i, f := range e.fakes {
		if n, want := len(blobRequests(f)), map[bool]int{true: 2, false: 1}[i == 1]; n != want {
			t.Fatalf("backend %d received %d uploads, want %d", i, n, want)
		}
	}

	// One backend gone: the others still get the whole blob, and the
	// client is told which failed.
	e.fakes[2].Close()
	late, lateDigest := blobOf(2<<20, 5)
	st, _, body := e.do(t, "POST", "/api/blobs/"+lateDigest, string(late), "upload-one-down")
	if st != 502 || !strings.Contains(string(body), "blob upload failed on gpu-c") {
		t.Fatalf("upload with gpu-c down: %d %s, want 502 naming gpu-c", st, body)
	}
	for i, f := range e.fakes[:2] {
		recs := blobRequests(f)
		if last := recs[len(recs)-1]; last.BodySize != int64(len(late)) || last.Cancelled {
			t.Fatalf("backend %d's upload %+v, want whole", i, last)
		}
	}
}

// TestBlobUploadFleetClientLeaves: a client that hangs up mid-upload
// breaks off the upload on every backend it was teed to; none is left
// waiting for the rest of the body.
func TestBlobUploadFleetClientLeaves(t *testing.T) {
	e := startFleetEnv(t, [][]string{{"llama3.2"}, {"llama3.2"}, {"llama3.2"}}, ollamatest.Config{}, nil)
	digest := "sha256:" + strings.Repeat("ef", 32)
	c, _ := rawRequest(t, e.url, fmt.Sprintf("POST /api/blobs/%s HTTP/1.1\r\nHost: x\r\nX-Correlation-ID: fleet-hang-up\r\nContent-Length: %d\r\n\r\n", digest, 4<<20))
	if _, err := io.WriteString(c, strings.Repeat("q", 1<<20)); err != nil {
		t.Fatal(err)
	}
	for i, f := range e.fakes {
		waitFor(t, 5*time.Second, fmt.Sprintf("backend %d to receive the upload", i), func() bool { return len(blobRequests(f)) == 1 })
	}
	c.Close()
	for i, f := range e.fakes {
		waitFor(t, 5*time.Second, fmt.Sprintf("backend %d's upload to end", i), func() bool { return !blobRequests(f)[0].Finished.IsZero() })
		if r := blobRequests(f)[0]; !r.Cancelled || r.BodySize >= 4<<20 {
			t.Fatalf("backend %d's upload %+v, want it broken off", i, r)
		}
	}
	if line := e.accessLine(t, "fleet-hang-up", ""); line["outcome"] != "client_closed" {
		t.Fatalf("access line %v, want outcome client_closed", line)
	}
}
