package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"reflect"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
	"github.com/rs/zerolog"
	"github.com/spf13/viper"

	"github.com/vega-gateway/vega-gateway/access"
	"github.com/vega-gateway/vega-gateway/admin"
	"github.com/vega-gateway/vega-gateway/cache"
	"github.com/vega-gateway/vega-gateway/discover"
	"github.com/vega-gateway/vega-gateway/fleet"
	"github.com/vega-gateway/vega-gateway/gateway"
	"github.com/vega-gateway/vega-gateway/limits"
	"github.com/vega-gateway/vega-gateway/metrics"
	"github.com/vega-gateway/vega-gateway/otelx"
	"github.com/vega-gateway/vega-gateway/pool"
)

// envPrefix: every key can be set as VEGA_ + the upper-cased key path with
// "_" for ".", e.g. pool.max_connections → VEGA_POOL_MAX_CONNECTIONS.
const envPrefix = "VEGA"

// upstreamSection is config key upstream.*: where the upstream is, plus
// the model /chat uses by default.
type upstreamSection struct {
	pool.UpstreamConfig `mapstructure:",squash"`
	// DefaultModel is used by /chat when the request names none.
	DefaultModel string `mapstructure:"default_model"`
}

// upstreamEntry is one backend of config key upstreams. Its pool takes the
// shared upstream.* (timeouts, health) and pool.* (bounds) settings.
type upstreamEntry struct {
	// Name identifies the backend in logs, metrics, the admin page and
	// X-Vega-Backend. Default: the URL's host:port (as fleet.New names it).
	Name string `mapstructure:"name" json:"name"`
	// URL is the backend's Ollama base URL. Required.
	URL string `mapstructure:"url" json:"url"`
	// Weight is the backend's share of requests relative to the others (a
	// GPU twice as fast: 2). Default 1; zero selects the default.
	Weight int `mapstructure:"weight" json:"weight"`
	// MaxConnections bounds this backend's upstream connections instead of
	// pool.max_connections. Zero keeps pool.max_connections. With discover,
	// it bounds each backend found.
	MaxConnections int `mapstructure:"max_connections" json:"max_connections"`
	// Discover "dns" makes the entry a set of backends found in DNS: the
	// URL's host is resolved every Refresh and each address (or SRV
	// target) is a backend with the URL's scheme and port. Empty: the URL
	// is one backend. Name then names the set (default: the URL's host).
	Discover string `mapstructure:"discover" json:"discover"`
	// Refresh is the pause between lookups, at least
	// fleet.MinDiscoveryRefresh. Default fleet.DefaultDiscoveryRefresh;
	// only with discover.
	Refresh time.Duration `mapstructure:"refresh" json:"-"`
	// Resolver is the host:port of the DNS server asked. Default: the
	// system's resolver. Only with discover.
	Resolver string `mapstructure:"resolver" json:"resolver"`
	// SRV, as "_http._tcp", asks for the SRV records of SRV.host first
	// (each target:port a backend named by the target), falling back to
	// the A/AAAA records when there are none. Only with discover.
	SRV string `mapstructure:"srv" json:"srv"`
}

// UnmarshalJSON reads an entry of VEGA_UPSTREAMS, refresh as a Go duration
// string ("10s"), unknown fields refused.
func (e *upstreamEntry) UnmarshalJSON(b []byte) error {
	type plain upstreamEntry
	var aux struct {
		plain
		Refresh string `json:"refresh"`
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&aux); err != nil {
		return err
	}
	*e = upstreamEntry(aux.plain)
	if aux.Refresh != "" {
		d, err := time.ParseDuration(aux.Refresh)
		if err != nil {
			return errors.New("refresh: must be a duration such as 10s")
		}
		e.Refresh = d
	}
	return nil
}

