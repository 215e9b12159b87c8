package trace

import (
	"bytes"
	"io"
	"sync"
	"time"
)

// BatchWriter is the log's queue: Write copies a line in and returns at
// once, and one goroutine writes out whatever has queued since its last
// write, in one Write to the destination, at most once per WriteInterval.
// Under load that is one write system call per sink per interval, not per
// line — with the log file and stdout both on, an access line per request
// would otherwise cost two of them, a visible share of a proxied request
// (nginx's access_log buffer=… flush=… does the same). A line written after
// a quiet spell goes out at once; under load a line waits at most
// WriteInterval. A request never waits for the disk:
// when maxLines lines are queued (a slow or failing disk), further lines
// are dropped and counted. The lock is held only to copy a line in or to
// swap the queue out.
type BatchWriter struct {
	out      io.Writer
	maxLines int
	dropped  func(n int)

	mu     sync.Mutex
	buf    []byte
	lines  int
	closed bool

	wake chan struct{}
	stop chan struct{}
	done chan struct{}
	once sync.Once
}

// maxWriteBytes bounds one write to the destination (cut at a line end):
// lumberjack refuses a write larger than its rotation size.
const maxWriteBytes = 256 << 10

// WriteInterval is the least time between two writes to the destination.
// 10 ms keeps `tail -f` live while a busy gateway writes its log 100
// times a second rather than once per request; lines queue meanwhile,
// within maxLines.
const WriteInterval = 10 * time.Millisecond

// NewBatchWriter starts the writer goroutine; Close stops it. dropped (may
// be nil) is told about lines refused because the queue was full.
func NewBatchWriter(out io.Writer, maxLines int, dropped func(n int)) *BatchWriter {
	w := &BatchWriter{
		out: out, maxLines: max(1, maxLines), dropped: dropped,
		wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{}),
	}
	go w.run()
	return w
}

// Write queues p, one log line (zerolog writes each event in one call).
// It never blocks on the destination and never fails.
func (w *BatchWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	if w.closed || w.lines >= w.maxLines {
		w.mu.Unlock()
		if w.dropped != nil {
			w.dropped(1)
		}
		return len(p), nil
	}
	first := w.lines == 0
	w.buf = append(w.buf, p...)
	w.lines++
	w.mu.Unlock()
	if first {
		select {
		case w.wake <- struct{}{}:
		default:
		}
	}
	return len(p), nil
}

func (w *BatchWriter) run() {
	defer close(w.done)
	var batch []byte
	var last time.Time
	pause := time.NewTimer(0)
	<-pause.C
	defer pause.Stop()
	for {
		select {
		case <-w.wake:
		case <-w.stop:
			w.flush(batch)
			return
		}
		// Let lines gather if the last write was less than an interval ago.
		if wait := time.Until(last.Add(WriteInterval)); wait > 0 {
			pause.Reset(wait)
			select {
			case <-pause.C:
			case <-w.stop:
				w.flush(batch)
				return
			}
		}
		batch = w.flush(batch)
		last = time.Now()
	}
}

// flush swaps the queue out and writes it; it returns the emptied buffer
// for the next swap, so the two buffers are reused.
func (w *BatchWriter) flush(batch []byte) []byte {
	w.mu.Lock()
	batch, w.buf = w.buf, batch[:0]
	w.lines = 0
	w.mu.Unlock()
	for rest := batch; len(rest) > 0; {
		n := len(rest)
		if n > maxWriteBytes {
			if i := bytes.LastIndexByte(rest[:maxWriteBytes], '\n'); i >= 0 {
				n = i + 1
			}
		}
		// A failing destination is the destination's to report (see
		// main's fileWriter); the lines are gone either way.
		_, _ = w.out.Write(rest[:n])
		rest = rest[n:]
	}
	if cap(batch) > 4*maxWriteBytes {
		batch = nil // a burst's buffer is not kept for good
	}
	return batch[:0]
}

// Close writes what is queued and stops the goroutine; later lines are
// dropped. It is safe to call more than once.
func (w *BatchWriter) Close() error {
	w.once.Do(func() {
		w.mu.Lock()
		w.closed = true
		w.mu.Unlock()
		close(w.stop)
		<-w.done
	})
	return nil
}

// LineWriter hands each line of a batch to W in its own Write, for
// destinations that parse one event per call (zerolog's ConsoleWriter).
type LineWriter struct{ W io.Writer }

func (l LineWriter) Write(p []byte) (int, error) {
	for rest := p; len(rest) > 0; {
		n := bytes.IndexByte(rest, '\n') + 1
		if n == 0 {
			n = len(rest)
		}
		if _, err := l.W.Write(rest[:n]); err != nil {
			return len(p) - len(rest), err
		}
		rest = rest[n:]
	}
	return len(p), nil
}
