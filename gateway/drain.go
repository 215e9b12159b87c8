package gateway

import (
	"context"
	"errors"
	"runtime/debug"
	"sync"
	"time"
)

// streamSet tracks the streams in flight, so a drain that outlives its
// deadline can end each with a terminal record rather than cut it.
type streamSet struct {
	mu sync.Mutex
	m  map[*stream]struct{}
}

func (ss *streamSet) add(s *stream) {
	ss.mu.Lock()
	if ss.m == nil {
		ss.m = make(map[*stream]struct{})
	}
	ss.m[s] = struct{}{}
	ss.mu.Unlock()
}

func (ss *streamSet) remove(s *stream) {
	ss.mu.Lock()
	delete(ss.m, s)
	ss.mu.Unlock()
}

func (ss *streamSet) len() int {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return len(ss.m)
}

func (ss *streamSet) abortAll() int {
	ss.mu.Lock()
	list := make([]*stream, 0, len(ss.m))
	for s := range ss.m {
		list = append(list, s)
	}
	ss.mu.Unlock()
	for _, s := range list {
		s.abort()
	}
	return len(list)
}

// abortGrace is how long aborted streams get to write their final record.
const abortGrace = 2 * time.Second

// Shutdown drains the gateway: new and queued requests get 503
// shutting_down at once, the listener stops accepting, and in-flight
// requests run on until ctx ends. Streams still running then end with a
// terminal shutting_down record (never a fake success), written within
// abortGrace. It returns ctx's error if anything had to be aborted.
func (g *Gateway) Shutdown(ctx context.Context) error {
	if g.draining.CompareAndSwap(false, true) {
		close(g.closing)
	}
	err := g.server.ShutdownWithContext(ctx)
	if err == nil {
		// Streams on hijacked connections are no longer the server's:
		// it did not wait for them.
		err = g.waitStreams(ctx)
	}
	if err == nil || !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
		return err
	}
	n := g.streams.abortAll()
	g.log.Warn().Int("streams", n).Msg("drain deadline reached: ending open streams with shutting_down")
	grace, cancel := context.WithTimeout(context.Background(), abortGrace)
	defer cancel()
	_ = g.waitStreams(grace)
	return err
}

// waitStreams waits until no stream is in flight, or ctx ends.
func (g *Gateway) waitStreams(ctx context.Context) error {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for g.streams.len() > 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}

// Streams is the number of streams in flight.
func (g *Gateway) Streams() int { return g.streams.len() }

// recovered logs and counts a panic caught at the request boundary.
func (g *Gateway) recovered(x *exchange, r any) {
	g.panics.Add(1)
	x.outcome = outcomeInternalError
	g.log.Error().Str("correlation_id", x.id).Interface("panic", r).Bytes("stack", debug.Stack()).Msg("panic recovered")
}
