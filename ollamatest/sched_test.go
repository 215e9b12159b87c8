package ollamatest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

// newSchedServer starts a fake in scheduler mode, closed at the end of the test.
func newSchedServer(t *testing.T, cfg Config, sc SchedulerConfig) *Server {
	t.Helper()
	cfg.Scheduler = &sc
	return newTestServer(t, cfg)
}

// result is the outcome of a request sent by send.
type result struct {
	status int
	body   string
	err    error
}

// send posts body to path on a goroutine of its own; ctx ends it early.
// The channel yields one result.
func send(ctx context.Context, s *Server, path, body string, header ...string) <-chan result {
	ch := make(chan result, 1)
	go func() {
		req, err := http.NewRequestWithContext(ctx, "POST", s.URL()+path, strings.NewReader(body))
		if err != nil {
			ch <- result{err: err}
			return
		}
		for i := 0; i+1 < len(header); i += 2 {
			req.Header.Set(header[i], header[i+1])
		}
		resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
		if err != nil {
			ch <- result{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		ch <- result{status: resp.StatusCode, body: string(b), err: err}
	}()
	return ch
}

// await waits (bounded) for a result of send and fails unless it is a 200.
func await(t *testing.T, what string, ch <-chan result) result {
	t.Helper()
	select {
	case r := <-ch:
		if r.err != nil || r.status != http.StatusOK {
			t.Fatalf("%s: status %d, err %v, body %q; want 200", what, r.status, r.err, r.body)
		}
		return r
	case <-time.After(5 * time.Second):
		t.Fatalf("%s: no answer", what)
	}
	return result{}
}

// notYet fails if ch yields a result within a short while. It can only
// catch a request that should be blocked but is not, so it never flakes.
func notYet(t *testing.T, what string, ch <-chan result) {
	t.Helper()
	select {
	case r := <-ch:
		t.Fatalf("%s answered (status %d, body %q) while it should wait", what, r.status, r.body)
	case <-time.After(30 * time.Millisecond):
	}
}

// holdSlot starts a gated chat stream for model and returns once its first
// frame arrived, so it holds a slot; finish lets its remaining frames go
// and reads it to the end.
func holdSlot(t *testing.T, s *Server, model string) (finish func()) {
	t.Helper()
	body := fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":"hold this slot"}]}`, model)
	resp := do(t, "POST", s.URL()+"/api/chat", body, FaultHeader, FaultGated)
	lines := lineReader(resp)
	select {
	case <-lines:
	case <-time.After(5 * time.Second):
		t.Fatal("gated stream: no first frame")
	}
	return func() {
		t.Helper()
		defer resp.Body.Close()
		for range s.cfg.Tokens {
			s.ReleaseFrame()
		}
		timeout := time.After(5 * time.Second)
		for {
			select {
			case _, ok := <-lines:
				if !ok {
					return
				}
			case <-timeout:
				t.Fatal("gated stream did not end")
			}
		}
	}
}

func chatFor(model, content string) string {
	return fmt.Sprintf(`{"model":%q,"stream":false,"messages":[{"role":"user","content":%q}]}`, model, content)
}

// pendingOf is the scheduler's count of waiting requests.
func pendingOf(s *Server) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sched.pending
}

// psNames lists the models /api/ps reports, in its order.
func psNames(t *testing.T, s *Server) []string {
	t.Helper()
	var ps struct {
		Models []processModel `json:"models"`
	}
	if err := json.Unmarshal([]byte(readAll(t, do(t, "GET", s.URL()+"/api/ps", ""))), &ps); err != nil {
		t.Fatal(err)
	}
	names := []string{}
	for _, m := range ps.Models {
		names = append(names, m.Name)
	}
	return names
}

// checkIdle fails unless no runner is referenced or has a busy slot or a
// queue, and nothing is pending: nothing leaked.
func checkIdle(t *testing.T, s *Server) {
	t.Helper()
	waitFor(t, "requests finished", func() bool { return s.Stats().InFlight == 0 })
	s.mu.Lock()
	defer s.mu.Unlock()
	sc := s.sched
	if sc.pending != 0 || len(sc.loadQ) != 0 {
		t.Errorf("pending = %d, load queue = %d; want 0, 0", sc.pending, len(sc.loadQ))
	}
	for name, r := range sc.runners {
		busy := 0
		for _, sl := range r.slots {
			if sl.busy {
				busy++
			}
		}
		if r.refs != 0 || busy != 0 || len(r.queue) != 0 {
			t.Errorf("%s: refs = %d, busy slots = %d, queued = %d; want all 0", name, r.refs, busy, len(r.queue))
		}
	}
}

func TestSchedBusy(t *testing.T) {
	s := newSchedServer(t, Config{Tokens: 2}, SchedulerConfig{NumParallel: 1, MaxQueue: 1})
	finish := holdSlot(t, s, "llama3.2")
	queued := send(t.Context(), s, "/api/chat", chatFor("llama3.2", "queued"))
	waitFor(t, "one pending request", func() bool { return pendingOf(s) == 1 })

	const native = `{"error":"server busy, please try again.  maximum pending requests exceeded"}`
	tests := []struct {
		name, path, body string
		wantCT, wantBody string
		exact            bool // else wantBody is a part of the body
	}{
		{"native chat", "/api/chat", chatFor("llama3.2", "hi"), "application/json; charset=utf-8", native, true},
		{"native generate", "/api/generate", `{"model":"llama3.2","prompt":"hi"}`, "application/json; charset=utf-8", native, true},
		{"load request", "/api/generate", `{"model":"llama3.2"}`, "application/json; charset=utf-8", native, true},
		{"embed", "/api/embed", `{"model":"nomic-embed-text","input":"hi"}`, "application/json; charset=utf-8", native, true},
		{"openai chat", "/v1/chat/completions", `{"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}`, "application/json",
			`{"error":{"message":"server busy, please try again.  maximum pending requests exceeded","type":"api_error","param":null,"code":null}}` + "\n", true},
		{"anthropic", "/v1/messages", `{"model":"llama3.2","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}`, "application/json",
			`"error":{"type":"overloaded_error","message":"server busy, please try again.  maximum pending requests exceeded"}`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := do(t, "POST", s.URL()+tt.path, tt.body)
			body := readAll(t, resp)
			if resp.StatusCode != http.StatusServiceUnavailable {
				t.Fatalf("status = %d, want 503 (body %q)", resp.StatusCode, body)
			}
			if ct := resp.Header.Get("Content-Type"); ct != tt.wantCT {
				t.Errorf("Content-Type = %q, want %q", ct, tt.wantCT)
			}
			if tt.exact && body != tt.wantBody || !strings.Contains(body, tt.wantBody) {
				t.Errorf("body = %q, want %q (exact: %v)", body, tt.wantBody, tt.exact)
			}
		})
	}
	if got, want := s.Stats().BusyRejections, int64(len(tests)); got != want {
		t.Errorf("BusyRejections = %d, want %d", got, want)
	}
	finish()
	await(t, "queued request", queued)
	checkIdle(t, s)
}

