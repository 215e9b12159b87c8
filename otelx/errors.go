package otelx

import (
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"go.opentelemetry.io/otel"
)

// errorLogEvery is the least time between two logged export errors: a
// collector that is down fails every batch, and one line a minute says so.
const errorLogEvery = time.Minute

// LogErrors sends the SDK's errors (failed exports, dropped spans) to log
// at warn, at most one line per errorLogEvery with the count of those not
// logged, instead of the standard library's log. The SDK's error handler
// is process-wide, so main calls this once.
func LogErrors(log zerolog.Logger) {
	var last, suppressed atomic.Int64
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
		now := time.Now().UnixNano()
		if l := last.Load(); now-l < int64(errorLogEvery) || !last.CompareAndSwap(l, now) {
			suppressed.Add(1)
			return
		}
		log.Warn().Err(err).Int64("suppressed", suppressed.Swap(0)).Msg("trace export failed; spans are dropped until the collector answers")
	}))
}
