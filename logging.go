package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/rs/zerolog"
	"gopkg.in/natefinch/lumberjack.v2"

	"github.com/vega-gateway/vega-gateway/trace"
)

// logSink is the root logger's destination: gateway.log (rotated by
// lumberjack) and stdout, behind a queue that one goroutine drains in
// batches (trace.BatchWriter: one write per sink for all the lines queued
// since the last, at most every trace.WriteInterval), so a slow or full
// disk drops lines (counted) instead of blocking a request.
type logSink struct {
	queue   *trace.BatchWriter
	file    *lumberjack.Logger
	Dropped atomic.Int64 // lines dropped because the queue was full
	// WriteErrors counts writes the log file refused (disk full, EIO, file
	// gone), each a batch of one or more lines. Those lines still reach
	// stdout; stderr gets one warning a minute while it lasts.
	WriteErrors atomic.Int64
}

// fileWriter is the log file as the multi-writer sees it: a failed write
// is counted and reported on stderr (rate-limited), never passed up, so
// the line still goes to stdout and nothing blocks. It runs on the
// queue's one draining goroutine, so lastWarn needs no lock.
type fileWriter struct {
	w        io.Writer
	sink     *logSink
	stderr   io.Writer
	lastWarn time.Time
}

// logWriteWarnEvery is how often a failing log file is reported on stderr.
const logWriteWarnEvery = time.Minute

func (f *fileWriter) Write(p []byte) (int, error) {
	if _, err := f.w.Write(p); err != nil {
		n := f.sink.WriteErrors.Add(1)
		if now := time.Now(); now.Sub(f.lastWarn) >= logWriteWarnEvery {
			f.lastWarn = now
			fmt.Fprintf(f.stderr, "warning: writing gateway.log failed (%v); log lines still go to stdout; %d failed writes so far\n", err, n)
		}
	}
	return len(p), nil
}

// newLogger builds the root logger. An unusable log directory is not
// fatal: one warning on stderr, then stdout only (read-only containers).
func newLogger(cfg logConfig, stdout, stderr io.Writer) (zerolog.Logger, *logSink) {
	sink := &logSink{}
	var writers []io.Writer
	if cfg.Dir != "" {
		if err := checkLogDir(cfg.Dir); err != nil {
			fmt.Fprintf(stderr, "warning: log.dir %s is not usable (%v); logging to stdout only\n", cfg.Dir, err)
		} else {
			sink.file = &lumberjack.Logger{
				Filename: filepath.Join(cfg.Dir, "gateway.log"), MaxSize: cfg.MaxSizeMB, MaxBackups: cfg.MaxBackups,
			}
			writers = append(writers, &fileWriter{w: sink.file, sink: sink, stderr: stderr})
		}
	}
	if f, ok := stdout.(*os.File); ok && isatty.IsTerminal(f.Fd()) {
		// The console writer parses one event per Write; a batch has many.
		writers = append(writers, trace.LineWriter{W: zerolog.ConsoleWriter{Out: stdout, TimeFormat: time.TimeOnly}})
	} else {
		writers = append(writers, stdout)
	}
	sink.queue = trace.NewBatchWriter(zerolog.MultiLevelWriter(writers...), cfg.BufferLines, func(missed int) {
		sink.Dropped.Add(int64(missed))
	})
	level, _ := zerolog.ParseLevel(cfg.Level) // validated by config
	log := zerolog.New(sink.queue).Level(level).With().Timestamp().Logger()
	return log, sink
}

// Close flushes queued lines and closes the file.
func (s *logSink) Close() {
	_ = s.queue.Close()
	if s.file != nil {
		_ = s.file.Close()
	}
}

func checkLogDir(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(filepath.Join(dir, "gateway.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	return f.Close()
}