// logConfig is config key log.*.
type logConfig struct {
	// Level is one of trace, debug, info, warn, error. Default info.
	Level string `mapstructure:"level"`
	// Dir receives gateway.log; empty means stdout only. Default "logs".
	Dir string `mapstructure:"dir"`
	// MaxSizeMB rotates gateway.log at this size. Default 100.
	MaxSizeMB int `mapstructure:"max_size_mb"`
	// MaxBackups is how many rotated files are kept. Default 5.
	MaxBackups int `mapstructure:"max_backups"`
	// BufferLines is the log queue; lines beyond it are dropped (and
	// counted) rather than blocking a request on a slow disk. Default 10000.
	BufferLines int `mapstructure:"buffer_lines"`
}

// config is the whole file, one section per package.
type config struct {
	Gateway  gateway.Config  `mapstructure:"gateway"`
	Admin    admin.Config    `mapstructure:"admin"`
	Upstream upstreamSection `mapstructure:"upstream"`
	// Upstreams lists several backends; empty means the one at
	// upstream.url.
	Upstreams []upstreamEntry    `mapstructure:"upstreams"`
	Routing   fleet.Config       `mapstructure:"routing"`
	Pool      pool.Config        `mapstructure:"pool"`
	Auth      access.Config      `mapstructure:"auth"`
	Chat      gateway.ChatConfig `mapstructure:"chat"`
	Log       logConfig          `mapstructure:"log"`
	Metrics   metrics.Config     `mapstructure:"metrics"`
	Otel      otelx.Config       `mapstructure:"otel"`
	Cache     cache.Config       `mapstructure:"cache"`
	Limits    limits.Config      `mapstructure:"limits"`
}

