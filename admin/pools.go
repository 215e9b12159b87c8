package admin

import (
	"time"

	"github.com/vega-gateway/vega-gateway/pool"
)

// PoolView is the JSON shape of one pool on /admin/resources/pools.
type PoolView struct {
	Upstream          string     `json:"upstream"`
	MaxConnections    int        `json:"max_connections"`
	ConnectionsInPool int64      `json:"connections_in_pool"`
	ConnectionsActive int64      `json:"connections_active"`
	ConnectionsIdle   int64      `json:"connections_idle"`
	RequestsInFlight  int64      `json:"requests_in_flight"`
	RequestsWaiting   int64      `json:"requests_waiting"`
	HTTPClientClosed  bool       `json:"http_client_closed"`
	PoolConfig        PoolConfig `json:"pool_config"`
	UsageStats        UsageStats `json:"usage_stats"`
	Health            HealthView `json:"health"`
}

// PoolConfig is a pool's settings, durations as Go duration strings.
type PoolConfig struct {
	MaxConnections      int    `json:"max_connections"`
	MaxQueue            int    `json:"max_queue"`
	MaxWait             string `json:"max_wait"`
	MaxIdleConnDuration string `json:"max_idle_conn_duration"`
	ConnectTimeout      string `json:"connect_timeout"`
	FirstByteTimeout    string `json:"first_byte_timeout"`
	IdleTimeout         string `json:"idle_timeout"`
	HealthInterval      string `json:"health_interval"`
}

// UsageStats are a pool's counters since start.
type UsageStats struct {
	ClientsCreated    int64 `json:"clients_created"`
	RequestsMade      int64 `json:"requests_made"`
	ConnectionsOpened int64 `json:"connections_opened"`
	ConnectionsClosed int64 `json:"connections_closed"`
	WaitTimeouts      int64 `json:"wait_timeouts"`
	QueueRejections   int64 `json:"queue_rejections"`
	Errors            int64 `json:"errors"`
	Retries           int64 `json:"retries"`
	ClientDisconnects int64 `json:"client_disconnects"`
	Abandoned         int64 `json:"abandoned_in_queue"`
}

// HealthView is the health prober's view of an upstream.
type HealthView struct {
	Healthy             bool    `json:"healthy"`
	Probed              bool    `json:"probed"`
	Down                bool    `json:"down"`
	ConsecutiveFailures int     `json:"consecutive_failures"`
	LastCheck           *string `json:"last_check"`
	LastLatencyMS       float64 `json:"last_latency_ms"`
	LastError           string  `json:"last_error,omitempty"`
}

// PoolsResponse is /admin/resources/pools: the first backend's pool fields
// at the top level, every backend under "pools", and, with a fleet, the
// routing policy and its fleet-wide counters.
type PoolsResponse struct {
	PoolView
	Pools   []BackendView `json:"pools"`
	Routing *RoutingView  `json:"routing,omitempty"`
}

// NewPoolView converts a snapshot to its JSON view.
func NewPoolView(s pool.Snapshot) PoolView {
	h := HealthView{
		Healthy: s.Health.Healthy, Probed: s.Health.Probed, Down: s.Health.Down,
		ConsecutiveFailures: s.Health.ConsecutiveFailures,
		LastLatencyMS:       float64(s.Health.LastLatency.Microseconds()) / 1000,
		LastError:           s.Health.LastError,
	}
	if !s.Health.LastCheck.IsZero() {
		t := s.Health.LastCheck.UTC().Format(time.RFC3339Nano)
		h.LastCheck = &t
	}
	return PoolView{
		Upstream:          s.Upstream,
		MaxConnections:    s.MaxConnections,
		ConnectionsInPool: s.ConnectionsOpen,
		ConnectionsActive: s.ConnectionsActive,
		ConnectionsIdle:   s.ConnectionsIdle,
		RequestsInFlight:  s.RequestsInFlight,
		RequestsWaiting:   s.RequestsWaiting,
		HTTPClientClosed:  s.Closed,
		PoolConfig: PoolConfig{
			MaxConnections: s.Config.MaxConnections, MaxQueue: s.Config.MaxQueue,
			MaxWait: s.Config.MaxWait.String(), MaxIdleConnDuration: s.Config.MaxIdleConnDuration.String(),
			ConnectTimeout: s.UpstreamConfig.ConnectTimeout.String(), FirstByteTimeout: s.UpstreamConfig.FirstByteTimeout.String(),
			IdleTimeout: s.UpstreamConfig.IdleTimeout.String(), HealthInterval: s.UpstreamConfig.HealthInterval.String(),
		},
		UsageStats: UsageStats{
			ClientsCreated: s.ClientsCreated, RequestsMade: s.RequestsMade,
			ConnectionsOpened: s.ConnectionsOpened, ConnectionsClosed: s.ConnectionsClosed,
			WaitTimeouts: s.WaitTimeouts, QueueRejections: s.QueueRejections, Errors: s.Errors,
			Retries: s.Retries, ClientDisconnects: s.ClientDisconnects, Abandoned: s.Abandoned,
		},
		Health: h,
	}
}

// poolsView is the response from pool snapshots alone (no routing state).
func poolsView(snaps []pool.Snapshot) PoolsResponse {
	var r PoolsResponse
	r.Pools = make([]BackendView, 0, len(snaps))
	for _, s := range snaps {
		r.Pools = append(r.Pools, BackendView{PoolView: NewPoolView(s)})
	}
	if len(r.Pools) > 0 {
		r.PoolView = r.Pools[0].PoolView
	}
	return r
}
