package admin

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/pprofhandler"
)

// Defaults of the periodic profiles (admin.profile_*).
const (
	DefaultProfileInterval = 10 * time.Minute
	DefaultProfileSeconds  = 30
	DefaultProfileKeep     = 6
)

// Profile kinds, the prefixes of their file names.
const (
	profileCPU  = "cpu"
	profileHeap = "heap"
)

// profileTimeLayout names files in UTC to the millisecond: names sort by
// time, and two rounds never share one.
const profileTimeLayout = "20060102T150405.000Z"

// profiler writes a CPU profile and a heap profile into dir every interval
// and keeps the newest keep of each kind.
type profiler struct {
	dir      string
	interval time.Duration
	cpu      time.Duration
	keep     int
	log      zerolog.Logger
}

// newProfiler validates the profile keys; nil when admin.profile_dir is
// empty. The directory is created if missing.
func newProfiler(cfg Config, log zerolog.Logger) (*profiler, error) {
	if cfg.ProfileDir == "" {
		return nil, nil
	}
	p := &profiler{dir: cfg.ProfileDir, interval: cfg.ProfileInterval, keep: cfg.ProfileKeep, log: log}
	if p.interval == 0 {
		p.interval = DefaultProfileInterval
	}
	seconds := cfg.ProfileSeconds
	if seconds == 0 {
		seconds = DefaultProfileSeconds
	}
	if p.keep == 0 {
		p.keep = DefaultProfileKeep
	}
	p.cpu = time.Duration(seconds) * time.Second
	switch {
	case p.interval < 0:
		return nil, fmt.Errorf("admin.profile_interval: must be positive, got %s", cfg.ProfileInterval)
	case seconds < 0:
		return nil, fmt.Errorf("admin.profile_seconds: must be positive, got %d", seconds)
	case p.cpu >= p.interval:
		return nil, fmt.Errorf("admin.profile_seconds: the CPU profile (%s) must be shorter than admin.profile_interval (%s)", p.cpu, p.interval)
	case p.keep < 0:
		return nil, fmt.Errorf("admin.profile_keep: must be positive, got %d", p.keep)
	}
	if err := os.MkdirAll(p.dir, 0o750); err != nil {
		return nil, fmt.Errorf("admin.profile_dir: %w", err)
	}
	return p, nil
}

// run writes a round of profiles every interval until ctx ends; it returns
// then, a CPU profile in progress stopped and kept. Errors are logged and
// the next round tries again.
func (p *profiler) run(ctx context.Context) {
	t := time.NewTicker(p.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := p.round(ctx); err != nil {
			p.log.Warn().Err(err).Str("dir", p.dir).Msg("periodic profile not written")
		}
	}
}

// round writes one CPU profile (p.cpu long, or until ctx ends) and one
// heap profile, then prunes both kinds.
func (p *profiler) round(ctx context.Context) error {
	stamp := time.Now().UTC().Format(profileTimeLayout)
	err := p.write(profileCPU, stamp, func(f *os.File) error {
		if err := pprof.StartCPUProfile(f); err != nil {
			return err // another CPU profile runs (/debug/pprof/profile)
		}
		timer := time.NewTimer(p.cpu)
		select {
		case <-ctx.Done():
		case <-timer.C:
		}
		timer.Stop()
		pprof.StopCPUProfile()
		return nil
	})
	err = errors.Join(err, p.write(profileHeap, stamp, func(f *os.File) error {
		return pprof.Lookup("heap").WriteTo(f, 0)
	}))
	return errors.Join(err, p.prune(profileCPU), p.prune(profileHeap))
}

// write creates kind-stamp.pprof through a temporary name, so a reader
// never sees a half-written profile.
func (p *profiler) write(kind, stamp string, fill func(*os.File) error) error {
	name := filepath.Join(p.dir, kind+"-"+stamp+".pprof")
	f, err := os.CreateTemp(p.dir, "."+kind+"-*.tmp")
	if err != nil {
		return fmt.Errorf("%s profile: %w", kind, err)
	}
	err = fill(f)
	err = errors.Join(err, f.Close())
	if err == nil {
		err = os.Rename(f.Name(), name)
	}
	if err != nil {
		_ = os.Remove(f.Name())
		return fmt.Errorf("%s profile: %w", kind, err)
	}
	return nil
}

// prune removes all but the newest p.keep profiles of kind, and the
// temporaries of kind a process killed mid-profile left behind (none of
// this process's is open: rounds write, then prune, one after the other).
func (p *profiler) prune(kind string) error {
	names, err := profileFiles(p.dir, kind)
	if err != nil {
		return err
	}
	stale, _ := filepath.Glob(filepath.Join(p.dir, "."+kind+"-*.tmp"))
	var errs []error
	for _, n := range stale {
		if err := os.Remove(n); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	for _, n := range names[:max(0, len(names)-p.keep)] {
		if err := os.Remove(filepath.Join(p.dir, n)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// profileFiles lists dir's profiles of kind, oldest first.
func profileFiles(dir, kind string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("list profiles: %w", err)
	}
	var names []string
	for _, e := range entries {
		if n := e.Name(); !e.IsDir() && strings.HasPrefix(n, kind+"-") && strings.HasSuffix(n, ".pprof") {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	return names, nil
}

// RunProfiles writes the periodic profiles (admin.profile_dir) until ctx
// ends, and returns then; at once when they are off.
func (s *Server) RunProfiles(ctx context.Context) {
	if s.profiler != nil {
		s.profiler.run(ctx)
	}
}

// servePprof serves /debug/pprof/* (net/http/pprof's handlers) when
// admin.pprof is on; it reports whether the path was one of them.
func (s *Server) servePprof(ctx *fasthttp.RequestCtx, path string) bool {
	if !s.cfg.Pprof || (path != "/debug/pprof" && !strings.HasPrefix(path, "/debug/pprof/")) {
		return false
	}
	pprofhandler.PprofHandler(ctx)
	return true
}