func TestSchedParallel(t *testing.T) {
	tests := []struct {
		name     string
		parallel int
		waits    bool // the second request waits for the first
	}{
		{"one slot: one after the other", 1, true},
		{"two slots: side by side", 2, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newSchedServer(t, Config{Tokens: 2}, SchedulerConfig{NumParallel: tt.parallel})
			finish := holdSlot(t, s, "llama3.2")
			second := send(t.Context(), s, "/api/chat", chatFor("llama3.2", "second"))
			if tt.waits {
				waitFor(t, "second request queued", func() bool { return pendingOf(s) == 1 })
				notYet(t, "second request", second)
				finish()
				await(t, "second request", second)
			} else {
				await(t, "second request", second)
				finish()
			}
			if st := s.Stats(); st.ColdLoads != 1 || st.BusyRejections != 0 {
				t.Errorf("ColdLoads = %d, BusyRejections = %d; want 1, 0", st.ColdLoads, st.BusyRejections)
			}
			checkIdle(t, s)
		})
	}
}

func TestSchedLoadAndEvict(t *testing.T) {
	const loadTime = 100 * time.Millisecond
	tests := []struct {
		name          string
		maxLoaded     int
		sequence      []string
		wantLoads     int64
		wantEvictions int64
		wantPS        []string // sorted
	}{
		{"one loaded model", 1, []string{"a", "b", "a"}, 3, 2, []string{"a:latest"}},
		{"two loaded models", 2, []string{"a", "b", "a"}, 2, 0, []string{"a:latest", "b:latest"}},
		{"same model", 1, []string{"a", "a", "a"}, 1, 0, []string{"a:latest"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newSchedServer(t, Config{Models: []string{"a", "b"}, Tokens: 2},
				SchedulerConfig{MaxLoadedModels: tt.maxLoaded, LoadTime: loadTime})
			loaded := map[string]bool{}
			for i, model := range tt.sequence {
				var got metrics
				body := readAll(t, do(t, "POST", s.URL()+"/api/chat", chatFor(model, "hi")))
				if err := json.Unmarshal([]byte(body), &got); err != nil {
					t.Fatal(err)
				}
				cold := !loaded[model]
				if cold && got.LoadDuration < loadTime {
					t.Errorf("request %d (%s, cold): load_duration = %v, want >= %v", i, model, got.LoadDuration, loadTime)
				}
				loaded[model] = true
				if tt.maxLoaded == 1 {
					loaded = map[string]bool{model: true}
				}
			}
			st := s.Stats()
			if st.ColdLoads != tt.wantLoads || st.Evictions != tt.wantEvictions {
				t.Errorf("ColdLoads = %d, Evictions = %d; want %d, %d", st.ColdLoads, st.Evictions, tt.wantLoads, tt.wantEvictions)
			}
			got := psNames(t, s)
			slices.Sort(got)
			if !slices.Equal(got, tt.wantPS) {
				t.Errorf("ps = %v, want %v", got, tt.wantPS)
			}
			checkIdle(t, s)
		})
	}
}

