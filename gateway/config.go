package gateway

import (
	"fmt"
	"time"

	"github.com/vega-gateway/vega-gateway/tlsfiles"
)

// Defaults, applied where a Config field is zero.
const (
	DefaultListen            = ":8000"
	DefaultDefaultModel      = "llama3.2"
	DefaultReadTimeout       = 30 * time.Second
	DefaultKeepAliveTimeout  = 60 * time.Second
	DefaultWriteIdleTimeout  = 30 * time.Second
	DefaultDrainTimeout      = 30 * time.Second
	DefaultMaxStreamDuration = 30 * time.Minute
	DefaultMaxHeaderBytes    = 16 << 10
	DefaultMaxBodyBytes      = 16 << 20
	DefaultMaxFrameBytes     = 8 << 20
	// DefaultMaxBlobBytes is config key gateway.max_blob_bytes's default
	// (the gateway's own zero means no cap): above the largest GGUF files
	// published (a 405B model at 8 bits is about 400 GiB split in parts of
	// at most 50 GiB, the size Hugging Face caps a file at).
	DefaultMaxBlobBytes       = 64 << 30
	DefaultMaxChatBodyBytes   = 1 << 20
	DefaultMaxPromptBytes     = 256 << 10
	DefaultMaxHistoryMessages = 20
	DefaultChatMaxTokens      = 4096
	// DefaultPullRegistry is the registry Ollama pulls a name without a
	// host from (llama3, library/llama3:8b, ns/model).
	DefaultPullRegistry = "registry.ollama.ai"
	// DefaultMaxClientConnections leaves room for the 5,000-stream
	// benchmark with headroom, while bounding fds and memory per process.
	DefaultMaxClientConnections = 20000
)

