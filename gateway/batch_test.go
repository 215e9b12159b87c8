package gateway_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestBufferedFramesShareAChunk: frames that are already buffered when one
// is written go out in one chunk (one write), never split, each still
// counted and inspected — here the upstream sends a whole 40-frame stream
// in one write.
func TestBufferedFramesShareAChunk(t *testing.T) {
	const frames = 40
	var body strings.Builder
	for i := range frames - 1 {
		fmt.Fprintf(&body, `{"model":"llama3.2","message":{"role":"assistant","content":"t%d "},"done":false}`+"\n", i)
	}
	body.WriteString(`{"model":"llama3.2","message":{"role":"assistant","content":""},"done":true,"done_reason":"stop","eval_count":39,"eval_duration":1000}` + "\n")
	reply := []byte("HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nContent-Length: " +
		strconv.Itoa(body.Len()) + "\r\n\r\n" + body.String())
	up := startRawUpstream(t)
	up.reply.Store(&reply)
	e := startEnv(t, envOptions{noFake: true, upURL: "http://" + up.ln.Addr().String()})

	c, err := net.Dial("tcp", strings.TrimPrefix(e.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	req := `{"model":"llama3.2","messages":[]}`
	fmt.Fprintf(c, "POST /api/chat HTTP/1.1\r\nHost: x\r\nX-Correlation-ID: batch-1\r\nContent-Length: %d\r\n\r\n%s", len(req), req)
	br := bufio.NewReader(c)
	for { // status line and headers
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if line == "\r\n" {
			break
		}
	}
	var chunks []string
	for {
		sizeLine, err := br.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		n, err := strconv.ParseInt(strings.TrimSpace(sizeLine), 16, 64)
		if err != nil {
			t.Fatalf("chunk size %q", sizeLine)
		}
		if n == 0 {
			break
		}
		b := make([]byte, n+2)
		if _, err := io.ReadFull(br, b); err != nil {
			t.Fatal(err)
		}
		chunks = append(chunks, string(b[:n]))
	}
	var all strings.Builder
	for _, ch := range chunks {
		if !strings.HasSuffix(ch, "\n") {
			t.Fatalf("a chunk ends mid-frame: %q", ch)
		}
		all.WriteString(ch)
	}
	if all.String() != body.String() {
		t.Fatalf("relayed stream differs from the upstream's:\n%q\nwant\n%q", all.String(), body.String())
	}
	if len(chunks) >= frames {
		t.Fatalf("%d chunks for %d frames that arrived together: no batching", len(chunks), frames)
	}
	for _, l := range strings.Split(strings.TrimSpace(all.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("line is not JSON: %q", l)
		}
	}
	e.wantOutcome(t, "batch-1", "ok")
	line := e.logs.accessLines(t, "batch-1")[0]
	if line["frames_out"] != float64(frames) {
		t.Fatalf("frames_out = %v, want %d (every frame counted)", line["frames_out"], frames)
	}
	t.Logf("%d frames in %d chunks", frames, len(chunks))
}
