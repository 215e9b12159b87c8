package ollamatest

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
)

const chatBody = `{"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}`

// waitFor polls cond every millisecond for up to 2 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestFaultHangCancelled(t *testing.T) {
	s := newTestServer(t, Config{})
	c := &http.Client{Timeout: 100 * time.Millisecond}
	req, _ := http.NewRequest("POST", s.URL()+"/api/chat", strings.NewReader(chatBody))
	req.Header.Set(FaultHeader, FaultHang)
	if _, err := c.Do(req); err == nil {
		t.Fatal("hang: got a response, want a client timeout")
	}
	waitFor(t, "ClientCancelled", func() bool { return s.Stats().ClientCancelled == 1 })
	waitFor(t, "connection close", func() bool { return s.Stats().ConnsOpen == 0 })
	r := s.Requests()[0]
	if !r.Cancelled || r.Fault != FaultHang {
		t.Errorf("request Cancelled=%v Fault=%q, want true %q", r.Cancelled, r.Fault, FaultHang)
	}
	if conns := s.Conns(); len(conns) != 1 || conns[0].Closed.IsZero() {
		t.Errorf("conns = %+v, want one closed", conns)
	}
}

// TestStreamFaults drives the modes that cut a stream after N frames.
func TestStreamFaults(t *testing.T) {
	s := newTestServer(t, Config{TokenDelay: time.Millisecond})
	tests := []struct {
		name, fault string
		byModel     bool
		wantLines   int  // complete lines received
		wantErrLine bool // last line is {"error":...}
		check       func(err error) bool
	}{
		{"die_after", "die_after=3", false, 3, false, func(err error) bool { return errors.Is(err, io.ErrUnexpectedEOF) }},
		{"die_after by model", "die_after=2", true, 2, false, func(err error) bool { return errors.Is(err, io.ErrUnexpectedEOF) }},
		{"rst_after", "rst_after=2", false, 2, false, func(err error) bool { return errors.Is(err, syscall.ECONNRESET) }},
		{"half line", "half_line_then_close", false, 1, false, func(err error) bool { return errors.Is(err, io.ErrUnexpectedEOF) }},
		{"error_after", "error_after=2", true, 3, true, func(err error) bool { return err == nil }},
		{"complete", "", false, DefaultTokens + 1, false, func(err error) bool { return err == nil }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			body, hdr := chatBody, []string{}
			if tt.byModel {
				body = strings.Replace(chatBody, "llama3.2", FaultModelPrefix+tt.fault, 1)
			} else if tt.fault != "" {
				hdr = []string{FaultHeader, tt.fault}
			}
			resp := do(t, "POST", s.URL()+"/api/chat", body, hdr...)
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if !tt.check(err) {
				t.Errorf("read error = %v, unexpected", err)
			}
			text := string(b)
			complete := strings.Count(text, "\n")
			if complete != tt.wantLines {
				t.Fatalf("got %d complete lines, want %d: %q", complete, tt.wantLines, text)
			}
			lines := ndjsonLines(t, text[:strings.LastIndex(text, "\n")+1])
			last := lines[len(lines)-1]
			if _, isErr := last["error"]; isErr != tt.wantErrLine {
				t.Errorf("last line %v: error line = %v, want %v", last, isErr, tt.wantErrLine)
			}
			if tt.fault != "" && last["done"] == true {
				t.Errorf("faulted stream ended with done:true")
			}
		})
	}
	if st := s.Stats(); st.ClientCancelled != 0 {
		t.Errorf("ClientCancelled = %d, want 0 (the fake cut those streams itself)", st.ClientCancelled)
	}
}

func TestPreResponseFaults(t *testing.T) {
	s := newTestServer(t, Config{})
	tests := []struct {
		name, path, body, fault string
		wantStatus              int
		wantBody                string
	}{
		{"fail_status 503", "/api/chat", chatBody, "fail_status=503", 503, `{"error":"` + BusyMessage + `"}`},
		{"fail_status openai", "/v1/chat/completions", chatBody, "fail_status=500", 500, `"type":"api_error"`},
		{"fail_status anthropic", "/v1/messages", chatBody, "fail_status=503", 503, `"overloaded_error"`},
		{"fail_status tags", "/api/tags", "", "fail_status=502", 502, `{"error":"bad gateway"}`},
		{"ttft", "/api/chat", chatBody, "ttft=30ms", 200, `"done":true`},
		{"slow_version", "/api/version", "", "slow_version=30ms", 200, Version},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			method := "POST"
			if tt.body == "" {
				method = "GET"
			}
			start := time.Now()
			resp := do(t, method, s.URL()+tt.path, tt.body, FaultHeader, tt.fault)
			body := readAll(t, resp)
			if resp.StatusCode != tt.wantStatus || !strings.Contains(body, tt.wantBody) {
				t.Errorf("got %d %q, want %d containing %q", resp.StatusCode, body, tt.wantStatus, tt.wantBody)
			}
			if strings.Contains(tt.fault, "30ms") && time.Since(start) < 30*time.Millisecond {
				t.Errorf("answered after %v, want >= 30ms", time.Since(start))
			}
		})
	}
}