// TestSchedEvictWaitsForIdle checks that a busy model is not evicted: the
// request for another model waits until it is idle.
func TestSchedEvictWaitsForIdle(t *testing.T) {
	s := newSchedServer(t, Config{Models: []string{"a", "b"}, Tokens: 2}, SchedulerConfig{})
	finish := holdSlot(t, s, "a")
	other := send(t.Context(), s, "/api/chat", chatFor("b", "hi"))
	waitFor(t, "request for b pending", func() bool { return pendingOf(s) == 1 })
	notYet(t, "request for b", other)
	if got := psNames(t, s); !slices.Equal(got, []string{"a:latest"}) {
		t.Errorf("ps while a is busy = %v, want [a:latest]", got)
	}
	finish()
	await(t, "request for b", other)
	if st := s.Stats(); st.ColdLoads != 2 || st.Evictions != 1 {
		t.Errorf("ColdLoads = %d, Evictions = %d; want 2, 1", st.ColdLoads, st.Evictions)
	}
	if got := psNames(t, s); !slices.Equal(got, []string{"b:latest"}) {
		t.Errorf("ps = %v, want [b:latest]", got)
	}
	checkIdle(t, s)
}

func TestSchedPromptCache(t *testing.T) {
	const tokenTime = 2 * time.Millisecond
	s := newSchedServer(t, Config{Tokens: 3}, SchedulerConfig{PromptTokenTime: tokenTime})
	reply := ReplyText(3) // "The quick brown": 3 words
	steps := []struct {
		name       string
		path, body string
		wantPrompt int // prompt_eval_count
		wantCached int
	}{
		{"first turn", "/api/chat",
			`{"model":"llama3.2","stream":false,"messages":[{"role":"user","content":"one two three four"}]}`, 4, 0},
		{"second turn extends it", "/api/chat",
			`{"model":"llama3.2","stream":false,"messages":[{"role":"user","content":"one two three four"},` +
				`{"role":"assistant","content":"` + reply + `"},{"role":"user","content":"five six"}]}`, 9, 7},
		{"unrelated prompt", "/api/chat",
			`{"model":"llama3.2","stream":false,"messages":[{"role":"user","content":"seven eight"}]}`, 2, 0},
		{"same prompt again keeps one token to evaluate", "/api/chat",
			`{"model":"llama3.2","stream":false,"messages":[{"role":"user","content":"seven eight"}]}`, 2, 1},
		{"openai chat extends the native conversation", "/v1/chat/completions",
			`{"model":"llama3.2","messages":[{"role":"user","content":"seven eight"},` +
				`{"role":"assistant","content":"` + reply + `"},{"role":"user","content":"nine"}]}`, 6, 5},
		{"generate shares no prefix with chat", "/api/generate",
			`{"model":"llama3.2","stream":false,"prompt":"nine ten"}`, 2, 0},
		{"generate continues its own reply", "/api/generate",
			`{"model":"llama3.2","stream":false,"prompt":"nine ten ` + reply + ` eleven"}`, 6, 5},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			before := s.Stats()
			body := readAll(t, do(t, "POST", s.URL()+st.path, st.body))
			after := s.Stats()
			if got := after.PromptTokens - before.PromptTokens; got != int64(st.wantPrompt) {
				t.Errorf("PromptTokens grew by %d, want %d", got, st.wantPrompt)
			}
			if got := after.CachedPromptTokens - before.CachedPromptTokens; got != int64(st.wantCached) {
				t.Errorf("CachedPromptTokens grew by %d, want %d", got, st.wantCached)
			}
			if st.path == "/v1/chat/completions" {
				return
			}
			var m metrics
			if err := json.Unmarshal([]byte(body), &m); err != nil {
				t.Fatal(err)
			}
			want := time.Duration(st.wantPrompt-st.wantCached) * tokenTime
			if m.PromptEvalCount != st.wantPrompt || m.PromptEvalDuration != want {
				t.Errorf("prompt_eval_count = %d, prompt_eval_duration = %v; want %d, %v",
					m.PromptEvalCount, m.PromptEvalDuration, st.wantPrompt, want)
			}
			if m.TotalDuration < want {
				t.Errorf("total_duration = %v, want >= the prefill %v", m.TotalDuration, want)
			}
		})
	}
}

