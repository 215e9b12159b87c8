// Package validate checks the deployment files (the root Dockerfile and
// .dockerignore, deploy/compose.yaml and the Helm chart) without a Docker
// engine or a cluster: each is read by the parser its real consumer uses and
// the result is asserted in the tests of this package.
//
// It is its own module so that Helm, the Kubernetes API types and BuildKit
// stay out of the gateway's go.mod and out of the root `go test ./...`.
package validate