// defaults lists every key with its default. Each default comes from the
// package that owns the key. Feeding them all to viper is also what lets
// environment variables reach Unmarshal (viper only looks up env vars for
// keys it knows).
func defaults() map[string]any {
	return map[string]any{
		"gateway.listen":              gateway.DefaultListen,
		"gateway.read_timeout":        gateway.DefaultReadTimeout,
		"gateway.keepalive_timeout":   gateway.DefaultKeepAliveTimeout,
		"gateway.write_idle_timeout":  gateway.DefaultWriteIdleTimeout,
		"gateway.drain_timeout":       gateway.DefaultDrainTimeout,
		"gateway.max_stream_duration": gateway.DefaultMaxStreamDuration,
		"gateway.max_stream_bytes":    0,
		"gateway.max_header_bytes":    gateway.DefaultMaxHeaderBytes,
		"gateway.max_body_bytes":      gateway.DefaultMaxBodyBytes,
		"gateway.max_blob_bytes":      int64(gateway.DefaultMaxBlobBytes),
		"gateway.tls.cert_file":       "",
		"gateway.tls.key_file":        "",
		"gateway.max_frame_bytes":     gateway.DefaultMaxFrameBytes,
		"gateway.model_allowlist":     []string{},
		"gateway.max_keep_alive":      0,
		"gateway.max_num_ctx":         0,
		"gateway.max_num_predict":     0,
		"gateway.pull_registries":     []string{gateway.DefaultPullRegistry},
		"gateway.pull_allow_insecure": false,
		"gateway.max_in_flight":       0,

		"auth.failure_log_lines_per_second": access.DefaultFailureLogLinesPerSecond,

		"gateway.max_client_connections": gateway.DefaultMaxClientConnections,
		"gateway.trusted_proxies":        []string{},
		"gateway.cors.allowed_origins":   []string{},
		"gateway.cors.allowed_headers":   []string{}, // empty: gateway.DefaultCORSAllowedHeaders
		"gateway.cors.allowed_methods":   []string{}, // empty: gateway.DefaultCORSAllowedMethods
		"gateway.cors.max_age":           gateway.DefaultCORSMaxAge,

		"admin.listen":                 admin.DefaultListen,
		"admin.pprof":                  false,
		"admin.profile_dir":            "",
		"admin.profile_interval":       admin.DefaultProfileInterval,
		"admin.profile_seconds":        admin.DefaultProfileSeconds,
		"admin.profile_keep":           admin.DefaultProfileKeep,
		"admin.tls.cert_file":          "",
		"admin.tls.key_file":           "",
		"upstream.url":                 pool.DefaultURL,
		"upstream.default_model":       gateway.DefaultDefaultModel,
		"upstream.connect_timeout":     pool.DefaultConnectTimeout,
		"upstream.first_byte_timeout":  pool.DefaultFirstByteTimeout,
		"upstream.idle_timeout":        pool.DefaultIdleTimeout,
		"upstream.max_response_bytes":  pool.DefaultMaxResponseBytes,
		"upstream.health_interval":     pool.DefaultHealthInterval,
		"upstream.health_timeout":      pool.DefaultHealthTimeout,
		"upstream.unhealthy_after":     pool.DefaultUnhealthyAfter,
		"upstream.healthy_after":       pool.DefaultHealthyAfter,
		"upstreams":                    []upstreamEntry{},
		"routing.policy":               fleet.DefaultPolicy,
		"routing.refresh_interval":     fleet.DefaultRefreshInterval,
		"routing.max_attempts":         fleet.DefaultMaxAttempts,
		"routing.saturated_at":         fleet.DefaultSaturatedAt,
		"routing.affinity_load_factor": fleet.DefaultAffinityLoadFactor,
		"routing.breaker_failures":     fleet.DefaultBreakerFailures,
		"routing.breaker_backoff":      fleet.DefaultBreakerBackoff,
		"routing.breaker_max_backoff":  fleet.DefaultBreakerMaxBackoff,
		"routing.cold_load_threshold":  fleet.DefaultColdLoadThreshold,
		"pool.max_connections":         pool.DefaultMaxConnections,
		"pool.max_queue":               pool.DefaultMaxQueue,
		"pool.max_wait":                pool.DefaultMaxWait,
		"pool.max_idle_conn_duration":  pool.DefaultMaxIdleConnDuration,
		"auth.api_keys":                []string{},
		"auth.admin_api_keys":          []string{},
		"auth.keys":                    []access.KeyConfig{},
		"auth.keys_file":               "",
		"auth.ollama_keys":             []access.OllamaKeyConfig{},
		"auth.ollama_max_skew":         access.DefaultOllamaMaxSkew,
		"auth.allow_model_management":  false,
		"auth.max_failures_per_ip":     0,
		"chat.max_history_messages":    gateway.DefaultMaxHistoryMessages,
		"chat.max_body_bytes":          gateway.DefaultMaxChatBodyBytes,
		"chat.max_prompt_bytes":        gateway.DefaultMaxPromptBytes,
		"chat.max_tokens":              gateway.DefaultChatMaxTokens,
		"chat.max_context":             0,
		"log.level":                    "info",
		"log.dir":                      "logs",
		"log.max_size_mb":              100,
		"log.max_backups":              5,
		"log.buffer_lines":             10000,
		"limits.redis_url":             "",
		"limits.on_redis_error":        limits.DefaultOnRedisError,
		"limits.redis_timeout":         limits.DefaultRedisTimeout,
		"limits.lease_ttl":             limits.DefaultLeaseTTL,
		"limits.backend_max_in_flight": 0,
		"metrics.models":               []string{},
		"metrics.max_models":           metrics.DefaultMaxModels,
		"metrics.cold_load_threshold":  metrics.DefaultColdLoadThreshold,
		"otel.endpoint":                "",
		"otel.headers":                 map[string]string{},
		"otel.sample_ratio":            otelx.DefaultSampleRatio,
		"otel.service_name":            otelx.DefaultServiceName,
		"cache.enabled":                false,
		"cache.max_bytes":              cache.DefaultMaxBytes,
		"cache.ttl":                    cache.DefaultTTL,
		"cache.scope":                  cache.ScopeKey,
		"cache.redis_url":              "",
		"cache.redis_timeout":          cache.DefaultRedisTimeout,
		"cache.max_entry_bytes":        cache.DefaultMaxEntryBytes,
	}
}