// Config is the data listener's configuration (config keys gateway.*).
type Config struct {
	// Listen is the data listener's address. Default DefaultListen.
	Listen string `mapstructure:"listen"`
	// ReadTimeout bounds reading one whole request, headers and body (the
	// slow-loris clock); a blob upload's body, which may take hours, is
	// instead bounded per read: the upload fails with 408 when no byte of
	// it has come for this long. Default DefaultReadTimeout.
	ReadTimeout time.Duration `mapstructure:"read_timeout"`
	// KeepAliveTimeout closes a client connection idle this long between
	// requests (between 7/8 of it and all of it: the deadline is re-armed
	// only when it has moved by an eighth, readahead.go). Default
	// DefaultKeepAliveTimeout.
	KeepAliveTimeout time.Duration `mapstructure:"keepalive_timeout"`
	// WriteIdleTimeout closes a streaming response whose client has not
	// taken a frame for this long. Default DefaultWriteIdleTimeout.
	WriteIdleTimeout time.Duration `mapstructure:"write_idle_timeout"`
	// DrainTimeout is how long in-flight streams may run on after SIGTERM.
	// Default DefaultDrainTimeout.
	DrainTimeout time.Duration `mapstructure:"drain_timeout"`
	// MaxStreamDuration is a backstop on one inference response's total
	// time; the idle and first-byte clocks are the main controls. Model
	// management (pull, push, create, blobs) has none. Default
	// DefaultMaxStreamDuration; negative means none.
	MaxStreamDuration time.Duration `mapstructure:"max_stream_duration"`
	// MaxStreamBytes caps the bytes of one inference stream relayed to the
	// client: over it the stream ends with a terminal upstream_too_large
	// record (F-11). 0 (the default) means no cap: a long generation is
	// legitimate, and the clocks and MaxStreamDuration bound a stream
	// already. Model management has none.
	MaxStreamBytes int64 `mapstructure:"max_stream_bytes"`
	// MaxHeaderBytes caps the request line plus headers (431 above it).
	// Default DefaultMaxHeaderBytes.
	MaxHeaderBytes int `mapstructure:"max_header_bytes"`
	// MaxBodyBytes caps a pass-through request body (413 above it).
	// Default DefaultMaxBodyBytes.
	MaxBodyBytes int `mapstructure:"max_body_bytes"`
	// MaxBlobBytes caps one blob upload (POST /api/blobs/:digest, what
	// `ollama create` sends a GGUF file's weights as): a longer body gets
	// 413, refused from its Content-Length before a byte goes upstream, or
	// as soon as a chunked one passes the cap (the upstream upload is then
	// aborted). The body is streamed to the backend as it arrives, never
	// held. 0 means no cap; the config file's default is
	// DefaultMaxBlobBytes.
	MaxBlobBytes int64 `mapstructure:"max_blob_bytes"`
	// MaxFrameBytes caps one NDJSON line or SSE event from the upstream
	// (Ollama's Go client caps a line at 8 MiB). Default DefaultMaxFrameBytes.
	MaxFrameBytes int `mapstructure:"max_frame_bytes"`
	// ModelAllowlist, when not empty, is the only models inference routes
	// may name; any other (a typo, a cloud model, a registry path) gets 403
	// model_not_allowed, so prompts cannot leave the box through a model
	// the operator did not choose. Empty: Ollama decides (404 if missing).
	ModelAllowlist []string `mapstructure:"model_allowlist"`
	// MaxKeepAlive caps keep_alive in inference bodies: a longer one, or a
	// negative one (Ollama: keep the model loaded forever), gets 400
	// option_over_limit. Default 0: no cap. An absent keep_alive is
	// Ollama's own default and is not checked.
	MaxKeepAlive time.Duration `mapstructure:"max_keep_alive"`
	// MaxNumCtx caps options.num_ctx in inference bodies (400
	// option_over_limit above it). Default 0: no cap.
	MaxNumCtx int `mapstructure:"max_num_ctx"`
	// MaxNumPredict caps options.num_predict in inference bodies, and the
	// OpenAI/Anthropic fields Ollama turns into it (max_tokens,
	// max_output_tokens): a larger or negative (unbounded) value gets 400
	// option_over_limit. Default 0: no cap. /chat has its own chat.max_tokens.
	MaxNumPredict int `mapstructure:"max_num_predict"`
	// PullRegistries are the registry hosts (host or host:port, "*" for
	// any) that pull and push may name and that create may copy "from";
	// another host, or a name with a URL scheme, gets 403
	// registry_not_allowed, so a manage key cannot make Ollama fetch from
	// an arbitrary address (SSRF). Names without a host are on
	// DefaultPullRegistry. Default [DefaultPullRegistry].
	PullRegistries []string `mapstructure:"pull_registries"`
	// PullAllowInsecure lets pull and push send "insecure": true, which
	// makes Ollama talk plain HTTP to the registry. Default false: 403
	// insecure_not_allowed.
	PullAllowInsecure bool `mapstructure:"pull_allow_insecure"`
	// MaxInFlight sheds load: a request that arrives while this many are in
	// flight (streams included, until their last byte) gets 503 shed with
	// Retry-After before any upstream I/O; /healthz is never shed. Default
	// 0: no limit (the pool's connection and queue bounds still apply).
	MaxInFlight int `mapstructure:"max_in_flight"`
	// MaxClientConnections is the most client connections open at once,
	// streaming ones included (fasthttp's Server.Concurrency, plus a check
	// at accept for the connections streams took off fasthttp's workers).
	// One more is answered with a plain-text 503 and closed, bypassing the
	// handler, so open streams are unaffected by a connection flood.
	// Default DefaultMaxClientConnections.
	MaxClientConnections int `mapstructure:"max_client_connections"`
	// TrustedProxies are the front proxies (a TLS terminator, a load
	// balancer), as CIDRs or single addresses, whose X-Forwarded-For the
	// gateway believes. From a peer in one, the header is kept and the peer
	// appended, and the client address in the access log and the per-IP
	// failure budget is the rightmost one not in these ranges. From any
	// other peer, X-Forwarded-For is replaced by the peer's address.
	// Default empty: no peer is trusted.
	TrustedProxies []string `mapstructure:"trusted_proxies"`
	// trusted is TrustedProxies parsed (by withDefaults; validate reports
	// a bad entry).
	trusted trustedProxies
	// TLS is the data listener's certificate and key (config keys
	// gateway.tls.cert_file and key_file): both set, the listener speaks
	// HTTPS (TLS 1.2 or later, the files reloaded when they change);
	// neither, plain HTTP (the default).
	TLS tlsfiles.Config `mapstructure:"tls"`

	// CORS lets browser pages on other origins call the gateway
	// (gateway.cors.*; cors.go). Default: off.
	CORS CORSConfig `mapstructure:"cors"`
	// DefaultModel is the model /chat uses when a request names none
	// (config key upstream.default_model). Default DefaultDefaultModel.
	DefaultModel string `mapstructure:"-"`
}

