// Command fakeollama runs ollamatest's fake Ollama in a process of its own,
// so a benchmark can keep it off the gateway's CPU accounting. It prints
// "listening http://ADDR" on stdout once it serves, and exits on SIGINT,
// SIGTERM or, unless -exit-on-stdin-eof=false, when its stdin closes (so it
// dies with the parent that holds the pipe). On exit it writes its Stats as
// one JSON line to stderr.
//
//	go run ./ollamatest/cmd/fakeollama -models a,b -parallel 1 -max-loaded 1 -load-time 2s -token-delay 5ms
//
// Any scheduler flag (-parallel, -max-queue, -max-loaded, -load-time,
// -prompt-token-time, -keep-alive) turns on scheduler mode, as -sched does.
// A benchmark that stops the fake with a signal should build it first: go
// run does not pass SIGTERM on to the program it runs.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/vega-gateway/vega-gateway/ollamatest"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	switch {
	case errors.Is(err, flag.ErrHelp):
		os.Exit(2)
	case err != nil:
		fmt.Fprintln(os.Stderr, "fakeollama:", err)
		os.Exit(1)
	}
}

// run serves until ctx ends or stdin reaches EOF. The goroutine that reads
// stdin ends with it (or with the process).
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("fakeollama", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg ollamatest.Config
	var sc ollamatest.SchedulerConfig
	fs.StringVar(&cfg.Addr, "addr", ollamatest.DefaultAddr, "TCP address to listen on")
	fs.DurationVar(&cfg.TokenDelay, "token-delay", 0, "pause between two streamed frames")
	fs.IntVar(&cfg.Tokens, "tokens", ollamatest.DefaultTokens, "tokens in a generated reply")
	models := fs.String("models", strings.Join(ollamatest.DefaultModels(), ","), "comma-separated model names")
	fs.DurationVar(&cfg.LoadDelay, "load-delay", 0, "first-request load delay per model (without -sched)")
	fs.DurationVar(&cfg.IdleTimeout, "idle-timeout", 0, "close keep-alive connections idle this long (0: never)")
	fs.IntVar(&cfg.RecordLimit, "record-limit", ollamatest.DefaultRecordLimit, "requests and connections kept for inspection")
	sched := fs.Bool("sched", false, "schedule like Ollama; implied by any of the flags below")
	fs.IntVar(&sc.NumParallel, "parallel", ollamatest.DefaultNumParallel, "requests running at once per loaded model (OLLAMA_NUM_PARALLEL)")
	fs.IntVar(&sc.MaxQueue, "max-queue", ollamatest.DefaultMaxQueue, "waiting requests beyond which 503 busy (OLLAMA_MAX_QUEUE)")
	fs.IntVar(&sc.MaxLoadedModels, "max-loaded", ollamatest.DefaultMaxLoadedModels, "models loaded at once (OLLAMA_MAX_LOADED_MODELS)")
	fs.DurationVar(&sc.LoadTime, "load-time", 0, "duration of a cold load")
	fs.DurationVar(&sc.PromptTokenTime, "prompt-token-time", 0, "prefill time per uncached prompt token")
	fs.DurationVar(&sc.KeepAlive, "keep-alive", ollamatest.DefaultKeepAlive, "idle time before a model unloads; negative: never (OLLAMA_KEEP_ALIVE)")
	fs.BoolVar(&sc.MultiUserCache, "multi-user-cache", false, "choose prompt-cache slots as OLLAMA_MULTIUSER_CACHE=1 does")
	stdinEOF := fs.Bool("exit-on-stdin-eof", true, "exit when stdin closes")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	cfg.Models = []string{}
	for _, m := range strings.Split(*models, ",") {
		if m = strings.TrimSpace(m); m != "" {
			cfg.Models = append(cfg.Models, m)
		}
	}
	var schedFlags []string
	explicitOff := false
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "parallel", "max-queue", "max-loaded", "load-time", "prompt-token-time", "keep-alive", "multi-user-cache":
			schedFlags = append(schedFlags, "-"+f.Name)
		case "sched":
			explicitOff = !*sched
		}
	})
	switch {
	case explicitOff && len(schedFlags) > 0:
		return fmt.Errorf("%s need the scheduler, but -sched=false", strings.Join(schedFlags, ", "))
	case *sched || len(schedFlags) > 0:
		cfg.Scheduler = &sc
	}

	s, err := ollamatest.NewServer(cfg)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if *stdinEOF {
		go func() {
			_, _ = io.Copy(io.Discard, stdin)
			cancel()
		}()
	}
	if _, err := fmt.Fprintf(stdout, "listening %s\n", s.URL()); err != nil {
		_ = s.Close()
		return err
	}
	<-ctx.Done()
	err = s.Close()
	st, _ := json.Marshal(s.Stats())
	fmt.Fprintf(stderr, "%s\n", st)
	return err
}
