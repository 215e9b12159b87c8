package gateway

// errShed answers a request over gateway.max_in_flight (F-27): refused
// before any upstream I/O or body parsing, like Envoy's overload manager
// stop_accepting_requests, so memory and goroutines stop growing with load.
var errShed = apiError{503, "shed", "the gateway is at its in-flight request limit; retry shortly", outcomeShed, retryAfterSeconds}

// admit counts x in flight while gateway.max_in_flight is set and reports
// whether it is within the limit. A counted exchange is uncounted by
// finish, so a stream counts until its last byte.
func (g *Gateway) admit(x *exchange) bool {
	if g.cfg.MaxInFlight <= 0 {
		return true
	}
	x.inFlight = true
	return g.inFlight.Add(1) <= int64(g.cfg.MaxInFlight)
}

// InFlight is the number of requests counted against gateway.max_in_flight
// (0 when it is not set).
func (g *Gateway) InFlight() int64 { return g.inFlight.Load() }
