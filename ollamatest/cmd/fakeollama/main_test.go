package main

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// lockedBuffer is a bytes.Buffer safe for the writer and the test.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestRun(t *testing.T) {
	tests := []struct {
		name string
		stop func(cancel context.CancelFunc, stdin io.Closer)
	}{
		{"stdin closes", func(_ context.CancelFunc, stdin io.Closer) { _ = stdin.Close() }},
		{"signal", func(cancel context.CancelFunc, _ io.Closer) { cancel() }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(t.Context())
			stdinR, stdinW := io.Pipe()
			stdoutR, stdoutW := io.Pipe()
			var stderr lockedBuffer
			done := make(chan error, 1)
			go func() {
				done <- run(ctx, []string{"-addr", "127.0.0.1:0", "-models", "a,b", "-parallel", "1",
					"-max-loaded", "1", "-load-time", "1ms", "-prompt-token-time", "10us", "-tokens", "3"},
					stdinR, stdoutW, &stderr)
				_ = stdoutW.Close()
			}()
			line, err := bufio.NewReader(stdoutR).ReadString('\n')
			if err != nil {
				t.Fatalf("read stdout: %v (stderr %q)", err, stderr.String())
			}
			url, ok := strings.CutPrefix(strings.TrimSpace(line), "listening ")
			if !ok || !strings.HasPrefix(url, "http://127.0.0.1:") {
				t.Fatalf("first line = %q, want listening http://127.0.0.1:PORT", line)
			}
			for _, model := range []string{"a", "b"} {
				resp, err := http.Post(url+"/api/generate", "application/json",
					strings.NewReader(`{"model":"`+model+`","prompt":"hi","stream":false}`))
				if err != nil {
					t.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					t.Fatalf("generate %s: status %d", model, resp.StatusCode)
				}
			}
			tt.stop(cancel, stdinW)
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("run: %v", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("run did not return")
			}
			cancel()
			_ = stdinW.Close()
			if got := stderr.String(); !strings.Contains(got, `"ColdLoads":2,"Evictions":1`) {
				t.Errorf("stderr = %q, want the stats with 2 cold loads and 1 eviction", got)
			}
			http.DefaultClient.CloseIdleConnections()
		})
	}
}

func TestRunBadFlags(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"negative parallel", []string{"-parallel", "-1"}, "scheduler.num_parallel"},
		{"scheduler flag without the scheduler", []string{"-sched=false", "-load-time", "1s"}, "-load-time need the scheduler"},
		{"argument", []string{"extra"}, `unexpected argument "extra"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := run(t.Context(), tt.args, strings.NewReader(""), io.Discard, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("err = %v, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}
