package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/vega-gateway/vega-gateway/ollamatest"
)

// accessLog is what the gateway's log file says.
type accessLog struct {
	lines    int               // all lines
	invalid  int               // lines that are not JSON
	requests int               // access-log lines (message "request")
	perID    map[string]int    // access-log lines per correlation ID
	outcome  map[string]string // access-log outcome per correlation ID
	levels   map[string]int    // lines per level
}

func readAccessLog(path string) (*accessLog, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open gateway log: %w", err)
	}
	defer f.Close()
	a := &accessLog{perID: map[string]int{}, outcome: map[string]string{}, levels: map[string]int{}}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		a.lines++
		var m struct {
			Level   string `json:"level"`
			Message string `json:"message"`
			ID      string `json:"correlation_id"`
			Outcome string `json:"outcome"`
		}
		if json.Unmarshal(sc.Bytes(), &m) != nil {
			a.invalid++
			continue
		}
		a.levels[m.Level]++
		if m.Message == "request" {
			a.requests++
			a.perID[m.ID]++
			a.outcome[m.ID] = m.Outcome
		}
	}
	return a, sc.Err()
}

// report is the run's result.
type report struct {
	opts           options
	elapsed        time.Duration
	base, end      resources
	end5           resources     // 5 s after the load
	settledAfter   time.Duration // when end was sampled, after the load
	warmRSS        int64         // RSS at 1/6 of the run, after warm-up
	peak           resources
	load           *load
	fake           ollamatest.Stats
	logs           *accessLog
	failures       []string
	logOutcomes    map[string]map[string]int // kind → access-log outcome → n
	expectedCancel int
}

