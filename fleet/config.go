package fleet

import (
	"fmt"
	"time"
)

// Routing policies (config key routing.policy).
const (
	// PolicyModelAware is the default: installed, then loaded and not
	// saturated, then conversation affinity with bounded loads, then least
	// outstanding requests per weight.
	PolicyModelAware = "model_aware"
	// PolicyLeastLoaded picks, among healthy backends that have the model
	// installed, the one with the fewest outstanding requests per weight
	// (random among equals), ignoring warmth and conversations.
	PolicyLeastLoaded = "least_loaded"
	// PolicyRoundRobin cycles through the healthy backends that have the
	// model installed, by weight: nginx's default, for comparison.
	PolicyRoundRobin = "round_robin"
)

// Defaults, applied where a Config field is zero.
const (
	DefaultPolicy          = PolicyModelAware
	DefaultRefreshInterval = 2 * time.Second
	DefaultMaxAttempts     = 3
	// DefaultSaturatedAt: Ollama runs OLLAMA_NUM_PARALLEL requests per
	// loaded model at once (default 1) and queues the rest. A request
	// behind n others waits about n generations; a small model's
	// generation takes 1–10 s on a GPU and its cold load 2–30 s plus the
	// eviction of another model, so a queue of a few requests is already
	// as slow as a load elsewhere. 4 outstanding requests on a warm backend
	// is where a cold one starts to be worth it (see README, Fleet).
	DefaultSaturatedAt = 4
	// DefaultAffinityLoadFactor is c in consistent hashing with bounded
	// loads (Mirrokni, Thorup, Zadimoghaddam 2018): a conversation stays on
	// its backend while that backend has at most c times the mean
	// outstanding requests (weighted); 1.25 is the factor Google and
	// HAProxy use.
	DefaultAffinityLoadFactor = 1.25
	DefaultBreakerFailures    = 5
	DefaultBreakerBackoff     = time.Second
	DefaultBreakerMaxBackoff  = time.Minute
	// DefaultColdLoadThreshold: a final chunk whose load_duration is over
	// this says the model was just loaded on that backend.
	DefaultColdLoadThreshold = 250 * time.Millisecond
)

// Config tunes the choice of a backend (config keys routing.*). Zero fields
// take the defaults.
type Config struct {
	// Policy is PolicyModelAware, PolicyLeastLoaded or PolicyRoundRobin.
	// Default DefaultPolicy.
	Policy string `mapstructure:"policy"`
	// RefreshInterval is how often each backend's catalogue (GET /api/tags
	// and /api/ps) is fetched; it is also fetched at once after a cold load
	// or model management there. No request waits for it. Default
	// DefaultRefreshInterval.
	RefreshInterval time.Duration `mapstructure:"refresh_interval"`
	// MaxAttempts bounds the backends one request is sent to when an
	// attempt fails before any response byte (connect refused or reset,
	// pool wait expired, Ollama's busy 503, backend down). Default
	// DefaultMaxAttempts; 1 disables failover.
	MaxAttempts int `mapstructure:"max_attempts"`
	// SaturatedAt is the number of outstanding requests for one model on
	// one backend at which that backend no longer counts as a warm choice
	// for the model; when every warm backend is saturated a cold one is
	// used. Default DefaultSaturatedAt.
	SaturatedAt int `mapstructure:"saturated_at"`
	// AffinityLoadFactor bounds conversation affinity: a request that
	// continues a conversation passes over the conversation's backend when
	// its outstanding requests would exceed this factor times the weighted
	// mean (and saturated_at); a first turn, when they would exceed the
	// mean. Must be at least 1. Default DefaultAffinityLoadFactor.
	AffinityLoadFactor float64 `mapstructure:"affinity_load_factor"`
	// BreakerFailures consecutive failures of a backend (connect errors,
	// resets, 5xx but busy; not 4xx, not client cancels) open its circuit
	// breaker: it gets no requests for BreakerBackoff, doubled at each
	// reopening up to BreakerMaxBackoff, and returns after a good probe.
	// Default DefaultBreakerFailures.
	BreakerFailures int `mapstructure:"breaker_failures"`
	// BreakerBackoff is the first open period. Default DefaultBreakerBackoff.
	BreakerBackoff time.Duration `mapstructure:"breaker_backoff"`
	// BreakerMaxBackoff caps the open period. Default DefaultBreakerMaxBackoff.
	BreakerMaxBackoff time.Duration `mapstructure:"breaker_max_backoff"`
	// ColdLoadThreshold: a response whose load_duration exceeds it marks the
	// model as just loaded on its backend. Default DefaultColdLoadThreshold.
	ColdLoadThreshold time.Duration `mapstructure:"cold_load_threshold"`
}

func (c Config) withDefaults() Config {
	if c.Policy == "" {
		c.Policy = DefaultPolicy
	}
	if c.RefreshInterval == 0 {
		c.RefreshInterval = DefaultRefreshInterval
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = DefaultMaxAttempts
	}
	if c.SaturatedAt == 0 {
		c.SaturatedAt = DefaultSaturatedAt
	}
	if c.AffinityLoadFactor == 0 {
		c.AffinityLoadFactor = DefaultAffinityLoadFactor
	}
	if c.BreakerFailures == 0 {
		c.BreakerFailures = DefaultBreakerFailures
	}
	if c.BreakerBackoff == 0 {
		c.BreakerBackoff = DefaultBreakerBackoff
	}
	if c.BreakerMaxBackoff == 0 {
		c.BreakerMaxBackoff = DefaultBreakerMaxBackoff
	}
	if c.ColdLoadThreshold == 0 {
		c.ColdLoadThreshold = DefaultColdLoadThreshold
	}
	return c
}

func (c Config) validate() error {
	switch c.Policy {
	case PolicyModelAware, PolicyLeastLoaded, PolicyRoundRobin:
	default:
		return fmt.Errorf("routing.policy: must be %s, %s or %s, got %q", PolicyModelAware, PolicyLeastLoaded, PolicyRoundRobin, c.Policy)
	}
	switch {
	case c.RefreshInterval < 0:
		return fmt.Errorf("routing.refresh_interval: must be positive, got %s", c.RefreshInterval)
	case c.MaxAttempts < 1:
		return fmt.Errorf("routing.max_attempts: must be at least 1, got %d", c.MaxAttempts)
	case c.SaturatedAt < 1:
		return fmt.Errorf("routing.saturated_at: must be at least 1, got %d", c.SaturatedAt)
	case c.AffinityLoadFactor < 1:
		return fmt.Errorf("routing.affinity_load_factor: must be at least 1, got %g", c.AffinityLoadFactor)
	case c.BreakerFailures < 1:
		return fmt.Errorf("routing.breaker_failures: must be at least 1, got %d", c.BreakerFailures)
	case c.BreakerBackoff < 0 || c.BreakerMaxBackoff < c.BreakerBackoff:
		return fmt.Errorf("routing.breaker_backoff, routing.breaker_max_backoff: must be positive, the maximum not below the first")
	case c.ColdLoadThreshold < 0:
		return fmt.Errorf("routing.cold_load_threshold: must not be negative, got %s", c.ColdLoadThreshold)
	}
	return nil
}
