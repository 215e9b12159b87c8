package access

import (
	"fmt"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// TestKeyLookupComparesEveryKey is B-35's structural test: find compares
// the presented key's digest with every configured digest, in constant
// time, without stopping at a match — so the time taken says nothing about
// which key (or whether any) matched.
func TestKeyLookupComparesEveryKey(t *testing.T) {
	var plain []string
	for i := range 7 {
		plain = append(plain, fmt.Sprintf("b35-key-%02d-0123456789abcdef0123456789", i))
	}
	k, err := NewKeyring(plain, nil)
	if err != nil {
		t.Fatal(err)
	}
	calls := 0
	orig := digestsEqual
	digestsEqual = func(a, b []byte) int { calls++; return orig(a, b) }
	defer func() { digestsEqual = orig }()
	for _, tc := range []struct {
		name, key string
		found     bool
	}{
		{"first key", plain[0], true},
		{"last key", plain[len(plain)-1], true},
		{"middle key", plain[3], true},
		{"no key", "b35-wrong-0123456789abcdef0123456789", false},
		{"empty", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			calls = 0
			if got := k.find([]byte(tc.key)) != nil; got != tc.found {
				t.Fatalf("found = %v, want %v", got, tc.found)
			}
			if calls != len(plain) {
				t.Fatalf("%d comparisons, want one per key (%d)", calls, len(plain))
			}
		})
	}
}

var timeZero time.Time

func headerWith(name, value string) *fasthttp.RequestHeader {
	var h fasthttp.RequestHeader
	h.Set(name, value)
	return &h
}
