package gateway

// SetFaultHook installs a hook called at named points of the request path
// ("handler", "send", "stream"); tests use it to inject panics.
func SetFaultHook(g *Gateway, fn func(where string)) { g.faultHook = fn }