func TestRawFaults(t *testing.T) {
	s := newTestServer(t, Config{})
	for _, name := range RawResponseNames() {
		t.Run(name, func(t *testing.T) {
			c, err := net.DialTimeout("tcp", s.Addr(), time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(2 * time.Second))
			_, _ = io.WriteString(c, "POST /api/chat HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n"+
				FaultHeader+": raw="+name+"\r\n\r\n{}")
			got, err := io.ReadAll(c) // until the fake closes
			want, _ := rawResponse(name)
			if err != nil || string(got) != want {
				t.Errorf("got %q (err %v), want %q", got, err, want)
			}
		})
	}
	waitFor(t, "connections closed", func() bool { return s.Stats().ConnsOpen == 0 })
}

func TestBigFaults(t *testing.T) {
	s := newTestServer(t, Config{})
	resp := do(t, "POST", s.URL()+"/api/chat", chatBody, FaultHeader, FaultHugeLine)
	lines := ndjsonLines(t, readAll(t, resp))
	if n := len(lines[0]["message"].(map[string]any)["content"].(string)); n != HugeLineSize || len(lines) != DefaultTokens+1 {
		t.Errorf("huge_line: first content %d bytes, %d lines; want %d, %d", n, len(lines), HugeLineSize, DefaultTokens+1)
	}
	resp = do(t, "POST", s.URL()+"/api/chat", chatBody, FaultHeader, FaultBigBody)
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil || n < BigBodySize {
		t.Errorf("big_body: read %d bytes, err %v; want > %d", n, err, BigBodySize)
	}
}

func TestEndlessFaults(t *testing.T) {
	s := newTestServer(t, Config{TokenDelay: time.Millisecond})
	for _, mode := range []string{FaultInfinite, FaultTrickle, "stall_after=2"} {
		t.Run(mode, func(t *testing.T) {
			s.ResetStats()
			ctx, cancel := context.WithCancel(context.Background())
			req, _ := http.NewRequestWithContext(ctx, "POST", s.URL()+"/api/generate", strings.NewReader(`{"model":"llama3.2","prompt":"x"}`))
			req.Header.Set(FaultHeader, mode)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			lines := lineReader(resp)
			want := 20 // more than a whole reply
			if mode != FaultInfinite {
				want = 2
			}
			for i := range want {
				select {
				case l := <-lines:
					if strings.Contains(l, `"done":true`) {
						t.Fatalf("line %d is final: %s", i, l)
					}
				case <-time.After(2 * time.Second):
					t.Fatalf("line %d did not arrive", i)
				}
			}
			select {
			case l, ok := <-lines:
				if mode == "stall_after=2" && ok {
					t.Fatalf("stalled stream sent %q", l)
				}
			case <-time.After(20 * time.Millisecond):
			}
			cancel()
			resp.Body.Close()
			waitFor(t, "ClientCancelled", func() bool { return s.Stats().ClientCancelled == 1 })
		})
	}
}

func TestGated(t *testing.T) {
	s := newTestServer(t, Config{Tokens: 3})
	resp := do(t, "POST", s.URL()+"/api/chat", chatBody, FaultHeader, FaultGated)
	lines := lineReader(resp)
	defer resp.Body.Close()
	next := func() (string, bool) {
		select {
		case l, ok := <-lines:
			return l, ok
		case <-time.After(30 * time.Millisecond):
			return "", false
		}
	}
	if l, ok := next(); !ok || !strings.Contains(l, `"content":"The"`) {
		t.Fatalf("first frame = %q, %v; want it ungated", l, ok)
	}
	for i := 1; i <= 3; i++ {
		if l, ok := next(); ok {
			t.Fatalf("frame %d = %q arrived before ReleaseFrame", i, l)
		}
		s.ReleaseFrame()
		select {
		case <-lines:
		case <-time.After(2 * time.Second):
			t.Fatalf("frame %d did not arrive after ReleaseFrame", i)
		}
	}
	if _, ok := <-lines; ok {
		t.Error("stream did not end after the final frame")
	}
}

