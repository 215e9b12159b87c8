package gateway

import (
	"math/rand/v2"
	"strconv"
	"testing"
	"time"
)

// TestAppendMillis checks the access line's hand-written milliseconds
// against what zerolog wrote before for the same value (strconv's shortest
// 'f' form of ms(d)), on the edges and on a spread of random durations.
func TestAppendMillis(t *testing.T) {
	zerologForm := func(d time.Duration) string { return strconv.FormatFloat(ms(d), 'f', -1, 64) }
	for _, tc := range []struct {
		d    time.Duration
		want string
	}{
		{0, "0"},
		{999 * time.Nanosecond, "0"}, // below a microsecond
		{time.Microsecond, "0.001"},
		{10 * time.Microsecond, "0.01"},
		{100 * time.Microsecond, "0.1"},
		{110 * time.Microsecond, "0.11"},
		{101 * time.Microsecond, "0.101"},
		{time.Millisecond, "1"},
		{1050 * time.Microsecond, "1.05"},
		{12345678 * time.Microsecond, "12345.678"},
		{-1500 * time.Microsecond, "-1.5"},
		{72 * time.Hour, "259200000"},
	} {
		if got := string(appendMillis(nil, tc.d)); got != tc.want || got != zerologForm(tc.d) {
			t.Errorf("%v: got %q, want %q (zerolog %q)", tc.d, got, tc.want, zerologForm(tc.d))
		}
	}
	r := rand.New(rand.NewPCG(1, 2))
	for range 200000 {
		// Up to about 3 years, spread over every order of magnitude.
		d := time.Duration(r.Int64N(int64(1) << r.IntN(57)))
		if got, want := string(appendMillis(nil, d)), zerologForm(d); got != want {
			t.Fatalf("%d ns: got %q, zerolog wrote %q", d, got, want)
		}
	}
}