// TestSchedSlotChoice checks Ollama's two slot choices with two slots and
// two conversations taking turns: by default the second conversation takes
// the first slot (the longest shared prefix, the system prompt) and the
// first conversation loses its history; with the multi-user cache it takes
// the least recently used slot and both keep theirs.
func TestSchedSlotChoice(t *testing.T) {
	reply := ReplyText(3)
	turn1 := func(user string) string {
		return `{"model":"llama3.2","stream":false,"messages":[{"role":"system","content":"s1 s2 s3"},{"role":"user","content":"` + user + `"}]}`
	}
	turn2 := func(user string) string {
		return `{"model":"llama3.2","stream":false,"messages":[{"role":"system","content":"s1 s2 s3"},{"role":"user","content":"` + user +
			`"},{"role":"assistant","content":"` + reply + `"},{"role":"user","content":"more please"}]}`
	}
	tests := []struct {
		name      string
		multiUser bool
		// cached tokens of: A turn 1, B turn 1, A turn 2, B turn 2
		want [4]int64
	}{
		{"longest prefix (Ollama's default)", false, [4]int64{0, 3, 3, 3}},
		{"multi-user cache", true, [4]int64{0, 3, 8, 8}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newSchedServer(t, Config{Tokens: 3}, SchedulerConfig{NumParallel: 2, MultiUserCache: tt.multiUser})
			for i, body := range []string{turn1("a1 a2"), turn1("b1 b2"), turn2("a1 a2"), turn2("b1 b2")} {
				before := s.Stats().CachedPromptTokens
				readAll(t, do(t, "POST", s.URL()+"/api/chat", body))
				if got := s.Stats().CachedPromptTokens - before; got != tt.want[i] {
					t.Errorf("request %d: %d tokens from cache, want %d", i, got, tt.want[i])
				}
			}
		})
	}
}