// loadConfig reads built-in defaults, then the YAML file (path, else
// ./config.yaml if present), then VEGA_* environment variables, then
// overrides (from flags). Unknown keys, wrong types and bad values are
// errors naming the key; the error never contains a key's secret value.
func loadConfig(path string, overrides map[string]any, environ []string) (config, error) {
	v := viper.New()
	for k, d := range defaults() {
		v.SetDefault(k, d)
	}
	v.SetConfigType("yaml")
	if path == "" {
		if _, err := os.Stat("config.yaml"); err == nil {
			path = "config.yaml"
		}
	}
	if path != "" {
		st, err := os.Stat(path)
		if err != nil {
			return config{}, fmt.Errorf("config file %s: %w", path, err)
		}
		if st.IsDir() {
			return config{}, fmt.Errorf("config file %s: is a directory", path)
		}
		v.SetConfigFile(path)
		if err := v.ReadInConfig(); err != nil {
			return config{}, fmt.Errorf("config file %s: %w", path, err)
		}
		if err := checkKnownKeys(v.AllKeys()); err != nil {
			return config{}, fmt.Errorf("config file %s: %w", path, err)
		}
	}
	// Environment: set explicitly from VEGA_* so that an unknown VEGA_ name
	// is reported instead of silently ignored.
	known := defaults()
	for _, kv := range environ {
		name, val, ok := strings.Cut(kv, "=")
		if !ok || !strings.HasPrefix(name, envPrefix+"_") {
			continue
		}
		key := envKey(name, known)
		if key == "" {
			continue // VEGA_* variables of other tools are not ours to judge
		}
		v.Set(key, val)
	}
	for k, val := range overrides {
		v.Set(k, val)
	}
	var c config
	err := v.UnmarshalExact(&c, viper.DecodeHook(mapstructure.ComposeDecodeHookFunc(
		mapstructure.StringToTimeDurationHookFunc(),
		stringToKeyList(),
		jsonToScopedKeys(),
		jsonToOllamaKeys(),
		stringToUpstreams(),
		stringToHeaders(),
	)))
	if err != nil {
		return config{}, redact(err)
	}
	if err := c.validate(); err != nil {
		return config{}, err
	}
	return c, nil
}

// envKey maps VEGA_POOL_MAX_CONNECTIONS to pool.max_connections.
func envKey(name string, known map[string]any) string {
	for k := range known {
		if envPrefix+"_"+strings.ToUpper(strings.ReplaceAll(k, ".", "_")) == name {
			return k
		}
	}
	return ""
}

func checkKnownKeys(keys []string) error {
	known := defaults()
	for _, k := range keys {
		if strings.HasPrefix(k, "otel.headers.") {
			continue // a map: its keys are header names
		}
		if _, ok := known[k]; !ok {
			return fmt.Errorf("unknown key %q", k)
		}
	}
	return nil
}

// stringToKeyList turns "a,b" (an environment variable) into a list.
func stringToKeyList() mapstructure.DecodeHookFuncType {
	return func(from, to reflect.Type, data any) (any, error) {
		if from.Kind() != reflect.String || to != reflect.TypeFor[[]string]() {
			return data, nil
		}
		var out []string
		for part := range strings.SplitSeq(data.(string), ",") {
			if part = strings.TrimSpace(part); part != "" {
				out = append(out, part)
			}
		}
		return out, nil
	}
}

