package gateway

import (
	"encoding/json"
	"errors"

	"github.com/valyala/fasthttp"

	"github.com/vega-gateway/vega-gateway/access"
	"github.com/vega-gateway/vega-gateway/pool"
)

// Outcomes, the access log's `outcome` field (RELIABILITY.md §1).
const (
	outcomeOK                  = "ok"
	outcomeClientError         = "client_error"
	outcomeAuthFailed          = "auth_failed"
	outcomeConnectFailed       = "upstream_connect_failed"
	outcomePoolOverflow        = "pool_overflow"
	outcomeUpstreamTimeout     = "upstream_timeout"
	outcomeUpstreamIdleTimeout = "upstream_idle_timeout"
	outcomeUpstreamReset       = "upstream_reset"
	outcomeUpstreamProtocol    = "upstream_protocol_error"
	outcomeUpstreamHTTPError   = "upstream_http_error"
	outcomeUpstreamStreamError = "upstream_stream_error"
	outcomeUpstreamUnhealthy   = "upstream_unhealthy"
	outcomeUpstreamTooLarge    = "upstream_too_large"
	outcomeClientClosed        = "client_closed"
	outcomeClientWriteTimeout  = "client_write_timeout"
	outcomeShutdownAborted     = "shutdown_aborted"
	outcomeInternalError       = "internal_error"
	outcomeMaxDuration         = "max_duration"
	outcomeShed                = "shed"               // over gateway.max_in_flight (Envoy's overload manager flag OM)
	outcomeLimitsUnavailable   = "limits_unavailable" // limits.on_redis_error: deny, and Redis did not answer
)

// statusClientClosedNoBytes is logged when the client left before any
// status was sent (nginx's 499).
const statusClientClosedNoBytes = 499

// Retry-After values, in seconds.
const (
	retryAfterSeconds          = "1"
	retryAfterUnhealthySeconds = "5"
)

// Error `type` values of the OpenAI and Anthropic error objects.
const (
	errorTypeInvalidRequest   = "invalid_request_error"
	errorTypeAuthentication   = "authentication_error"
	errorTypeRateLimit        = "rate_limit_error"
	errorTypeAPI              = "api_error"
	errorTypeOverloaded       = "overloaded_error"
	errorTypeTimeout          = "timeout_error"
	errorTypeNotFound         = "not_found_error"
	errorTypePermissionDenied = "permission_error"
	errorTypeRequestTooLarge  = "request_too_large"
)

// apiError is a gateway-made error: status, machine code, human message
// and the access-log outcome.
type apiError struct {
	status     int
	code       string
	message    string
	outcome    string
	retryAfter string
}

// upstreamError maps an error from the pool to what the client sees. It is
// the one place where errors become statuses.
func upstreamError(err error) apiError {
	switch {
	case errors.Is(err, pool.ErrQueueFull):
		return apiError{503, "upstream_queue_full", "the gateway's upstream queue is full; retry shortly", outcomePoolOverflow, retryAfterSeconds}
	case errors.Is(err, pool.ErrPoolExhausted):
		return apiError{503, "upstream_pool_exhausted", "no upstream connection came free in time; retry shortly", outcomePoolOverflow, retryAfterSeconds}
	case errors.Is(err, pool.ErrUnhealthy):
		return apiError{503, "upstream_unhealthy", "the upstream is failing health checks", outcomeUpstreamUnhealthy, retryAfterUnhealthySeconds}
	case errors.Is(err, pool.ErrAbandoned):
		return apiError{statusClientClosedNoBytes, "client_closed", "the client left while queued", outcomeClientClosed, ""}
	case errors.Is(err, pool.ErrClientGone):
		return apiError{statusClientClosedNoBytes, "client_closed", "the client left before the upstream answered", outcomeClientClosed, ""}
	case errors.Is(err, pool.ErrClosed):
		return apiError{503, "shutting_down", "the gateway is shutting down", outcomeShutdownAborted, retryAfterSeconds}
	case errors.Is(err, pool.ErrConnect):
		return apiError{502, "upstream_unavailable", "cannot connect to the upstream", outcomeConnectFailed, ""}
	case errors.Is(err, pool.ErrFirstByteTimeout):
		return apiError{504, "upstream_timeout", "the upstream did not answer in time", outcomeUpstreamTimeout, ""}
	case errors.Is(err, pool.ErrIdleTimeout):
		return apiError{504, "upstream_idle_timeout", "the upstream stopped sending", outcomeUpstreamIdleTimeout, ""}
	case errors.Is(err, pool.ErrReset):
		return apiError{502, "upstream_reset", "the upstream closed the connection", outcomeUpstreamReset, ""}
	case errors.Is(err, pool.ErrTooLarge):
		return apiError{502, "upstream_too_large", "the upstream response is too large", outcomeUpstreamTooLarge, ""}
	case errors.Is(err, errFrameTooLarge):
		return apiError{502, "upstream_protocol_error", "an upstream stream frame is too large", outcomeUpstreamProtocol, ""}
	}
	return apiError{502, "upstream_protocol_error", "the upstream sent a malformed response", outcomeUpstreamProtocol, ""}
}