// TestSchedClientLeaves checks that a request whose client leaves while it
// waits gives up its place, whatever it waits for.
func TestSchedClientLeaves(t *testing.T) {
	tests := []struct {
		name  string
		cfg   SchedulerConfig
		hold  string // model of a request that keeps a slot meanwhile; "" for none
		model string // model of the request that leaves
	}{
		{"queued for a slot", SchedulerConfig{}, "a", "a"},
		{"waiting for an idle model to evict", SchedulerConfig{}, "a", "b"},
		{"waiting for its load", SchedulerConfig{LoadTime: time.Minute}, "", "a"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newSchedServer(t, Config{Models: []string{"a", "b"}, Tokens: 2}, tt.cfg)
			finish := func() {}
			if tt.hold != "" {
				finish = holdSlot(t, s, tt.hold)
			}
			ctx, cancel := context.WithCancel(t.Context())
			leaving := send(ctx, s, "/api/chat", chatFor(tt.model, "bye"))
			waitFor(t, "request pending", func() bool { return pendingOf(s) == 1 })
			if tt.cfg.LoadTime > 0 {
				waitFor(t, "load started", func() bool {
					s.mu.Lock()
					defer s.mu.Unlock()
					return len(s.sched.runners) == 1
				})
			}
			cancel()
			if r := <-leaving; r.err == nil {
				t.Fatalf("cancelled request answered: %d %q", r.status, r.body)
			}
			waitFor(t, "ClientCancelled", func() bool { return s.Stats().ClientCancelled == 1 })
			finish()
			checkIdle(t, s)
			if tt.cfg.LoadTime > 0 { // the abandoned load left nothing behind
				s.mu.Lock()
				n := len(s.sched.runners)
				s.mu.Unlock()
				if n != 0 {
					t.Errorf("runners after an abandoned load = %d, want 0", n)
				}
				return
			}
			await(t, "next request", send(t.Context(), s, "/api/chat", chatFor(tt.model, "next")))
			checkIdle(t, s)
		})
	}
}

func TestSchedKeepAlive(t *testing.T) {
	tests := []struct {
		name        string
		keepAlive   time.Duration
		loadFirst   bool // send a load request before body
		body        string
		wantGone    bool // unloaded (at once or after keepAlive)
		wantForever bool // else expires_at is about DefaultKeepAlive away
	}{
		{"default keeps it", 0, false, chatFor("llama3.2", "hi"), false, false},
		{"expires after keep-alive", 20 * time.Millisecond, false, chatFor("llama3.2", "hi"), true, false},
		{"request keep_alive 0 unloads after it", 0, false,
			`{"model":"llama3.2","stream":false,"keep_alive":0,"messages":[{"role":"user","content":"hi"}]}`, true, false},
		{"load request with keep_alive 0 unloads", 0, true, `{"model":"llama3.2","keep_alive":"0s"}`, true, false},
		{"request keep_alive -1 keeps it", 20 * time.Millisecond, false,
			`{"model":"llama3.2","stream":false,"keep_alive":-1,"messages":[{"role":"user","content":"hi"}]}`, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newSchedServer(t, Config{Tokens: 2}, SchedulerConfig{KeepAlive: tt.keepAlive})
			if tt.loadFirst {
				readAll(t, do(t, "POST", s.URL()+"/api/chat", `{"model":"llama3.2"}`))
				if got := psNames(t, s); len(got) != 1 {
					t.Fatalf("ps after a load request = %v, want one model", got)
				}
			}
			start := time.Now()
			if resp := do(t, "POST", s.URL()+"/api/chat", tt.body); resp.StatusCode != http.StatusOK {
				t.Fatalf("status = %d: %s", resp.StatusCode, readAll(t, resp))
			} else {
				readAll(t, resp)
			}
			if tt.wantGone {
				waitFor(t, "model unloaded", func() bool { return len(psNames(t, s)) == 0 })
				return
			}
			var ps struct {
				Models []processModel `json:"models"`
			}
			if err := json.Unmarshal([]byte(readAll(t, do(t, "GET", s.URL()+"/api/ps", ""))), &ps); err != nil {
				t.Fatal(err)
			}
			if len(ps.Models) != 1 {
				t.Fatalf("ps = %+v, want one model", ps.Models)
			}
			m := ps.Models[0]
			if m.Name != "llama3.2:latest" || m.SizeVRAM != m.Size || m.Size == 0 || m.Digest == "" {
				t.Errorf("ps entry = %+v", m)
			}
			switch {
			case tt.wantForever && m.ExpiresAt.Before(time.Now().AddDate(1, 0, 0)):
				t.Errorf("expires_at = %v, want far in the future", m.ExpiresAt)
			case !tt.wantForever && (m.ExpiresAt.Before(start.Add(DefaultKeepAlive-time.Minute)) || m.ExpiresAt.After(time.Now().Add(DefaultKeepAlive))):
				t.Errorf("expires_at = %v, want about %v from %v", m.ExpiresAt, DefaultKeepAlive, start)
			}
		})
	}
}

