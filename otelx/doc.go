// Package otelx sets up the OpenTelemetry SDK that exports the gateway's
// request spans over OTLP/HTTP, and starts a request's server span so that
// its trace ID is the one the access log names. Off, it costs nothing: the
// gateway holds a nil *Tracer and never calls the SDK.
package otelx
