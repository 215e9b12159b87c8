// Package fleet chooses, among several Ollama backends each behind its own
// bounded pool, the one that will answer a request soonest: one that has the
// model installed and loaded, is not saturated, holds the conversation's
// prompt cache, and is healthy. It keeps a catalogue of each backend's
// installed and loaded models and a circuit breaker per backend, and keeps
// the set of backends in step with DNS for upstreams found there; it does no
// proxying itself.
package fleet
