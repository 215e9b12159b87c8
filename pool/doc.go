// Package pool bounds and counts the gateway's traffic to one upstream: a
// hard cap on open connections, a bounded wait queue in front of it, per-read
// first-byte and idle deadlines, and a health prober on its own client.
//
// It knows nothing of routes, JSON or logging; the gateway maps its errors to
// statuses. Several upstreams are several Pools.
package pool
