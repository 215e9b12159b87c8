package fleet

import "testing"

func TestConversationKey(t *testing.T) {
	sys := `{"role":"system","content":"You are a helpful assistant."}`
	turn1 := `{"model":"m","messages":[` + sys + `,{"role":"user","content":"Plan a trip to Rome"}]}`
	turn2 := `{"model":"m","messages":[` + sys + `,{"role":"user","content":"Plan a trip to Rome"},{"role":"assistant","content":"Day 1..."},{"role":"user","content":"And day 2?"}]}`
	other := `{"model":"m","messages":[` + sys + `,{"role":"user","content":"Plan a trip to Oslo"}]}`
	otherModel := `{"model":"n","messages":[` + sys + `,{"role":"user","content":"Plan a trip to Rome"}]}`
	anthropic := `{"model":"m","system":"be brief","messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}]}`
	tests := []struct {
		name string
		kind BodyKind
		a, b string
		same bool
	}{
		{"next turn of a chat", Messages, turn1, turn2, true},
		{"another conversation", Messages, turn1, other, false},
		{"another model", Messages, turn1, otherModel, false},
		{"generate: shared prefix", Prompt, `{"model":"m","prompt":"Q1"}`, `{"model":"m","prompt":"Q1"}`, true},
		{"generate: other prompt", Prompt, `{"model":"m","prompt":"Q1"}`, `{"model":"m","prompt":"Q2"}`, false},
		{"vega chat: turn 2 carries turn 1 in history", VegaChat, `{"prompt":"hello","system":"s"}`,
			`{"prompt":"again","system":"s","history":[{"role":"user","content":"hello"},{"role":"assistant","content":"hi"}]}`, true},
		{"anthropic content blocks", Messages, anthropic, anthropic, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, ca := Route(tt.kind, []byte(tt.a))
			_, cb := Route(tt.kind, []byte(tt.b))
			if tt.kind == VegaChat {
				ca, cb = ConversationKey(tt.kind, "m", []byte(tt.a)), ConversationKey(tt.kind, "m", []byte(tt.b))
			}
			ka, kb := ca.Key, cb.Key
			if ka == 0 || kb == 0 {
				t.Fatalf("keys %d, %d: want both set", ka, kb)
			}
			if (ka == kb) != tt.same {
				t.Fatalf("same = %v, want %v", ka == kb, tt.same)
			}
		})
	}
	for _, body := range []string{``, `not json`, `{"model":"m"}`, `{"model":"m","messages":[]}`} {
		if _, c := Route(Messages, []byte(body)); c.Key != 0 {
			t.Fatalf("Route(%q) key = %d, want 0", body, c.Key)
		}
	}
	if _, c := Route(NoConversation, []byte(turn1)); c.Key != 0 {
		t.Fatalf("embeddings got a key")
	}
	if _, c := Route(Messages, []byte(turn1)); c.Continues {
		t.Fatal("a first turn continues nothing")
	}
	if _, c := Route(Messages, []byte(turn2)); !c.Continues {
		t.Fatal("turn 2 carries turn 1: it continues the conversation")
	}
	if c := ConversationKey(VegaChat, "m", []byte(`{"prompt":"again","history":[{"role":"user","content":"hello"}]}`)); !c.Continues {
		t.Fatal("a /chat with history continues its conversation")
	}
	if m, _ := Route(Messages, []byte(`{"options":{"model":"x"},"model":"m","messages":[]}`)); m != "m" {
		t.Fatalf("model = %q, want the top-level one", m)
	}
}