// ChatConfig shapes Vega's own POST /chat (config keys chat.*).
type ChatConfig struct {
	// MaxHistoryMessages keeps the newest N history messages; older ones
	// are dropped first. Default DefaultMaxHistoryMessages; negative keeps none.
	MaxHistoryMessages int `mapstructure:"max_history_messages"`
	// MaxBodyBytes caps a /chat request body (413). Default DefaultMaxChatBodyBytes.
	MaxBodyBytes int `mapstructure:"max_body_bytes"`
	// MaxPromptBytes caps the prompt field (400 prompt_too_long).
	// Default DefaultMaxPromptBytes.
	MaxPromptBytes int `mapstructure:"max_prompt_bytes"`
	// MaxTokens caps options.num_predict on every /chat upstream call (a
	// request asking for more, or for unlimited -1, gets the cap), so one
	// prompt cannot hold the GPU for an unbounded generation. Default
	// DefaultChatMaxTokens; negative means no cap.
	MaxTokens int `mapstructure:"max_tokens"`
	// MaxContext caps options.num_ctx the same way. Default 0: no cap.
	MaxContext int `mapstructure:"max_context"`
}

func (c Config) withDefaults() Config {
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	if c.ReadTimeout == 0 {
		c.ReadTimeout = DefaultReadTimeout
	}
	if c.KeepAliveTimeout == 0 {
		c.KeepAliveTimeout = DefaultKeepAliveTimeout
	}
	if c.WriteIdleTimeout == 0 {
		c.WriteIdleTimeout = DefaultWriteIdleTimeout
	}
	if c.DrainTimeout == 0 {
		c.DrainTimeout = DefaultDrainTimeout
	}
	if c.MaxStreamDuration == 0 {
		c.MaxStreamDuration = DefaultMaxStreamDuration
	}
	if c.MaxHeaderBytes == 0 {
		c.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if c.MaxFrameBytes == 0 {
		c.MaxFrameBytes = DefaultMaxFrameBytes
	}
	if c.DefaultModel == "" {
		c.DefaultModel = DefaultDefaultModel
	}
	if c.MaxClientConnections == 0 {
		c.MaxClientConnections = DefaultMaxClientConnections
	}
	c.trusted, _ = parseTrustedProxies(c.TrustedProxies)
	if len(c.PullRegistries) == 0 {
		c.PullRegistries = []string{DefaultPullRegistry}
	}
	c.CORS = c.CORS.withDefaults()
	return c
}

func (c Config) validate() error {
	for name, d := range map[string]time.Duration{
		"read_timeout": c.ReadTimeout, "keepalive_timeout": c.KeepAliveTimeout,
		"write_idle_timeout": c.WriteIdleTimeout, "drain_timeout": c.DrainTimeout,
	} {
		if d < 0 {
			return fmt.Errorf("gateway.%s: must not be negative, got %s", name, d)
		}
	}
	for name, n := range map[string]int{
		"max_header_bytes": c.MaxHeaderBytes, "max_body_bytes": c.MaxBodyBytes, "max_frame_bytes": c.MaxFrameBytes,
		"max_client_connections": c.MaxClientConnections,
	} {
		if n < 0 {
			return fmt.Errorf("gateway.%s: must not be negative, got %d", name, n)
		}
	}
	if c.MaxBlobBytes < 0 {
		return fmt.Errorf("gateway.max_blob_bytes: must not be negative, got %d (0 means no cap)", c.MaxBlobBytes)
	}
	if c.MaxStreamBytes < 0 {
		return fmt.Errorf("gateway.max_stream_bytes: must not be negative, got %d", c.MaxStreamBytes)
	}
	if c.MaxHeaderBytes < 1024 {
		return fmt.Errorf("gateway.max_header_bytes: must be at least 1024, got %d", c.MaxHeaderBytes)
	}
	if _, err := parseTrustedProxies(c.TrustedProxies); err != nil {
		return fmt.Errorf("gateway.trusted_proxies: %w", err)
	}
	if _, err := newCORSPolicy(c.CORS); err != nil {
		return err
	}
	return c.validatePolicy()
}

func (c ChatConfig) withDefaults() ChatConfig {
	if c.MaxHistoryMessages == 0 {
		c.MaxHistoryMessages = DefaultMaxHistoryMessages
	}
	if c.MaxHistoryMessages < 0 {
		c.MaxHistoryMessages = 0
	}
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = DefaultMaxChatBodyBytes
	}
	if c.MaxPromptBytes == 0 {
		c.MaxPromptBytes = DefaultMaxPromptBytes
	}
	if c.MaxTokens == 0 {
		c.MaxTokens = DefaultChatMaxTokens
	}
	return c
}

func (c ChatConfig) validate() error {
	if c.MaxBodyBytes < 0 || c.MaxPromptBytes < 0 || c.MaxContext < 0 {
		return fmt.Errorf("chat.max_body_bytes, chat.max_prompt_bytes, chat.max_context: must not be negative")
	}
	return nil
}