// unauthorized is the 401 for a refused credential. A signed Ollama
// request is told what was wrong with it (a stale ts is a clock to fix, an
// unknown key a public key to add), which gives away nothing a caller with
// that key does not know.
func unauthorized(s access.Status) apiError {
	msg := "missing or invalid API key"
	switch s {
	case access.SignedMalformed:
		msg = "malformed signed request: want Authorization <base64 public key>:<base64 signature> and one ts query parameter"
	case access.SignedUnknownKey:
		msg = "this Ollama key is not allowed on this gateway: add its public key to auth.ollama_keys"
	case access.SignedBadSignature:
		msg = "the Ollama key's signature does not match this request"
	case access.SignedStale:
		msg = "the signed request's ts is too old: check the client's clock"
	case access.SignedFuture:
		msg = "the signed request's ts is ahead of the gateway's clock: check the client's clock"
	}
	return apiError{401, "unauthorized", msg, outcomeAuthFailed, ""}
}

var (
	errInternal = apiError{500, "internal_error", "internal error", outcomeInternalError, ""}
)

// openAIType is OpenAI's error `type` for a status.
func openAIType(status int) string {
	switch {
	case status == 401:
		return errorTypeAuthentication
	case status == 429:
		return errorTypeRateLimit
	case status >= 500:
		return errorTypeAPI
	}
	return errorTypeInvalidRequest
}

// anthropicType is Anthropic's error `type` for a status.
func anthropicType(status int) string {
	switch status {
	case 401:
		return errorTypeAuthentication
	case 403:
		return errorTypePermissionDenied
	case 404:
		return errorTypeNotFound
	case 413:
		return errorTypeRequestTooLarge
	case 429:
		return errorTypeRateLimit
	case 503:
		return errorTypeOverloaded
	case 504:
		return errorTypeTimeout
	}
	if status >= 500 {
		return errorTypeAPI
	}
	return errorTypeInvalidRequest
}

type nativeErrorBody struct {
	Error         string `json:"error"`
	Code          string `json:"code"`
	CorrelationID string `json:"correlation_id"`
}

type openAIErrorObject struct {
	Message       string  `json:"message"`
	Type          string  `json:"type"`
	Param         *string `json:"param"`
	Code          string  `json:"code"`
	CorrelationID string  `json:"correlation_id"`
}

type openAIErrorBody struct {
	Error openAIErrorObject `json:"error"`
}

type anthropicErrorObject struct {
	Type    string `json:"type"`
	Message string `json:"message"`
}

type anthropicErrorBody struct {
	Type          string               `json:"type"`
	Error         anthropicErrorObject `json:"error"`
	CorrelationID string               `json:"correlation_id"`
}

// errorJSON renders e in fam's error shape.
func errorJSON(fam family, e apiError, id string) []byte {
	var v any
	switch fam {
	case familyOpenAI:
		v = openAIErrorBody{Error: openAIErrorObject{Message: e.message, Type: openAIType(e.status), Code: e.code, CorrelationID: id}}
	case familyAnthropic:
		v = anthropicErrorBody{Type: "error", Error: anthropicErrorObject{Type: anthropicType(e.status), Message: e.message}, CorrelationID: id}
	default:
		v = nativeErrorBody{Error: e.message, Code: e.code, CorrelationID: id}
	}
	b, _ := json.Marshal(v) // plain structs of strings: cannot fail
	return b
}

// writeError sends e as the whole response.
func writeError(ctx *fasthttp.RequestCtx, fam family, e apiError, id string) {
	ctx.Response.ResetBody()
	ctx.SetStatusCode(e.status)
	ctx.SetContentType("application/json; charset=utf-8")
	if e.retryAfter != "" {
		ctx.Response.Header.Set("Retry-After", e.retryAfter)
	}
	if e.status == 401 && fam != familyNative && fam != familyChat {
		ctx.Response.Header.Set("WWW-Authenticate", "Bearer")
	}
	ctx.SetBody(errorJSON(fam, e, id))
}

// terminalFrame renders e as the record that ends a stream already under
// way: an NDJSON line, or an SSE event. It is never followed by a success
// marker (`"done": true`, `data: [DONE]`).
func terminalFrame(fam family, sse bool, e apiError, id string) []byte {
	body := errorJSON(fam, e, id)
	if !sse {
		return append(body, '\n')
	}
	out := make([]byte, 0, len(body)+32)
	if fam == familyAnthropic {
		out = append(out, "event: error\n"...)
	}
	out = append(out, "data: "...)
	out = append(out, body...)
	return append(out, "\n\n"...)
}
