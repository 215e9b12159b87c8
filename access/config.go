package access

import (
	"errors"
	"time"
)

// DefaultFailureLogLinesPerSecond is config key
// auth.failure_log_lines_per_second's default (the gateway's own zero
// means every line).
const DefaultFailureLogLinesPerSecond = 10

// Config lists the keys the gateway accepts (config keys auth.*).
type Config struct {
	// APIKeys are accepted on every route but /healthz, as X-API-Key or
	// Authorization: Bearer. Empty means the gateway is open.
	APIKeys []string `mapstructure:"api_keys"`
	// AdminAPIKeys guard the admin listener; empty falls back to APIKeys.
	AdminAPIKeys []string `mapstructure:"admin_api_keys"`
	// Keys are scoped keys with names and optional per-key limits (in
	// containers: JSON in VEGA_AUTH_KEYS).
	Keys []KeyConfig `mapstructure:"keys"`
	// OllamaKeys are the Ollama client keys accepted on signed requests
	// (the Ollama CLI and Go client with OLLAMA_AUTH=1; in containers: JSON
	// in VEGA_AUTH_OLLAMA_KEYS).
	OllamaKeys []OllamaKeyConfig `mapstructure:"ollama_keys"`
	// OllamaMaxSkew is how far a signed request's ts may be from the
	// gateway's clock, either way; it also bounds how long a captured
	// signed header stays usable. Default DefaultOllamaMaxSkew.
	OllamaMaxSkew time.Duration `mapstructure:"ollama_max_skew"`
	// KeysFile is a YAML or JSON file with a list of scoped keys, API keys
	// and Ollama keys (public_key) alike (or {"keys": [...], "ollama_keys":
	// [...]}), re-read on SIGHUP without dropping open streams.
	KeysFile string `mapstructure:"keys_file"`
	// AllowModelManagement lets requests without a key use pull, push,
	// create, copy, delete and blobs when the gateway is open. Default
	// false: model management needs a key with the models:manage scope.
	AllowModelManagement bool `mapstructure:"allow_model_management"`
	// MaxFailuresPerIP is how many failed authentications one client IP
	// may make per minute before it gets 429 for the rest of that minute.
	// 0 (the default) means no budget. Behind a local TLS terminator every
	// client is 127.0.0.1: leave it off there.
	MaxFailuresPerIP int `mapstructure:"max_failures_per_ip"`
	// FailureLogLinesPerSecond samples the access log of failed
	// authentications (401, and the 429 of the per-IP budget): at most this
	// many lines a second are written, the rest only counted, so a
	// key-guessing burst cannot flood the log. 0 writes every line; the
	// config file's default is DefaultFailureLogLinesPerSecond.
	FailureLogLinesPerSecond int `mapstructure:"failure_log_lines_per_second"`
}

// KeyConfig is one scoped key (config key auth.keys, auth.keys_file, or
// JSON in VEGA_AUTH_KEYS).
type KeyConfig struct {
	// Name identifies the key in logs and metrics; the key itself never
	// appears there.
	Name string `mapstructure:"name" json:"name" yaml:"name"`
	// Key is the secret itself; or give SHA256 instead.
	Key string `mapstructure:"key" json:"key" yaml:"key"`
	// SHA256 is the hex SHA-256 of the key, so config files need not hold it.
	SHA256 string `mapstructure:"sha256" json:"sha256" yaml:"sha256"`
	// Scopes the key holds: inference, models:read, models:manage.
	// Default inference and models:read.
	Scopes []string `mapstructure:"scopes" json:"scopes" yaml:"scopes"`
	// MaxConcurrent caps this key's requests in flight (429 above it);
	// 0 means no cap.
	MaxConcurrent int `mapstructure:"max_concurrent" json:"max_concurrent" yaml:"max_concurrent"`
	// RequestsPerMinute caps this key's request rate (429 above it); 0
	// means no cap.
	RequestsPerMinute int `mapstructure:"requests_per_minute" json:"requests_per_minute" yaml:"requests_per_minute"`
	// TokensPerMinute is this key's budget of prompt + completion tokens
	// per clock minute: requests are admitted while some is left and
	// charged when they end (429 once it is used up); 0 means no budget.
	TokensPerMinute int64 `mapstructure:"tokens_per_minute" json:"tokens_per_minute" yaml:"tokens_per_minute"`
	// TokensPerDay is the same per UTC day; 0 means no budget.
	TokensPerDay int64 `mapstructure:"tokens_per_day" json:"tokens_per_day" yaml:"tokens_per_day"`
}

func (c Config) withDefaults() Config {
	if c.OllamaMaxSkew == 0 {
		c.OllamaMaxSkew = DefaultOllamaMaxSkew
	}
	return c
}

func (c Config) validate() error {
	if c.MaxFailuresPerIP < 0 {
		return errors.New("auth.max_failures_per_ip: must not be negative")
	}
	if c.OllamaMaxSkew < 0 {
		return errors.New("auth.ollama_max_skew: must not be negative")
	}
	return nil
}
