package admin

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

func TestPprofRoutes(t *testing.T) {
	var ready atomic.Bool
	ready.Store(true)
	on := startAdminWith(t, Config{Listen: "127.0.0.1:0", Pprof: true}, fakeSources(&ready))
	off := startAdminWith(t, Config{Listen: "127.0.0.1:0"}, fakeSources(&ready))
	key := map[string]string{"X-API-Key": testKey}
	gzipMagic := string([]byte{0x1f, 0x8b})
	for _, tt := range []struct {
		name       string
		base, path string
		hdr        map[string]string
		wantStatus int
		wantBody   string // prefix or substring
	}{
		{"index", on, "/debug/pprof/", key, 200, "goroutine"},
		{"index without slash", on, "/debug/pprof", key, 200, "goroutine"},
		{"index without key", on, "/debug/pprof/", nil, 401, `"unauthorized"`},
		{"heap text", on, "/debug/pprof/heap?debug=1", key, 200, "heap profile:"},
		{"heap without key", on, "/debug/pprof/heap", map[string]string{"X-API-Key": "nope"}, 401, `"unauthorized"`},
		{"goroutine proto", on, "/debug/pprof/goroutine", key, 200, gzipMagic},
		{"cpu profile", on, "/debug/pprof/profile?seconds=1", key, 200, gzipMagic},
		{"cpu profile without key", on, "/debug/pprof/profile?seconds=1", nil, 401, `"unauthorized"`},
		{"disabled", off, "/debug/pprof/", key, 404, `"not_found"`},
		{"disabled heap", off, "/debug/pprof/heap", key, 404, `"not_found"`},
		{"disabled without key", off, "/debug/pprof/heap", nil, 401, `"unauthorized"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := get(t, "GET", tt.base+tt.path, "", tt.hdr)
			if r.status != tt.wantStatus || !bytes.Contains(r.body, []byte(tt.wantBody)) {
				t.Fatalf("GET %s: %d %.200q, want %d with %q", tt.path, r.status, r.body, tt.wantStatus, tt.wantBody)
			}
		})
	}
}

func TestProfilerConfig(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "profiles")
	for _, tt := range []struct {
		name    string
		cfg     Config
		wantKey string // "" = valid
	}{
		{"off", Config{}, ""},
		{"defaults", Config{ProfileDir: dir}, ""},
		{"cpu as long as interval", Config{ProfileDir: dir, ProfileInterval: 30 * time.Second}, "admin.profile_seconds"},
		{"negative interval", Config{ProfileDir: dir, ProfileInterval: -time.Second}, "admin.profile_interval"},
		{"negative seconds", Config{ProfileDir: dir, ProfileSeconds: -1}, "admin.profile_seconds"},
		{"negative keep", Config{ProfileDir: dir, ProfileKeep: -1}, "admin.profile_keep"},
		{"dir is a file", Config{ProfileDir: "/dev/null/x"}, "admin.profile_dir"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(Config{Listen: "127.0.0.1:0", ProfileDir: tt.cfg.ProfileDir, ProfileInterval: tt.cfg.ProfileInterval,
				ProfileSeconds: tt.cfg.ProfileSeconds, ProfileKeep: tt.cfg.ProfileKeep}, fakeSources(new(atomic.Bool)), zerolog.Nop())
			if (err != nil) != (tt.wantKey != "") || (err != nil && !strings.Contains(err.Error(), tt.wantKey)) {
				t.Fatalf("New: %v, want an error naming %q", err, tt.wantKey)
			}
		})
	}
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		t.Fatalf("profile_dir not created: %v", err)
	}
}

// testProfiler is a profiler on a temporary directory with CPU profiles
// short enough for a test.
func testProfiler(t *testing.T, interval time.Duration, keep int) *profiler {
	t.Helper()
	p, err := newProfiler(Config{ProfileDir: t.TempDir(), ProfileKeep: keep}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	p.interval, p.cpu = interval, 20*time.Millisecond
	return p
}

func TestProfilerWritesAndPrunes(t *testing.T) {
	p := testProfiler(t, time.Hour, 2)
	// What a process killed during its CPU profile leaves: pruned too.
	for _, n := range []string{".cpu-123.tmp", ".heap-456.tmp"} {
		if err := os.WriteFile(filepath.Join(p.dir, n), []byte("partial"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	var written []string // the CPU profiles, oldest first
	for i := range 4 {
		if err := p.round(context.Background()); err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
		cpu, _ := profileFiles(p.dir, profileCPU)
		written = append(written, cpu[len(cpu)-1])
	}
	cpu, _ := profileFiles(p.dir, profileCPU)
	heap, _ := profileFiles(p.dir, profileHeap)
	if want := written[2:]; !slices.Equal(cpu, want) {
		t.Fatalf("CPU profiles kept %v, want the newest two %v", cpu, want)
	}
	if len(heap) != 2 || strings.TrimPrefix(heap[1], "heap-") != strings.TrimPrefix(cpu[1], "cpu-") {
		t.Fatalf("heap profiles kept %v, want two stamped as the CPU ones %v", heap, cpu)
	}
	entries, _ := os.ReadDir(p.dir)
	if len(entries) != 4 {
		t.Fatalf("dir holds %d files, want 4 (no temporaries left)", len(entries))
	}
	for _, n := range append(cpu, heap...) {
		b, err := os.ReadFile(filepath.Join(p.dir, n))
		if err != nil || len(b) < 2 || b[0] != 0x1f || b[1] != 0x8b {
			t.Fatalf("%s: not a gzipped pprof profile (%v)", n, err)
		}
	}
	// An unwritable directory is an error for the round, not the process.
	if err := os.RemoveAll(p.dir); err != nil {
		t.Fatal(err)
	}
	if err := p.round(context.Background()); err == nil {
		t.Fatal("round into a removed directory reported no error")
	}
}

func TestProfilerRunsUntilStopped(t *testing.T) {
	p := testProfiler(t, 50*time.Millisecond, 3)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); p.run(ctx) }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		heap, _ := profileFiles(p.dir, profileHeap)
		if len(heap) >= 3 {
			break
		}
		if time.Now().After(deadline) {
			cancel()
			t.Fatalf("after 5s, heap profiles %v: want 3", heap)
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("run did not return after its context ended")
	}
	for _, kind := range []string{profileCPU, profileHeap} {
		if names, _ := profileFiles(p.dir, kind); len(names) > 3 {
			t.Fatalf("%s profiles %v: more than profile_keep", kind, names)
		}
	}
}
