package trace

import (
	"regexp"
	"strings"
	"testing"
)

var (
	acceptedID = regexp.MustCompile(`^[A-Za-z0-9._-]{1,128}$`)
	uuidV4     = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
)

func TestResolve(t *testing.T) {
	for _, tc := range []struct {
		name        string
		corr, reqID string
		want        string // "" means a fresh UUIDv4
		replaced    bool
		reason      string
	}{
		{"absent", "", "", "", false, ""},
		{"valid", "abc-123", "", "abc-123", false, ""},
		{"w3c trace id", "4bf92f3577b34da6a3ce929d0e0e4736", "", "4bf92f3577b34da6a3ce929d0e0e4736", false, ""},
		{"max length", strings.Repeat("a", 128), "", strings.Repeat("a", 128), false, ""},
		{"too long", strings.Repeat("a", 129), "", "", true, ReasonTooLong},
		{"space", "a b", "", "", true, ReasonBadChars},
		{"encoded crlf", "a%0d%0a", "", "", true, ReasonBadChars},
		{"quote", `a"b`, "", "", true, ReasonBadChars},
		{"utf8", "héllo", "", "", true, ReasonBadChars},
		{"request id alias", "", "req-9", "req-9", false, ""},
		{"correlation wins", "corr-1", "req-9", "corr-1", false, ""},
		{"invalid corr falls back to request id", "a b", "req-9", "req-9", true, ReasonBadChars},
		{"invalid request id", "", "a b", "", true, ReasonBadChars},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var c, r []byte
			if tc.corr != "" {
				c = []byte(tc.corr)
			}
			if tc.reqID != "" {
				r = []byte(tc.reqID)
			}
			got := Resolve(c, r)
			if tc.want != "" && got.ID != tc.want {
				t.Fatalf("ID = %q, want %q", got.ID, tc.want)
			}
			if tc.want == "" && !uuidV4.MatchString(got.ID) {
				t.Fatalf("ID = %q, want a UUIDv4", got.ID)
			}
			if got.Replaced != tc.replaced || got.Reason != tc.reason {
				t.Fatalf("Replaced=%v Reason=%q, want %v %q", got.Replaced, got.Reason, tc.replaced, tc.reason)
			}
		})
	}
}

// TestResolveRepeatedHeaders is B-46: with the header sent twice, the first
// valid X-Correlation-ID wins; else the first valid X-Request-ID; else a
// new ID, and the refusal reason is the first refused value's.
func TestResolveRepeatedHeaders(t *testing.T) {
	for _, tc := range []struct {
		name        string
		corr, reqID []string
		want        string // "" means a fresh UUIDv4
		replaced    bool
	}{
		{"one each", []string{"corr-1"}, []string{"req-1"}, "corr-1", false},
		{"two valid: first wins", []string{"corr-1", "corr-2"}, nil, "corr-1", false},
		{"invalid then valid", []string{"a b", "corr-2"}, []string{"req-1"}, "corr-2", false},
		{"two invalid, valid request id", []string{"a b", "c d"}, []string{"req-1"}, "req-1", true},
		{"request id twice", nil, []string{"a b", "req-2"}, "req-2", false},
		{"nothing valid", []string{"a b"}, []string{"c d", "e f"}, "", true},
		{"empty then valid", []string{"", "corr-2"}, nil, "corr-2", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := Resolve(Pick(byteValues(tc.corr)), Pick(byteValues(tc.reqID)))
			if tc.want != "" && got.ID != tc.want {
				t.Fatalf("ID = %q, want %q", got.ID, tc.want)
			}
			if tc.want == "" && !uuidV4.MatchString(got.ID) {
				t.Fatalf("ID = %q, want a UUIDv4", got.ID)
			}
			if got.Replaced != tc.replaced {
				t.Fatalf("Replaced = %v, want %v", got.Replaced, tc.replaced)
			}
		})
	}
	if got := Pick(nil); got != nil {
		t.Fatalf("Pick(nil) = %q, want nil", got)
	}
}

func byteValues(ss []string) [][]byte {
	var out [][]byte
	for _, s := range ss {
		out = append(out, []byte(s))
	}
	return out
}

func FuzzCorrelationID(f *testing.F) {
	for _, s := range []string{"", "abc-123", strings.Repeat("x", 129), "a\r\nb", "%0d%0a", `"{}=`, "héllo", "\u202e", "a|b", "a%b"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		r := Resolve(in, nil)
		for i := 0; i < len(r.ID); i++ {
			if r.ID[i] < 0x21 || r.ID[i] >= 0x7f {
				t.Fatalf("ID %q has byte %#x", r.ID, r.ID[i])
			}
		}
		accepted := acceptedID.Match(in)
		if accepted != (r.ID == string(in)) || accepted == r.Replaced && len(in) > 0 {
			t.Fatalf("input %q: ID %q replaced=%v, accepted=%v", in, r.ID, r.Replaced, accepted)
		}
		if !accepted && !uuidV4.MatchString(r.ID) {
			t.Fatalf("replacement %q is not a UUIDv4", r.ID)
		}
	})
}

func TestParseTraceparent(t *testing.T) {
	valid := "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	c := ParseTraceparent([]byte(valid))
	if c.Started || string(c.TraceID[:]) != "4bf92f3577b34da6a3ce929d0e0e4736" || string(c.ParentID[:]) == "00f067aa0ba902b7" || string(c.Flags[:]) != "01" ||
		string(c.ClientSpanID[:]) != "00f067aa0ba902b7" {
		t.Fatalf("valid: %+v", c)
	}
	for _, bad := range []string{"", "garbage", "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
		"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"} {
		c := ParseTraceparent([]byte(valid)) // a pooled Context reused for the next request
		c.ParseTraceparent([]byte(bad))
		if !c.Started || len(c.Traceparent()) != 55 || c.ClientSpanID != [16]byte{} {
			t.Fatalf("%q: %+v", bad, c)
		}
	}
}
