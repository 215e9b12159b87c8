package trace

import "github.com/rs/zerolog"

// Logger returns root with the request's correlation and trace IDs on every
// line, so `grep <id> logs/*.log` finds the request's whole life.
func Logger(root zerolog.Logger, id, traceID string) zerolog.Logger {
	return root.With().Str("correlation_id", id).Str("trace_id", traceID).Logger()
}