// jsonToScopedKeys decodes VEGA_AUTH_KEYS, a JSON list of scoped keys.
func jsonToScopedKeys() mapstructure.DecodeHookFuncType {
	return func(from, to reflect.Type, data any) (any, error) {
		if from.Kind() != reflect.String || to != reflect.TypeFor[[]access.KeyConfig]() {
			return data, nil
		}
		var keys []access.KeyConfig
		if strings.TrimSpace(data.(string)) == "" {
			return keys, nil
		}
		dec := json.NewDecoder(strings.NewReader(data.(string)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&keys); err != nil {
			return nil, errors.New("auth.keys: must be a JSON list of {name, key or sha256, scopes, max_concurrent, requests_per_minute, tokens_per_minute, tokens_per_day}")
		}
		return keys, nil
	}
}

// jsonToOllamaKeys decodes VEGA_AUTH_OLLAMA_KEYS, a JSON list of Ollama
// client keys.
func jsonToOllamaKeys() mapstructure.DecodeHookFuncType {
	return func(from, to reflect.Type, data any) (any, error) {
		if from.Kind() != reflect.String || to != reflect.TypeFor[[]access.OllamaKeyConfig]() {
			return data, nil
		}
		var keys []access.OllamaKeyConfig
		if strings.TrimSpace(data.(string)) == "" {
			return keys, nil
		}
		dec := json.NewDecoder(strings.NewReader(data.(string)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&keys); err != nil {
			return nil, errors.New("auth.ollama_keys: must be a JSON list of {name, public_key, scopes, max_concurrent, requests_per_minute, tokens_per_minute, tokens_per_day}")
		}
		return keys, nil
	}
}

// stringToUpstreams decodes VEGA_UPSTREAMS: comma-separated URLs (each
// backend named by its host:port), or a JSON list of {name, url, weight,
// max_connections, discover, refresh, resolver, srv}. In a file, an entry
// may be a bare URL too.
func stringToUpstreams() mapstructure.DecodeHookFuncType {
	return func(from, to reflect.Type, data any) (any, error) {
		if from.Kind() == reflect.String && to == reflect.TypeFor[upstreamEntry]() {
			return upstreamEntry{URL: strings.TrimSpace(data.(string))}, nil
		}
		if from.Kind() != reflect.String || to != reflect.TypeFor[[]upstreamEntry]() {
			return data, nil
		}
		s := strings.TrimSpace(data.(string))
		var out []upstreamEntry
		if strings.HasPrefix(s, "[") {
			dec := json.NewDecoder(strings.NewReader(s))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&out); err != nil {
				// encoding/json's messages name fields and types, never values.
				return nil, fmt.Errorf("upstreams: must be comma-separated URLs or a JSON list of {name, url, weight, max_connections, discover, refresh, resolver, srv}: %w", err)
			}
			return out, nil
		}
		for part := range strings.SplitSeq(s, ",") {
			if part = strings.TrimSpace(part); part != "" {
				out = append(out, upstreamEntry{URL: part})
			}
		}
		return out, nil
	}
}

// stringToHeaders decodes VEGA_OTEL_HEADERS in the format of
// OTEL_EXPORTER_OTLP_HEADERS: comma-separated name=value pairs, values
// URL-encoded.
func stringToHeaders() mapstructure.DecodeHookFuncType {
	return func(from, to reflect.Type, data any) (any, error) {
		if from.Kind() != reflect.String || to != reflect.TypeFor[map[string]string]() {
			return data, nil
		}
		out := map[string]string{}
		for part := range strings.SplitSeq(data.(string), ",") {
			if strings.TrimSpace(part) == "" {
				continue
			}
			name, val, ok := strings.Cut(part, "=")
			if !ok {
				return nil, errors.New("otel.headers: want name=value pairs separated by commas")
			}
			v, err := url.QueryUnescape(strings.TrimSpace(val))
			if err != nil {
				return nil, errors.New("otel.headers: a value is not URL-encoded")
			}
			out[strings.TrimSpace(name)] = v
		}
		return out, nil
	}
}

// redact drops values from decode errors: a mistyped key list must not
// print the keys.
func redact(err error) error {
	msg := err.Error()
	if strings.Contains(msg, "auth.ollama_max_skew") {
		return errors.New("config: auth.ollama_max_skew: must be a duration such as 5m")
	}
	if strings.Contains(msg, "auth.") {
		return errors.New("config: auth.api_keys / auth.admin_api_keys must be lists of strings, auth.keys a list of {name, key or sha256, scopes, max_concurrent, requests_per_minute, tokens_per_minute, tokens_per_day}, auth.ollama_keys a list of {name, public_key, scopes, max_concurrent, requests_per_minute, tokens_per_minute, tokens_per_day}")
	}
	if strings.Contains(msg, "otel.headers") {
		return errors.New("config: otel.headers must be a map of header names to values (VEGA_OTEL_HEADERS: name=value pairs separated by commas)")
	}
	return fmt.Errorf("config: %w", err)
}

func (c config) validate() error {
	switch c.Log.Level {
	case "trace", "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("log.level: must be one of trace, debug, info, warn, error; got %q", c.Log.Level)
	}
	if c.Log.MaxSizeMB <= 0 || c.Log.MaxBackups < 0 || c.Log.BufferLines <= 0 {
		return errors.New("log.max_size_mb, log.buffer_lines must be positive and log.max_backups not negative")
	}
	if c.Auth.FailureLogLinesPerSecond < 0 {
		return fmt.Errorf("auth.failure_log_lines_per_second: must not be negative, got %d", c.Auth.FailureLogLinesPerSecond)
	}
	if strings.TrimSpace(c.Upstream.DefaultModel) == "" {
		return errors.New("upstream.default_model: must not be empty")
	}
	for name, keys := range map[string][]string{"auth.api_keys": c.Auth.APIKeys, "auth.admin_api_keys": c.Auth.AdminAPIKeys} {
		seen := map[string]bool{}
		for i, k := range keys {
			if strings.TrimSpace(k) == "" {
				return fmt.Errorf("%s: entry #%d is empty", name, i+1)
			}
			if seen[k] {
				return fmt.Errorf("%s: entry #%d repeats an earlier key", name, i+1)
			}
			seen[k] = true
		}
	}
	if !admin.IsLoopback(c.Admin.Listen) && len(c.Auth.AdminAPIKeys) == 0 && len(c.Auth.APIKeys) == 0 {
		return fmt.Errorf("admin.listen: %q is not loopback; set auth.admin_api_keys (or auth.api_keys) so the admin routes are not open to the network", c.Admin.Listen)
	}
	if c.Admin.Listen == c.Gateway.Listen {
		return fmt.Errorf("admin.listen: must differ from gateway.listen (%q)", c.Gateway.Listen)
	}
	// The packages validate their own sections; building the limiter, the
	// pools and the fleet starts nothing and opens no connection.
	lim, err := c.newLimiter(zerolog.Nop())
	if err != nil {
		return err
	}
	_ = lim.Close()
	if _, err := c.newFleet(nil); err != nil {
		return err
	}
	if c.Cache.Enabled {
		cc, err := cache.New(c.Cache) // dials nothing
		if err != nil {
			return err
		}
		_ = cc.Close()
	}
	if c.Pool.MaxConnections <= 0 {
		return fmt.Errorf("pool.max_connections: must be positive, got %d", c.Pool.MaxConnections)
	}
	if err := c.Otel.Validate(); err != nil {
		return err
	}
	if c.Pool.MaxWait <= 0 {
		return fmt.Errorf("pool.max_wait: must be positive, got %s", c.Pool.MaxWait)
	}
	return nil
}

// newLimiter builds the limiter of config key limits.*, with the per-IP
// failure budget of auth.max_failures_per_ip. It opens no connection.
func (c config) newLimiter(log zerolog.Logger) (*limits.Limiter, error) {
	lc := c.Limits
	lc.MaxFailuresPerIP = c.Auth.MaxFailuresPerIP
	return limits.New(lc, log)
}

// newFleet builds one pool per backend — upstreams, else upstream.url
// alone — each with the shared upstream.* and pool.* settings, its own URL
// and its max_connections, and the fleet over them; an entry with discover
// is a discovery group whose backends' pools are built alike as they are
// found, and whose events go to observe (may be nil). It starts nothing.
func (c config) newFleet(observe func(fleet.Event)) (*fleet.Fleet, error) {
	entries := c.Upstreams
	if len(entries) == 0 {
		p, err := pool.New(c.Upstream.UpstreamConfig, c.Pool)
		if err != nil {
			return nil, err
		}
		return fleet.New(c.Routing, []fleet.Member{{Pool: p}})
	}
	if c.Upstream.URL != pool.DefaultURL {
		return nil, errors.New("upstreams: upstream.url is set too; name one backend with upstream.url or several with upstreams, not both")
	}
	if len(entries) > fleet.MaxBackends {
		return nil, fmt.Errorf("upstreams: at most %d backends, got %d", fleet.MaxBackends, len(entries))
	}
	members := make([]fleet.Member, 0, len(entries))
	var groups []fleet.Group
	urls := map[string]int{}
	for i, e := range entries {
		switch {
		case strings.TrimSpace(e.URL) == "":
			return nil, fmt.Errorf("upstreams[%d].url: must be set", i)
		case e.Weight < 0:
			return nil, fmt.Errorf("upstreams[%d].weight: must not be negative, got %d", i, e.Weight)
		case e.MaxConnections < 0:
			return nil, fmt.Errorf("upstreams[%d].max_connections: must not be negative, got %d", i, e.MaxConnections)
		}
		// Checked before the fleet's own check, which would first find the
		// default names (host:port) equal and blame the name.
		u := strings.TrimSuffix(strings.ToLower(strings.TrimSpace(e.URL)), "/")
		if j, ok := urls[u]; ok {
			return nil, fmt.Errorf("upstreams[%d].url: the same as upstreams[%d].url", i, j)
		}
		urls[u] = i
		up, pc := c.Upstream.UpstreamConfig, c.Pool
		up.URL = e.URL
		if e.MaxConnections > 0 {
			pc.MaxConnections = e.MaxConnections
		}
		p, err := pool.New(up, pc)
		if err != nil {
			return nil, fmt.Errorf("upstreams[%d]: %w", i, err)
		}
		if e.Discover == "" {
			if e.Refresh != 0 || e.Resolver != "" || e.SRV != "" {
				return nil, fmt.Errorf("upstreams[%d]: refresh, resolver and srv need discover: dns", i)
			}
			members = append(members, fleet.Member{Name: e.Name, Weight: e.Weight, Pool: p})
			continue
		}
		g, err := discoveryGroup(i, e, up, pc, observe)
		if err != nil {
			return nil, err
		}
		groups = append(groups, g)
	}
	return fleet.New(c.Routing, members, groups...)
}

// discoveryGroup is the fleet group of an upstreams entry with discover:
// its resolver, and a pool builder with the entry's settings.
func discoveryGroup(i int, e upstreamEntry, up pool.UpstreamConfig, pc pool.Config, observe func(fleet.Event)) (fleet.Group, error) {
	if e.Discover != "dns" {
		return fleet.Group{}, fmt.Errorf("upstreams[%d].discover: must be dns or unset, got %q", i, e.Discover)
	}
	if e.Refresh < 0 || e.Refresh > 0 && e.Refresh < fleet.MinDiscoveryRefresh {
		return fleet.Group{}, fmt.Errorf("upstreams[%d].refresh: must be at least %s (a duration with its unit, 10s), got %s", i, fleet.MinDiscoveryRefresh, e.Refresh)
	}
	r, err := discover.New(discover.Config{URL: e.URL, Resolver: e.Resolver, SRV: e.SRV})
	if err != nil {
		return fleet.Group{}, fmt.Errorf("upstreams[%d].%w", i, err)
	}
	name := e.Name
	if name == "" {
		name = r.Host()
	}
	return fleet.Group{
		Name: name, Weight: e.Weight, Refresh: e.Refresh, Observe: observe,
		Lookup: func(ctx context.Context) ([]fleet.Endpoint, error) {
			eps, err := r.Lookup(ctx)
			out := make([]fleet.Endpoint, len(eps))
			for j, ep := range eps {
				out[j] = fleet.Endpoint{Name: ep.Name, URL: ep.URL}
			}
			return out, err
		},
		NewPool: func(url string) (*pool.Pool, error) {
			up.URL = url
			return pool.New(up, pc)
		},
	}, nil
}
