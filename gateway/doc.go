// Package gateway is the proxy: it authenticates a client request, gives it
// a correlation ID, forwards it to the upstream through a bounded pool and
// streams the answer back frame by frame, mapping every failure to a JSON
// error in the shape the route's stock clients parse.
package gateway
