package metrics

import (
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// modelSet bounds the model label: an allowlist, or the first max models
// seen. Guarded by Metrics.mu.
type modelSet struct {
	names map[string]struct{}
	fixed bool // names is the configured allowlist
	max   int
}

func (s *modelSet) init(allow []string, max int) {
	s.names = make(map[string]struct{}, min(max, 64))
	s.max = max
	for _, n := range allow {
		s.names[n] = struct{}{}
	}
	s.fixed = len(allow) > 0
}

// label returns the label for model, admitting it if there is room.
// Callers hold Metrics.mu for writing.
func (s *modelSet) label(model string) string {
	if _, ok := s.names[model]; ok {
		return model
	}
	if s.fixed || len(s.names) >= s.max {
		return OtherModel
	}
	// The record's strings are valid only during Observe: keep a copy.
	model = strings.Clone(model)
	s.names[model] = struct{}{}
	return model
}

// full reports whether no new model can get its own label. Callers hold
// Metrics.mu.
func (s *modelSet) full() bool { return s.fixed || len(s.names) >= s.max }

// knownDoneReasons are Ollama's done_reason values; anything else is
// counted as "other" so a misbehaving upstream cannot grow the label set.
var knownDoneReasons = [...]string{"stop", "length", "load", "unload"}

// modelSeries are one model label's cached children.
type modelSeries struct {
	requests           prometheus.Counter
	prompt, completion prometheus.Counter
	tps, ttft, load    prometheus.Histogram
	coldLoads          prometheus.Counter
	done               [len(knownDoneReasons)]prometheus.Counter
	doneOther          prometheus.Counter
}

func (ms *modelSeries) doneReason(reason string) prometheus.Counter {
	for i, r := range knownDoneReasons {
		if r == reason {
			return ms.done[i]
		}
	}
	return ms.doneOther
}

// modelSeries returns the children for model, folding it into "other"
// past the bound. The map is keyed by label, so it never holds more than
// the bound plus one entry; a folded model takes the write lock only until
// the set is full.
func (m *Metrics) modelSeries(model string) *modelSeries {
	m.mu.RLock()
	ms := m.byModel[model]
	if ms == nil && m.models.full() {
		if _, named := m.models.names[model]; !named {
			ms = m.byModel[OtherModel]
		}
	}
	m.mu.RUnlock()
	if ms != nil {
		return ms
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	label := m.models.label(model)
	if ms = m.byModel[label]; ms != nil {
		return ms
	}
	ms = &modelSeries{
		requests:   m.llmReqs.WithLabelValues(label),
		prompt:     m.tokens.WithLabelValues(label, "prompt"),
		completion: m.tokens.WithLabelValues(label, "completion"),
		tps:        m.tps.WithLabelValues(label).(prometheus.Histogram),
		ttft:       m.ttft.WithLabelValues(label).(prometheus.Histogram),
		load:       m.load.WithLabelValues(label).(prometheus.Histogram),
		coldLoads:  m.coldLoads.WithLabelValues(label),
		doneOther:  m.done.WithLabelValues(label, "other"),
	}
	for i, r := range knownDoneReasons {
		ms.done[i] = m.done.WithLabelValues(label, r)
	}
	m.byModel[label] = ms
	return ms
}
