// Package ollamatest runs a fake Ollama on a loopback port, in the manner of
// net/http/httptest: Ollama's native, OpenAI-compatible and Anthropic-compatible
// wire formats with deterministic replies, per-request fault injection, an
// optional imitation of Ollama's scheduler (Config.Scheduler), and a record of
// every connection and request it saw.
package ollamatest
