// Package admin serves operators on its own listener: liveness and
// readiness probes, the upstream pools' live numbers, resource statistics
// and metrics. It never imports the gateway: main hands it what it shows.
package admin
