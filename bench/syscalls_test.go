package main

import (
	"slices"
	"testing"
)

func TestParsePerfStat(t *testing.T) {
	for _, tc := range []struct {
		name   string
		in     string
		all    float64
		byKind []float64 // reads, writes, epoll waits, runtime; nil: no result
	}{
		{
			name: "perf 6 output",
			in: "# started on Sun Nov 29 02:35:40 2026\n\n" +
				"4000,,syscalls:sys_enter_read,5003,100.00,,\n" +
				"10,,syscalls:sys_enter_recvfrom,5003,100.00,,\n" +
				"0,,syscalls:sys_enter_readv,5003,100.00,,\n" +
				"2000,,syscalls:sys_enter_write,5003,100.00,,\n" +
				"1000,,syscalls:sys_enter_writev,5003,100.00,,\n" +
				"300,,syscalls:sys_enter_epoll_pwait,5003,100.00,,\n" +
				"<not counted>,,syscalls:sys_enter_epoll_wait,0,0.00,,\n" +
				"20,,syscalls:sys_enter_futex,5003,100.00,,\n" +
				"30,,syscalls:sys_enter_nanosleep,5003,100.00,,\n" +
				"7500,,raw_syscalls:sys_enter,5003,100.00,,\n",
			all: 7500, byKind: []float64{4010, 3000, 300, 50},
		},
		{name: "no total", in: "4000,,syscalls:sys_enter_read,5003,100.00,,\n"},
		{name: "empty", in: ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := parsePerfStat([]byte(tc.in))
			if tc.byKind == nil {
				if got != nil {
					t.Fatalf("got %+v, want nil", got)
				}
				return
			}
			if got == nil || got.all != tc.all || !slices.Equal(got.byKind, tc.byKind) {
				t.Fatalf("got %+v, want all %v by kind %v", got, tc.all, tc.byKind)
			}
			per := got.per(1000)
			if per.all != tc.all/1000 || per.byKind[0] != tc.byKind[0]/1000 {
				t.Fatalf("per 1000: %+v", per)
			}
		})
	}
	if (*syscallCounts)(nil).per(10) != nil {
		t.Fatal("nil counts divided should stay nil")
	}
}