func TestSchedCloseEndsWaiters(t *testing.T) {
	base := runtime.NumGoroutine()
	cfg := Config{Models: []string{"a", "b"}, Tokens: 2, Scheduler: &SchedulerConfig{LoadTime: 20 * time.Millisecond}}
	s, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Post(s.URL()+"/api/chat", "application/json", strings.NewReader(chatFor("a", "hold")))
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, resp)
	holder := send(t.Context(), s, "/api/chat", `{"model":"a","messages":[{"role":"user","content":"gated"}]}`, FaultHeader, FaultGated)
	waitFor(t, "slot taken", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.sched.runners["a:latest"].refs == 1
	})
	waiters := []<-chan result{
		send(t.Context(), s, "/api/chat", chatFor("a", "queued")),
		send(t.Context(), s, "/api/chat", chatFor("b", "evicting")),
	}
	waitFor(t, "two pending", func() bool { return pendingOf(s) == 2 })
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for _, ch := range append(waiters, holder) {
		select {
		case <-ch:
		case <-time.After(2 * time.Second):
			t.Fatal("a client still waits after Close")
		}
	}
	http.DefaultClient.CloseIdleConnections()
	waitFor(t, "goroutines back to baseline", func() bool { return runtime.NumGoroutine() <= base })
}

func TestSchedConfig(t *testing.T) {
	tests := []struct {
		name    string
		sc      SchedulerConfig
		wantErr string
	}{
		{"zero", SchedulerConfig{}, ""},
		{"negative parallel", SchedulerConfig{NumParallel: -1}, "scheduler.num_parallel"},
		{"negative queue", SchedulerConfig{MaxQueue: -1}, "scheduler.max_queue"},
		{"negative loaded", SchedulerConfig{MaxLoadedModels: -1}, "scheduler.max_loaded_models"},
		{"negative load time", SchedulerConfig{LoadTime: -1}, "scheduler.load_time"},
		{"negative prompt token time", SchedulerConfig{PromptTokenTime: -1}, "scheduler.prompt_token_time"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sc := tt.sc
			s, err := NewServer(Config{Scheduler: &sc})
			if s != nil {
				defer s.Close()
			}
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("NewServer: %v", err)
				}
				if sc != tt.sc {
					t.Errorf("NewServer changed the caller's config to %+v", sc)
				}
				if got := s.cfg.Scheduler; got.NumParallel != DefaultNumParallel || got.MaxQueue != DefaultMaxQueue ||
					got.MaxLoadedModels != DefaultMaxLoadedModels || got.KeepAlive != DefaultKeepAlive {
					t.Errorf("defaults = %+v", *got)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("err = %v, want it to name %s", err, tt.wantErr)
			}
		})
	}
}
