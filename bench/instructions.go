package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
)

// With -instructions, bench does not time anything. It runs each proxy in
// turn under valgrind's callgrind and counts the instructions it executes
// in user space per request, per stream and per frame, over a fixed number
// of requests. On this kind of machine (a shared VM) CPU time per request
// moves ±30 % between two runs of the same build, so a change of a few
// per cent cannot be seen in the timed table; an instruction count moves
// ±1 % and can. It does not count the kernel (system calls, which -syscalls
// counts), cache misses or waiting, so it ranks a proxy's own code, not its
// speed: use it to judge a change to the gateway, and the timed table to
// judge the gateway against nginx.

// valgrindPath is where Debian's valgrind package puts it.
const valgrindPath = "/usr/bin/valgrind"

// instructionLoad is the fixed work measured for each proxy.
type instructionLoad struct {
	requests int // non-stream requests
	streams  int // streams of each length
	conns    int // concurrent connections
}

// Reply lengths for the -instructions loads: the non-stream reply has the
// fake's default length, as in the timed table; the per-frame figure is
// the difference between streams of two lengths.
const (
	shortStreamTokens = 20
	longStreamTokens  = 100
)

// The paced load: streams of shortStreamTokens with this gap between
// tokens, as a model sends them, over fewer connections so that a proxy
// slowed down fifty times by valgrind still gets its frames one by one.
// Unpaced, the frames of a stream arrive together and are read together,
// so the other rows miss what a proxy spends waiting for each token: the
// wake-up, the deadline re-armed, a stack grown while parked.
const (
	pacedTokenGap = 5 * time.Millisecond
	pacedConns    = 5
)

var (
	instrChatBody  = []byte(`{"model":"llama3.2","messages":[{"role":"user","content":"hi"}],"stream":false}`)
	instrShortBody = []byte(fmt.Sprintf(`{"model":"llama3.2","messages":[{"role":"user","content":"hi"}],"options":{"num_predict":%d}}`, shortStreamTokens))
	instrLongBody  = []byte(`{"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}`)
	// The paced fake's warm-up: one token, so it waits one gap, not a
	// hundred.
	instrPacedWarmBody = []byte(`{"model":"llama3.2","messages":[{"role":"user","content":"hi"}],"stream":false,"options":{"num_predict":1}}`)
	errNoCallgrind     = errors.New("valgrind not found (apt-get install valgrind)")
	callgrindTotals    = []byte("totals:")
)

// instructionCounts are one proxy's results, in instructions.
type instructionCounts struct {
	perRequest, perShortStream, perLongStream, perPacedStream float64
}

// perFrame is what one more frame of a stream costs.
func (c instructionCounts) perFrame() float64 {
	return (c.perLongStream - c.perShortStream) / (longStreamTokens - shortStreamTokens)
}

// runInstructions measures each proxy of the stack in turn and prints the
// table.
func runInstructions(load instructionLoad, withNginx, withBare bool, cpu int, dir string) error {
	if _, err := os.Stat(valgrindPath); err != nil {
		return errNoCallgrind
	}
	fake, err := spawn(serveFlags{role: roleFake, tokens: longStreamTokens, dir: dir}, cpu)
	if err != nil {
		return fmt.Errorf("fake: %w", err)
	}
	defer fake.close()
	paced, err := spawn(serveFlags{role: roleFake, tokens: longStreamTokens, delay: pacedTokenGap, dir: dir}, cpu)
	if err != nil {
		return fmt.Errorf("paced fake: %w", err)
	}
	defer paced.close()
	upstreams := [2]instrUpstream{
		{fake.targets[0].addr, load.conns, instrChatBody},
		{paced.targets[0].addr, pacedConns, instrPacedWarmBody},
	}

	roles := []string{}
	if withNginx {
		roles = append(roles, roleNginx)
	}
	roles = append(roles, roleGateway, roleGatewayNoLog)
	if withBare {
		roles = append(roles, roleBare)
	}
	var names []string
	var counts []instructionCounts
	for _, role := range roles {
		name, c, err := countInstructions(role, upstreams, load, cpu, dir)
		if err != nil {
			return fmt.Errorf("%s: %w", role, err)
		}
		fmt.Fprintf(os.Stderr, "bench: -instructions %-18s %.0f per request\n", name, c.perRequest)
		names = append(names, name)
		counts = append(counts, c)
	}

	fmt.Printf("callgrind, user-space instructions of each proxy's process(es); %d non-stream requests and %d streams "+
		"of %d and of %d tokens, %d connections, and as many of %d tokens %v apart over %d connections, after a "+
		"warm-up; the servers run one at a time under valgrind, so nothing here is a time\n\n", load.requests, load.streams,
		shortStreamTokens, longStreamTokens, load.conns, shortStreamTokens, pacedTokenGap, pacedConns)
	var b strings.Builder
	b.WriteString(tableHeader([]string{"instructions"}, names) + "\n")
	row := func(label string, get func(instructionCounts) float64) {
		b.WriteString("| " + label + " |")
		for _, c := range counts {
			fmt.Fprintf(&b, " %.0f |", get(c))
		}
		b.WriteString("\n")
	}
	row("per non-stream request", func(c instructionCounts) float64 { return c.perRequest })
	row(fmt.Sprintf("per stream of %d tokens", shortStreamTokens), func(c instructionCounts) float64 { return c.perShortStream })
	row("per further frame", instructionCounts.perFrame)
	row(fmt.Sprintf("per stream of %d tokens, %v apart", shortStreamTokens, pacedTokenGap), func(c instructionCounts) float64 { return c.perPacedStream })
	fmt.Print(b.String())
	return nil
}

