// Command vega-gateway is a reverse-proxy gateway in front of Ollama: a
// drop-in for Ollama and OpenAI clients with correlation IDs, a bounded
// upstream pool and a separate admin listener.
//
// Usage:
//
//	vega-gateway serve [--config FILE] [--demo] [--log-level LEVEL]
//	vega-gateway healthcheck [--url URL]
//	vega-gateway version
package main

import (
	"fmt"
	"os"

	"github.com/google/uuid"
)

// version is stamped at build time: -ldflags "-X main.version=1.2.3".
var version = "dev"

func main() {
	// Correlation IDs are UUIDv4: draw their randomness in batches rather
	// than one getrandom call per request.
	uuid.EnableRandPool()
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	if len(args) == 0 {
		args = []string{"serve"}
	}
	switch args[0] {
	case "serve":
		return serveCommand(args[1:], os.Stdout, os.Stderr)
	case "healthcheck":
		return healthcheckCommand(args[1:], os.Stderr)
	case "version", "--version", "-v":
		fmt.Println("vega-gateway", version)
		return 0
	case "help", "--help", "-h":
		fmt.Print(usage)
		return 0
	}
	fmt.Fprintf(os.Stderr, "vega-gateway: unknown command %q\n%s", args[0], usage)
	return 2
}

const usage = `usage:
  vega-gateway serve [--config FILE] [--demo] [--log-level LEVEL]
      start the gateway (config: FILE, else ./config.yaml, else defaults; then VEGA_* env; then flags)
  vega-gateway healthcheck [--url URL]
      exit 0 if URL (default http://127.0.0.1:<port of VEGA_GATEWAY_LISTEN, else 8000>/healthz) answers 200 within 2s
  vega-gateway version
`