// judge lists every reason the run fails.
func (r *report) judge() {
	t := &r.load.t
	fail := func(format string, args ...any) { r.failures = append(r.failures, fmt.Sprintf(format, args...)) }
	if t.failed > 0 {
		fail("%d of %d requests lost, duplicated, misreported or wrong", t.failed, t.total)
	}
	if r.load.stuck > 0 {
		fail("%d requests still running after the grace period (lost)", r.load.stuck)
	}
	if r.logs.requests != t.total {
		fail("access-log lines %d != requests sent %d", r.logs.requests, t.total)
	}
	if r.logs.invalid > 0 {
		fail("%d log lines are not JSON", r.logs.invalid)
	}
	missing, multi := 0, 0
	r.logOutcomes = map[string]map[string]int{}
	for id, name := range t.ids {
		switch n := r.logs.perID[id]; {
		case n == 0:
			missing++
		case n > 1:
			multi++
		}
		if r.logOutcomes[name] == nil {
			r.logOutcomes[name] = map[string]int{}
		}
		o := r.logs.outcome[id]
		if o == "" {
			o = "(no line)"
		}
		r.logOutcomes[name][o]++
	}
	if missing > 0 || multi > 0 {
		fail("correlation IDs with no access-log line: %d, with more than one: %d", missing, multi)
	}
	if r.end.goroutines > r.base.goroutines+goroutineSlack {
		fail("goroutines %s after the load %d > start %d + %d", r.settledAfter, r.end.goroutines, r.base.goroutines, goroutineSlack)
	}
	if r.end.fds > r.base.fds+fdSlack {
		fail("open fds %s after the load %d > start %d + %d", r.settledAfter, r.end.fds, r.base.fds, fdSlack)
	}
	for _, k := range faultKinds {
		// The gateway leaves these before the fake is done writing.
		if k.client == clientAbort || k.name == "stall_after=N" || strings.HasPrefix(k.name, "ttft=") {
			r.expectedCancel += t.sent[k.name]
		}
	}
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

// tables returns the report's tables: title, header, rows.
func (r *report) tables() []table {
	t := &r.load.t
	settled := fmt.Sprintf("end +%s", r.settledAfter.Round(250*time.Millisecond))
	res := table{title: "Resources (whole process: fake + gateway + clients)",
		header: []string{"", "start", "after warm-up", "peak", "end +5s", settled},
		rows: [][]string{
			{"RSS", mib(r.base.rssBytes), mib(r.warmRSS), mib(r.peak.rssBytes), mib(r.end5.rssBytes), mib(r.end.rssBytes)},
			{"goroutines", fmt.Sprint(r.base.goroutines), "", fmt.Sprint(r.peak.goroutines), fmt.Sprint(r.end5.goroutines), fmt.Sprint(r.end.goroutines)},
			{"open fds", fmt.Sprint(r.base.fds), "", fmt.Sprint(r.peak.fds), fmt.Sprint(r.end5.fds), fmt.Sprint(r.end.fds)},
		}}
	out := table{title: "Outcomes per kind (client-observed; verdict columns are failures)",
		header: append(append([]string{"kind", "sent"}, outcomeColumns...), verdictColumns...)}
	out.header = append(out.header, "codes seen", "access-log outcomes")
	for _, k := range allKinds {
		row := []string{k.name, fmt.Sprint(t.sent[k.name])}
		for _, c := range outcomeColumns {
			row = append(row, fmt.Sprint(t.outcomes[k.name][c]))
		}
		for _, c := range verdictColumns {
			row = append(row, fmt.Sprint(t.verdicts[k.name][c]))
		}
		row = append(row, counts(t.codes[k.name]), counts(r.logOutcomes[k.name]))
		out.rows = append(out.rows, row)
	}
	rps := float64(t.total) / r.elapsed.Seconds()
	sum := table{title: "Totals", header: []string{"", "value"}, rows: [][]string{
		{"duration / concurrency / seed", fmt.Sprintf("%s / %d / %d", r.elapsed.Round(time.Second), r.opts.concurrency, r.opts.seed)},
		{"requests sent / per second", fmt.Sprintf("%d / %.1f", t.total, rps)},
		{"access-log lines (message=request) / all lines / not JSON", fmt.Sprintf("%d / %d / %d", r.logs.requests, r.logs.lines, r.logs.invalid)},
		{"log lines per level", counts(r.logs.levels)},
		{"fake: requests / peak conns / peak in flight", fmt.Sprintf("%d / %d / %d", r.fake.Requests, r.fake.PeakConns, r.fake.PeakInFlight)},
		{"fake: client_cancelled / expected (aborts + stalls + ttft)", fmt.Sprintf("%d / %d", r.fake.ClientCancelled, r.expectedCancel)},
		{"failed requests", fmt.Sprint(t.failed)},
	}}
	return []table{res, out, sum}
}

func counts(m map[string]int) string {
	var parts []string
	for _, k := range sortedKeys(m) {
		parts = append(parts, fmt.Sprintf("%s:%d", k, m[k]))
	}
	return strings.Join(parts, " ")
}

func (r *report) verdictLines() []string {
	var out []string
	if len(r.failures) == 0 {
		out = append(out, "PASS")
	}
	for _, f := range r.failures {
		out = append(out, "FAIL: "+f)
	}
	for _, e := range r.load.t.examples {
		out = append(out, "  "+e)
	}
	return out
}

func (r *report) text() string {
	var b strings.Builder
	for _, t := range r.tables() {
		t.text(&b)
	}
	for _, l := range r.verdictLines() {
		b.WriteString(l + "\n")
	}
	return b.String()
}

func (r *report) markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Soak run %s\n\n", time.Now().UTC().Format(time.RFC3339))
	for _, t := range r.tables() {
		t.markdown(&b)
	}
	b.WriteString("## Verdict\n\n```\n")
	for _, l := range r.verdictLines() {
		b.WriteString(l + "\n")
	}
	b.WriteString("```\n")
	return b.String()
}

type table struct {
	title  string
	header []string
	rows   [][]string
}

func (t table) text(b *strings.Builder) {
	w := make([]int, len(t.header))
	for _, row := range append([][]string{t.header}, t.rows...) {
		for i, c := range row {
			w[i] = max(w[i], len(c))
		}
	}
	fmt.Fprintf(b, "\n%s\n", t.title)
	for _, row := range append([][]string{t.header}, t.rows...) {
		for i, c := range row {
			fmt.Fprintf(b, "%-*s  ", w[i], c)
		}
		b.WriteString("\n")
	}
}

func (t table) markdown(b *strings.Builder) {
	fmt.Fprintf(b, "## %s\n\n| %s |\n|%s\n", t.title, strings.Join(t.header, " | "), strings.Repeat("---|", len(t.header)))
	for _, row := range t.rows {
		fmt.Fprintf(b, "| %s |\n", strings.Join(row, " | "))
	}
	b.WriteString("\n")
}
