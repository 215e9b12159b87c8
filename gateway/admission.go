package gateway

import (
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/vega-gateway/vega-gateway/limits"
)

var (
	// errBackendsAtLimit: every backend tried is at limits.backend_max_in_flight.
	errBackendsAtLimit = errors.New("every backend tried is at its in-flight bound")
	// errLimitsUnavailable: Redis could not be asked and
	// limits.on_redis_error is deny.
	errLimitsUnavailable = errors.New("the limits store cannot be reached")
)

// limitError is the answer to a request the limiter refused: 429 for a
// key's or an IP's limit, with Retry-After (and, for a token budget, the
// reset time in the message); 503 when the limits cannot be checked.
func limitError(d limits.Decision, now time.Time) apiError {
	retry := strconv.FormatInt(max(d.RetryAfter, 1), 10)
	switch d.Reason {
	case limits.IPBlocked:
		return apiError{429, "rate_limited", "too many failed authentications from this address", outcomeAuthFailed, retry}
	case limits.RequestsPerMinute:
		return apiError{429, "rate_limited", "this key's request rate limit is reached", outcomeClientError, retry}
	case limits.Concurrency:
		return apiError{429, "key_concurrency_limit", "this key has too many requests in flight", outcomeClientError, retry}
	case limits.TokensPerMinute, limits.TokensPerDay:
		return apiError{429, "token_budget_exhausted", fmt.Sprintf("this key's %s budget is used up; it resets at %s",
			d.Reason, d.Reset(now).UTC().Format(time.RFC3339)), outcomeClientError, retry}
	case limits.BackendBusy:
		return errBackendBusy
	}
	return apiError{503, "limits_unavailable", "the gateway cannot check this request's limits; retry shortly", outcomeLimitsUnavailable, retry}
}

// errBackendBusy answers a request every backend it could go to is at
// limits.backend_max_in_flight for.
var errBackendBusy = apiError{503, "upstream_busy", "every backend is at its in-flight limit; retry shortly", outcomePoolOverflow, retryAfterSeconds}
