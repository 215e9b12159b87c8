package access

import (
	"fmt"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
)

// Control is the live answer to "who may call": the current keyring,
// swapped whole by Reload, so a request sees one consistent set of keys.
type Control struct {
	cfg  Config
	ring atomic.Pointer[Keyring]
	// reloadFailures counts Reload calls that failed.
	reloadFailures atomic.Int64
}

// New builds the keyring from cfg (reading auth.keys_file). A bad key or
// file is an error naming the config key.
func New(cfg Config) (*Control, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	kr, err := buildKeyring(cfg)
	if err != nil {
		return nil, err
	}
	c := &Control{cfg: cfg}
	c.ring.Store(kr)
	return c, nil
}

// Config is the configuration Control was built with.
func (c *Control) Config() Config { return c.cfg }

// Open reports whether no keys are configured: every request is let in.
func (c *Control) Open() bool { return c.ring.Load().Open() }

// Identities lists the configured keys' identities (none when open).
func (c *Control) Identities() []*Identity { return c.ring.Load().Identities() }

// Check authenticates one request from its headers. The Identity is the
// matched key (nil unless Result.Status is OK); now is the gateway's clock
// for the request.
func (c *Control) Check(h *fasthttp.RequestHeader, now time.Time) (Result, *Identity) {
	return c.ring.Load().check(h, now)
}

// Reload re-reads auth.keys_file and swaps the keyring at once: new
// requests use the new keys, open streams are not touched. On error the
// old keyring stays. A file that now holds no key is an error when the
// gateway has keys: an empty keyring is an open gateway, and a file caught
// half-written (an editor's truncate, a ConfigMap being swapped) must not
// let everyone in. Opening a gateway takes a restart.
func (c *Control) Reload() error {
	kr, err := buildKeyring(c.cfg)
	if err == nil && kr.Open() && !c.ring.Load().Open() {
		err = fmt.Errorf("auth.keys_file %s holds no key: reloading it would open the gateway to everyone, so the previous keys stay (restart to run without keys)", c.cfg.KeysFile)
	}
	if err != nil {
		c.reloadFailures.Add(1)
		return err
	}
	c.ring.Store(kr)
	return nil
}

// ReloadFailures is the number of Reload calls that failed (the previous
// keys stayed in force each time).
func (c *Control) ReloadFailures() int64 { return c.reloadFailures.Load() }