func TestDefaultAndConnFaults(t *testing.T) {
	s := newTestServer(t, Config{})
	if err := s.SetDefaultFault("fail_status=503"); err != nil {
		t.Fatal(err)
	}
	if resp := do(t, "GET", s.URL()+"/api/version", ""); readAll(t, resp) == "" || resp.StatusCode != 503 {
		t.Errorf("default fault: status %d, want 503", resp.StatusCode)
	}
	if resp := do(t, "GET", s.URL()+"/api/version", "", FaultHeader, "ttft=0s"); readAll(t, resp) == "" || resp.StatusCode != 200 {
		t.Errorf("header overrides default fault: status %d, want 200", resp.StatusCode)
	}
	_ = s.SetDefaultFault("")
	if err := s.SetDefaultFault("bogus"); err == nil {
		t.Error("SetDefaultFault(bogus): no error")
	}

	for _, mode := range []string{ConnFaultRSTOnAccept, ConnFaultCloseOnAccept} {
		if err := s.SetConnFault(mode); err != nil {
			t.Fatal(err)
		}
		s.ResetStats()
		tr := &http.Transport{DisableKeepAlives: true}
		_, err := (&http.Client{Transport: tr, Timeout: 2 * time.Second}).Get(s.URL() + "/")
		if err == nil {
			t.Errorf("%s: request succeeded", mode)
		}
		if st := s.Stats(); st.ConnsOpened < 1 || st.ConnsClosed < st.ConnsOpened || st.Requests != 0 {
			t.Errorf("%s: stats %+v, want a connection opened and closed, no request", mode, st)
		}
	}
	_ = s.SetConnFault("")
	if resp := do(t, "GET", s.URL()+"/", ""); readAll(t, resp) != "Ollama is running" {
		t.Error("server unusable after clearing the connection fault")
	}
}

func TestPeakConns(t *testing.T) {
	const n = 5
	s := newTestServer(t, Config{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for range n {
		tr := &http.Transport{}
		defer tr.CloseIdleConnections()
		req, _ := http.NewRequestWithContext(ctx, "POST", s.URL()+"/api/chat", strings.NewReader(chatBody))
		req.Header.Set(FaultHeader, "stall_after=1")
		resp, err := (&http.Client{Transport: tr}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		<-lineReader(resp)
	}
	if st := s.Stats(); st.ConnsOpen != n || st.PeakConns != n || st.InFlight != n || st.PeakInFlight != n {
		t.Errorf("stats = %+v, want %d open and in flight", st, n)
	}
	cancel()
	if !s.WaitConnsClosed(2 * time.Second) {
		t.Fatal("connections still open")
	}
	waitFor(t, "in-flight zero", func() bool { return s.Stats().InFlight == 0 })
	if st := s.Stats(); st.ClientCancelled != n || st.PeakConns != n || st.ConnsClosed != n {
		t.Errorf("stats = %+v, want %d cancelled and closed", st, n)
	}
}

func TestCloseEndsEverything(t *testing.T) {
	base := runtime.NumGoroutine()
	s, err := NewServer(Config{})
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 2)
	for _, f := range []string{FaultHang, "stall_after=1"} {
		go func() {
			req, _ := http.NewRequest("POST", s.URL()+"/api/chat", strings.NewReader(chatBody))
			req.Header.Set(FaultHeader, f)
			resp, err := (&http.Client{Transport: &http.Transport{DisableKeepAlives: true}}).Do(req)
			if err == nil {
				_, err = io.ReadAll(resp.Body)
				resp.Body.Close()
			}
			errc <- err
		}()
	}
	waitFor(t, "two requests in flight", func() bool { return s.Stats().InFlight == 2 })
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		select {
		case <-errc:
		case <-time.After(2 * time.Second):
			t.Fatal("a client still waits after Close")
		}
	}
	if st := s.Stats(); st.InFlight != 0 || st.ConnsOpen != 0 || st.ClientCancelled != 0 {
		t.Errorf("after Close: %+v", st)
	}
	if _, err := net.DialTimeout("tcp", s.Addr(), time.Second); err == nil {
		t.Error("still listening after Close")
	}
	http.DefaultClient.CloseIdleConnections()
	waitFor(t, "goroutines back to baseline", func() bool { return runtime.NumGoroutine() <= base })
}

func TestIdleTimeoutClosesKeepAlive(t *testing.T) {
	s := newTestServer(t, Config{IdleTimeout: 50 * time.Millisecond})
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 2 * time.Second}).Get(s.URL() + "/api/version")
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, resp)
	if !s.WaitConnsClosed(2 * time.Second) {
		t.Fatal("idle keep-alive connection still open")
	}
	if c := s.Conns()[0]; c.Closed.Sub(c.Opened) < 50*time.Millisecond {
		t.Errorf("closed after %v, want >= 50ms", c.Closed.Sub(c.Opened))
	}
}
