package pool

import "time"

// Snapshot is a point-in-time view of a pool, for the admin listener and
// metrics. Every number comes from the pool's own counters, so the JSON and
// Prometheus views cannot disagree.
type Snapshot struct {
	Upstream          string
	MaxConnections    int
	MaxQueue          int
	MaxWait           time.Duration
	ConnectionsOpen   int64 // open upstream connections, busy and idle
	ConnectionsActive int64 // open connections carrying a request
	ConnectionsIdle   int64 // open keep-alive connections waiting for reuse
	RequestsInFlight  int64
	RequestsWaiting   int64
	Closed            bool // Close was called: the pool takes no requests
	ClientsCreated    int64
	RequestsMade      int64
	ConnectionsOpened int64
	ConnectionsClosed int64
	WaitTimeouts      int64
	QueueRejections   int64
	Errors            int64
	Retries           int64
	ClientDisconnects int64
	Abandoned         int64
	Health            HealthSnapshot
	Config            Config
	UpstreamConfig    UpstreamConfig
}

// Snapshot reads the counters. It takes fasthttp's connection lock once
// (for the idle count) and allocates nothing else; cheap enough for a
// once-a-second admin poll or a scrape.
func (p *Pool) Snapshot() Snapshot {
	s := &p.stats
	opened, closed := s.ConnectionsOpened.Load(), s.ConnectionsClosed.Load()
	open := max(opened-closed, 0)
	idle := min(int64(p.client.IdleConnsCount()), open)
	return Snapshot{
		Upstream:          p.up.URL,
		MaxConnections:    p.cfg.MaxConnections,
		MaxQueue:          p.cfg.MaxQueue,
		MaxWait:           p.cfg.MaxWait,
		ConnectionsOpen:   open,
		ConnectionsActive: open - idle,
		ConnectionsIdle:   idle,
		RequestsInFlight:  s.InFlight.Load(),
		RequestsWaiting:   s.Waiting.Load(),
		Closed:            p.Closed(),
		ClientsCreated:    s.ClientsCreated.Load(),
		RequestsMade:      s.RequestsMade.Load(),
		ConnectionsOpened: opened,
		ConnectionsClosed: closed,
		WaitTimeouts:      s.WaitTimeouts.Load(),
		QueueRejections:   s.QueueRejections.Load(),
		Errors:            s.Errors.Load(),
		Retries:           s.Retries.Load(),
		ClientDisconnects: s.ClientDisconnects.Load(),
		Abandoned:         s.Abandoned.Load(),
		Health:            p.health.snapshot(),
		Config:            p.cfg,
		UpstreamConfig:    p.up,
	}
}