// countInstructions measures role by difference: one run under callgrind
// serves only a warm-up, each other run the warm-up and then one load, and
// a load's count is what its run used beyond the warm-up's. Start-up,
// warm-up and shutdown cancel out. (Switching the count on and off with
// callgrind_control instead would need every process to take the command:
// nginx's worker, asleep in epoll_wait, does not until a request comes.)
// The paced load runs against the paced fake, by difference with a
// warm-up-only run of its own.
func countInstructions(role string, upstreams [2]instrUpstream, load instructionLoad, cpu int, dir string) (string, instructionCounts, error) {
	var c instructionCounts
	var name string
	var base [2]int64
	for i, up := range upstreams {
		var err error
		name, base[i], err = instructionRun(role, up, cpu, dir, 0, nil, false)
		if err != nil {
			return "", c, fmt.Errorf("warm-up only: %w", err)
		}
	}
	for _, step := range []struct {
		upstream int
		n        int
		body     []byte
		stream   bool
		into     *float64
	}{
		{0, load.requests, instrChatBody, false, &c.perRequest},
		{0, load.streams, instrShortBody, true, &c.perShortStream},
		{0, load.streams, instrLongBody, true, &c.perLongStream},
		{1, load.streams, instrShortBody, true, &c.perPacedStream},
	} {
		_, total, err := instructionRun(role, upstreams[step.upstream], cpu, dir, step.n, step.body, step.stream)
		if err != nil {
			return "", c, err
		}
		*step.into = float64(total-base[step.upstream]) / float64(step.n)
	}
	return name, c, nil
}

// warmupRequests are served by every -instructions run before its load.
const warmupRequests = 200

// instrUpstream is a fake a proxy is counted in front of: its address, the
// connections the load uses and the warm-up's request body.
type instrUpstream struct {
	addr     string
	conns    int
	warmBody []byte
}

// instructionRun starts role under callgrind in front of up, sends the
// warm-up and then n requests with body, stops the server and returns the
// instructions its process(es) executed, from the files callgrind writes
// at exit.
func instructionRun(role string, up instrUpstream, cpu int, dir string, n int, body []byte, stream bool) (string, int64, error) {
	// Not under dir: nginx's worker runs as nobody and writes its own file
	// here, and dir is private.
	out, err := os.MkdirTemp("", "vega-callgrind-"+role+"-")
	if err != nil {
		return "", 0, err
	}
	defer os.RemoveAll(out)
	if err := os.Chmod(out, 0o777); err != nil {
		return "", 0, err
	}
	callgrind := []string{valgrindPath, "--tool=callgrind", "--callgrind-out-file=" + filepath.Join(out, "cg.%p")}
	// Go preempts a long-running goroutine with a signal (SIGURG), which
	// trips an assertion in callgrind's signal handling; Go servers are
	// counted without asynchronous preemption. nginx is counted alone (its
	// master and the worker it forks), not the Go child that starts it.
	wrap := append([]string{"env", "GODEBUG=asyncpreemptoff=1"}, callgrind...)
	if role == roleNginx {
		wrap = []string{"env", nginxWrapEnv + "=" + strings.Join(callgrind, " ")}
	}
	st, err := spawn(serveFlags{role: role, upstream: up.addr, maxConns: up.conns + 56, dir: dir}, cpu, wrap...)
	if err != nil {
		return "", 0, err
	}
	t := st.targets[0]
	runErr := instructionLoadRun(t.addr, up.conns, warmupRequests, up.warmBody, false)
	if runErr == nil && n > 0 {
		runErr = instructionLoadRun(t.addr, up.conns, n, body, stream)
	}
	st.close()
	if runErr != nil {
		return "", 0, runErr
	}
	files, err := filepath.Glob(filepath.Join(out, "cg.*"))
	if err != nil || len(files) == 0 {
		return "", 0, fmt.Errorf("no callgrind output in %s (%v)", out, err)
	}
	var total int64
	for _, f := range files {
		v, err := callgrindTotal(f)
		if err != nil {
			return "", 0, fmt.Errorf("%s: %w", f, err)
		}
		total += v
	}
	return t.name, total, nil
}

// callgrindTotal reads the "totals:" line of a callgrind dump.
func callgrindTotal(path string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return parseCallgrindTotal(b)
}

func parseCallgrindTotal(b []byte) (int64, error) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if v, ok := bytes.CutPrefix(sc.Bytes(), callgrindTotals); ok {
			return strconv.ParseInt(string(bytes.TrimSpace(v)), 10, 64)
		}
	}
	return 0, errors.New("no totals line")
}

// instructionLoadRun sends n requests over conns connections and checks
// every answer as the timed loads do: a reply with "done":true, or a stream
// whose lines are all JSON, the last with "done":true.
func instructionLoadRun(addr string, conns, n int, body []byte, stream bool) error {
	c := newClient(addr, conns, stream)
	defer c.CloseIdleConnections()
	var left atomic.Int64
	left.Store(int64(n))
	var fails failures
	var wg sync.WaitGroup
	for range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, resp, release := newCall(addr, "/api/chat", body)
			defer release()
			br := bufio.NewReaderSize(nil, 16<<10)
			var gaps []time.Duration
			for left.Add(-1) >= 0 {
				if stream {
					gaps = gaps[:0]
					oneStream(c, req, resp, br, time.Now(), &gaps, &fails)
					continue
				}
				err := c.DoTimeout(req, resp, requestTimeout)
				switch {
				case err != nil:
					fails.add("%v", err)
				case resp.StatusCode() != fasthttp.StatusOK || !bytes.Contains(resp.Body(), doneTrue):
					fails.add("status %d body %.200q", resp.StatusCode(), resp.Body())
				}
			}
		}()
	}
	wg.Wait()
	if fails.n > 0 {
		return fmt.Errorf("%d of %d requests failed, first: %s", fails.n, n, fails.first)
	}
	return nil
}
