package main

import (
	"bufio"
	"encoding/json"
	"math"
	"slices"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/vega-gateway/vega-gateway/ollamatest"
)

// TestFleetConversationHitsCache runs two turns of a conversation against
// a fake in scheduler mode as the fleet clients send them: the second
// turn resends the first with its reply, so the fake finds all but the new
// user message in its slot's cache.
func TestFleetConversationHitsCache(t *testing.T) {
	fake, err := ollamatest.NewServer(ollamatest.Config{Tokens: 5, Models: []string{modelA},
		Scheduler: &ollamatest.SchedulerConfig{NumParallel: 1}})
	if err != nil {
		t.Fatal(err)
	}
	defer fake.Close()
	c := &fasthttp.HostClient{Addr: fake.Addr(), StreamResponseBody: true, ReadTimeout: 5 * time.Second}
	defer c.CloseIdleConnections()
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.Header.SetMethod(fasthttp.MethodPost)
	req.SetRequestURI("http://" + fake.Addr() + "/api/chat")
	br := bufio.NewReaderSize(nil, 4096)

	msgs := []chatMessage{{"system", "be brief and kind"}, {"user", "one two three"}}
	turn := func() fleetOutcome {
		body, _ := json.Marshal(struct {
			Model    string        `json:"model"`
			Messages []chatMessage `json:"messages"`
		}{modelA, msgs})
		req.SetBodyRaw(body)
		return fleetRequest(c, req, resp, br, time.Now())
	}
	o := turn()
	if !o.ok || o.reply != ollamatest.ReplyText(5) || o.ttft <= 0 {
		t.Fatalf("turn 1: %+v; want ok, reply %q, a TTFT", o, ollamatest.ReplyText(5))
	}
	msgs = append(msgs, chatMessage{"assistant", o.reply}, chatMessage{"user", "four five"})
	if o = turn(); !o.ok {
		t.Fatalf("turn 2: %+v", o)
	}
	st := fake.Stats()
	// turn 1: 4 + 3 tokens, none cached; turn 2: those, the 5 of the
	// reply and 2 new, all but the new ones cached.
	if st.PromptTokens != 7+14 || st.CachedPromptTokens != 12 {
		t.Errorf("prompt tokens %d, cached %d; want 21, 12", st.PromptTokens, st.CachedPromptTokens)
	}
}

func TestFleetRequestFailures(t *testing.T) {
	for _, tc := range []struct {
		name              string
		fault             string
		failedBefore, cut bool
	}{
		{"error line", "error_after=2", false, true},
		{"connection dies mid-stream", "die_after=2", false, true},
		{"error status", "fail_status=500", true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fake, err := ollamatest.NewServer(ollamatest.Config{Tokens: 5})
			if err != nil {
				t.Fatal(err)
			}
			defer fake.Close()
			c := &fasthttp.HostClient{Addr: fake.Addr(), StreamResponseBody: true, ReadTimeout: 5 * time.Second}
			defer c.CloseIdleConnections()
			req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
			defer fasthttp.ReleaseRequest(req)
			defer fasthttp.ReleaseResponse(resp)
			req.Header.SetMethod(fasthttp.MethodPost)
			req.SetRequestURI("http://" + fake.Addr() + "/api/chat")
			req.Header.Set(ollamatest.FaultHeader, tc.fault)
			req.SetBodyString(`{"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}`)
			o := fleetRequest(c, req, resp, bufio.NewReaderSize(nil, 4096), time.Now())
			if o.ok || o.failedBefore != tc.failedBefore || o.cut != tc.cut {
				t.Errorf("%+v; want failed before the response %v, cut %v", o, tc.failedBefore, tc.cut)
			}
		})
	}
}

func TestFakeStatsCombine(t *testing.T) {
	a := fakeStats{ColdLoads: 5, PromptTokens: 100, CachedPromptTokens: 80, Chats: 10}
	b := fakeStats{ColdLoads: 2, PromptTokens: 40, CachedPromptTokens: 30, Chats: 4}
	if got, want := a.sub(b), (fakeStats{ColdLoads: 3, PromptTokens: 60, CachedPromptTokens: 50, Chats: 6}); got != want {
		t.Errorf("sub: %+v, want %+v", got, want)
	}
	if got, want := a.add(b), (fakeStats{ColdLoads: 7, PromptTokens: 140, CachedPromptTokens: 110, Chats: 14}); got != want {
		t.Errorf("add: %+v, want %+v", got, want)
	}
	unknown := fakeStats{Chats: -1}
	if got := a.sub(unknown).Chats; got != -1 {
		t.Errorf("sub of an unknown count: %d, want -1", got)
	}
	if got := unknown.add(a).Chats; got != -1 {
		t.Errorf("add to an unknown count: %d, want -1", got)
	}
}

func TestFleetTargets(t *testing.T) {
	even := fleetResult{backends: [fleetSize]fakeStats{{Chats: 10}, {Chats: 10}, {Chats: 10}}}
	skewed := fleetResult{backends: [fleetSize]fakeStats{{Chats: 12}, {Chats: 10, BusyRejections: 2}, {Chats: 10}}}
	if got := shareSkew(even); got != 0 {
		t.Errorf("shareSkew(even) = %v, want 0", got)
	}
	// served 12/8/10 of 30: b1 has 1.2 times its third
	if got := shareSkew(skewed); math.Abs(got-20) > 1e-9 {
		t.Errorf("shareSkew(skewed) = %v, want 20", got)
	}
	ratio := fleetTarget{baseline: "round_robin", get: func(r fleetResult) float64 { return r.rps }, pass: atLeast(0.95), format: "%.2f"}
	res := map[string]fleetResult{"model_aware": {rps: 9}, "round_robin": {rps: 10}, "least_loaded": {rps: 0}}
	for _, tc := range []struct{ variant, want string }{
		{"model_aware", "0.90 ✗"},
		{"round_robin", "–"},
	} {
		if got := targetCell(ratio, tc.variant, res); got != tc.want {
			t.Errorf("targetCell(%s) = %q, want %q", tc.variant, got, tc.want)
		}
	}
	res["round_robin"] = fleetResult{}
	if got, want := targetCell(ratio, "model_aware", res), "n/a (baseline 0)"; got != want {
		t.Errorf("targetCell with a baseline of 0 = %q, want %q", got, want)
	}
}

func TestFleetVariants(t *testing.T) {
	for _, tc := range []struct {
		asked     string
		withNginx bool
		want      []string
		ok        bool
	}{
		{"model_aware,least_loaded,round_robin,nginx", true, []string{"model_aware", "least_loaded", "round_robin", "nginx"}, true},
		{"nginx,model_aware", false, []string{"model_aware"}, true},
		{"nginx", false, nil, false},
		{"model_aware,fastest", true, nil, false},
	} {
		got, err := fleetVariants(tc.asked, tc.withNginx)
		if (err == nil) != tc.ok || !slices.Equal(got, tc.want) {
			t.Errorf("fleetVariants(%q, %v) = %v, %v; want %v (ok %v)", tc.asked, tc.withNginx, got, err, tc.want, tc.ok)
		}
	}
}
