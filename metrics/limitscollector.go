package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/vega-gateway/vega-gateway/limits"
)

// limitsCollector reads the keys' use of their limits at scrape time (one
// Redis round trip with shared limits, so every replica reports the
// fleet-wide figure) and the limiter's own counters. The key label takes
// the configured key names only.
type limitsCollector struct {
	l *limits.Limiter
}

var (
	descKeyRequests = prometheus.NewDesc("vega_key_requests", "Requests the key started in the current clock minute (against requests_per_minute), fleet-wide with limits.redis_url.", []string{"key"}, nil)
	descKeyInFlight = prometheus.NewDesc("vega_key_in_flight", "The key's requests holding a max_concurrent slot.", []string{"key"}, nil)
	descKeyTokens   = prometheus.NewDesc("vega_key_tokens_used", "Prompt + completion tokens charged to the key in the current window (minute: clock minute; day: UTC day), for keys with a token budget.", []string{"key", "window"}, nil)
	descKeyLimit    = prometheus.NewDesc("vega_key_limit", "The key's configured limit, by name (requests_per_minute, max_concurrent, tokens_per_minute, tokens_per_day); unset limits are absent.", []string{"key", "limit"}, nil)
	descRedisErrors = prometheus.NewDesc("vega_limits_redis_errors_total", "Calls to the limits' Redis that failed or timed out; requests then followed limits.on_redis_error.", nil, nil)
	descUnchecked   = prometheus.NewDesc("vega_limits_allowed_unchecked_total", "Requests let through without a limits check because Redis failed (limits.on_redis_error: allow).", nil, nil)
	descRefused     = prometheus.NewDesc("vega_limits_refused_total", "Requests (or backend attempts) the limits refused, by reason.", []string{"reason"}, nil)
	descUsageUp     = prometheus.NewDesc("vega_limits_usage_up", "1 if this scrape could read the keys' use of their limits, 0 if Redis failed.", nil, nil)
)

// RegisterLimits adds the keys' use of their limits and the limiter's
// counters to /metrics and /admin/resources/stats. Call it once, before
// serving.
func (m *Metrics) RegisterLimits(l *limits.Limiter) {
	m.limits = l
	m.reg.MustRegister(&limitsCollector{l: l})
}

func (c *limitsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descKeyRequests, descKeyInFlight, descKeyTokens, descKeyLimit, descRedisErrors, descUnchecked, descRefused, descUsageUp} {
		ch <- d
	}
}

func (c *limitsCollector) Collect(ch chan<- prometheus.Metric) {
	usage, err := c.l.Usage()
	ch <- prometheus.MustNewConstMetric(descUsageUp, prometheus.GaugeValue, b2f(err == nil))
	for _, u := range usage {
		limit := func(name string, v int64) {
			if v > 0 {
				ch <- prometheus.MustNewConstMetric(descKeyLimit, prometheus.GaugeValue, float64(v), u.Name, name)
			}
		}
		limit("requests_per_minute", int64(u.RequestsPerMinute))
		limit("max_concurrent", int64(u.MaxConcurrent))
		limit("tokens_per_minute", u.TokensPerMinute)
		limit("tokens_per_day", u.TokensPerDay)
		ch <- prometheus.MustNewConstMetric(descKeyRequests, prometheus.GaugeValue, float64(u.RequestsThisMinute), u.Name)
		ch <- prometheus.MustNewConstMetric(descKeyInFlight, prometheus.GaugeValue, float64(u.InFlight), u.Name)
		if u.TokensPerMinute > 0 || u.TokensPerDay > 0 {
			ch <- prometheus.MustNewConstMetric(descKeyTokens, prometheus.GaugeValue, float64(u.TokensThisMinute), u.Name, "minute")
			ch <- prometheus.MustNewConstMetric(descKeyTokens, prometheus.GaugeValue, float64(u.TokensToday), u.Name, "day")
		}
	}
	st := c.l.Stats()
	ch <- prometheus.MustNewConstMetric(descRedisErrors, prometheus.CounterValue, float64(st.RedisErrors.Load()))
	ch <- prometheus.MustNewConstMetric(descUnchecked, prometheus.CounterValue, float64(st.AllowedUnchecked.Load()))
	for r := limits.IPBlocked; r <= limits.Unavailable; r++ {
		ch <- prometheus.MustNewConstMetric(descRefused, prometheus.CounterValue, float64(st.Refused[r].Load()), r.String())
	}
}

// LimitsStats is the limits part of /admin/resources/stats.
type LimitsStats struct {
	// Store is "process" (each replica on its own) or the Redis address.
	Store string `json:"store"`
	// Keys are the limited keys' use, fleet-wide with Redis.
	Keys []limits.KeyUsage `json:"keys"`
	// UsageError says why Keys could not be read (Redis failed).
	UsageError       string           `json:"usage_error,omitempty"`
	RedisErrors      int64            `json:"redis_errors"`
	AllowedUnchecked int64            `json:"allowed_unchecked"`
	Refused          map[string]int64 `json:"refused"`
}

func limitsStats(l *limits.Limiter) *LimitsStats {
	out := &LimitsStats{Store: l.Where(), Keys: []limits.KeyUsage{}, Refused: map[string]int64{}}
	usage, err := l.Usage()
	if err != nil {
		out.UsageError = err.Error()
	} else if usage != nil {
		out.Keys = usage
	}
	st := l.Stats()
	out.RedisErrors, out.AllowedUnchecked = st.RedisErrors.Load(), st.AllowedUnchecked.Load()
	for r := limits.IPBlocked; r <= limits.Unavailable; r++ {
		out.Refused[r.String()] = st.Refused[r].Load()
	}
	return out
}
