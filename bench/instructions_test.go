package main

import "testing"

func TestParseCallgrindTotal(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     int64
		ok       bool
	}{
		{"exit dump", "# callgrind format\nversion: 1\nevents: Ir\nsummary: 7785641\n\nfl=(1) x.c\nfn=(1) main\n3 5\ntotals: 7785641\n", 7785641, true},
		{"spaces", "events: Ir\ntotals:   42  \n", 42, true},
		{"cut short", "# callgrind format\nevents: Ir\nfl=(1) x.c\n", 0, false},
		{"not a number", "totals: many\n", 0, false},
	} {
		got, err := parseCallgrindTotal([]byte(tc.in))
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("%s: %d, %v; want %d (ok %v)", tc.name, got, err, tc.want, tc.ok)
		}
	}
}
