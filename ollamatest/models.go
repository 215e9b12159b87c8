package ollamatest

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"
)

// modifiedAt is the modified_at of every model, fixed so replies are stable.
var modifiedAt = time.Date(2025, time.January, 1, 0, 0, 0, 0, time.UTC)

// modelEntry describes one known model.
type modelEntry struct {
	name      string // normalized: "llama3.2:latest"
	family    string
	params    string
	quant     string
	size      int64
	ctxLen    int
	embedLen  int
	paramsN   int64
	caps      []string
	digest    string // hex, no "sha256:"
	embedding bool
}

// normalizeModel gives a name its default tag, as Ollama does ("x" is "x:latest").
func normalizeModel(name string) string {
	name = strings.ToLower(strings.TrimSpace(name))
	if strings.HasPrefix(name, FaultModelPrefix) {
		return name
	}
	last := name[strings.LastIndex(name, "/")+1:]
	if last != "" && !strings.Contains(last, ":") {
		name += ":latest"
	}
	return name
}

// describeModel invents stable details for a model name.
func describeModel(name string) *modelEntry {
	sum := sha256.Sum256([]byte("ollamatest:" + name))
	m := &modelEntry{
		name: name, family: "llama", params: "1.2B", quant: "Q4_K_M", size: 807694464,
		ctxLen: 131072, embedLen: 2048, paramsN: 1235814432,
		caps: []string{"completion", "tools"}, digest: hex.EncodeToString(sum[:]),
	}
	base, _, _ := strings.Cut(name, ":")
	switch {
	case base == "llama3.2":
		m.params, m.size, m.embedLen, m.paramsN = "3.2B", 2019393189, 3072, 3212749888
	case strings.HasPrefix(base, "qwen2.5"):
		m.family, m.params, m.size, m.ctxLen, m.embedLen, m.paramsN = "qwen2", "494.03M", 397821319, 32768, 896, 494032768
	case strings.Contains(base, "embed"):
		m.family, m.params, m.quant, m.size, m.ctxLen, m.embedLen, m.paramsN = "nomic-bert", "137M", "F16", 274302450, 2048, 768, 136727040
		m.caps, m.embedding = []string{"embedding"}, true
	}
	return m
}

// addModel makes a model known; it reports false if it already was.
func (s *Server) addModel(name string) bool {
	n := normalizeModel(name)
	if n == "" {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.models[n]; ok {
		return false
	}
	s.models[n] = describeModel(n)
	s.modelOrder = append(s.modelOrder, n)
	return true
}

// model returns a known model; "fault:" models always exist.
func (s *Server) model(name string) (*modelEntry, bool) {
	n := normalizeModel(name)
	if strings.HasPrefix(n, FaultModelPrefix) {
		return describeModel(n), true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	m, ok := s.models[n]
	return m, ok
}

// Repull gives a known model a new digest, as pulling changed weights
// under the same name does (the response cache must then miss). It
// reports false for an unknown model.
func (s *Server) Repull(name string) bool {
	n := normalizeModel(name)
	s.mu.Lock()
	defer s.mu.Unlock()
	old, ok := s.models[n]
	if !ok {
		return false
	}
	m := *old
	sum := sha256.Sum256([]byte(m.digest))
	m.digest = hex.EncodeToString(sum[:])
	s.models[n] = &m
	return true
}

func (s *Server) removeModel(name string) bool {
	n := normalizeModel(name)
	s.mu.Lock()
	if _, ok := s.models[n]; !ok {
		s.mu.Unlock()
		return false
	}
	delete(s.models, n)
	delete(s.loaded, n)
	for i, o := range s.modelOrder {
		if o == n {
			s.modelOrder = append(s.modelOrder[:i:i], s.modelOrder[i+1:]...)
			break
		}
	}
	s.mu.Unlock()
	if s.sched != nil {
		s.sched.expireModel(n)
	}
	return true
}

// Models returns the names of the known models, normalized ("x:latest").
func (s *Server) Models() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.modelOrder...)
}

// UnloadModels forgets which models are loaded, so the next request for each
// waits Config.LoadDelay again and /api/ps is empty. In scheduler mode it
// unloads the idle models now and the busy ones once they are idle.
func (s *Server) UnloadModels() {
	if s.sched != nil {
		s.sched.expireAll()
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.loaded = make(map[string]*loadState)
}

// loadState is one model's (cold) load.
type loadState struct {
	ready   chan struct{} // closed when the load ends
	ok      bool          // written before ready is closed
	expires time.Time
}

// load waits for model name to be loaded, loading it (Config.LoadDelay) if
// no request has. It reports false if the request ended first. "fault:"
// models are always loaded, so only their fault mode shapes their timing.
func (s *Server) load(x *exchange, name string) bool {
	n := normalizeModel(name)
	if isFaultModel(n) {
		return true
	}
	for {
		s.mu.Lock()
		ls := s.loaded[n]
		if ls == nil {
			ls = &loadState{ready: make(chan struct{})}
			s.loaded[n] = ls
			s.mu.Unlock()
			ok := x.pause(s.cfg.LoadDelay)
			s.mu.Lock()
			ls.ok, ls.expires = ok, time.Now().Add(5*time.Minute)
			if !ok && s.loaded[n] == ls {
				delete(s.loaded, n) // the next request loads it again
			}
			s.mu.Unlock()
			close(ls.ready)
			return ok
		}
		s.mu.Unlock()
		select {
		case <-ls.ready:
			if ls.ok {
				return true
			}
		case <-x.r.Context().Done():
			x.clientGone()
			return false
		case <-x.s.done:
			return false
		}
	}
}

// isFaultModel reports a "fault:" model, which is always loaded and never
// scheduled, so only its fault mode shapes its timing.
func isFaultModel(name string) bool {
	return strings.HasPrefix(normalizeModel(name), FaultModelPrefix)
}

// loadModel answers the load part of a load request (chat without messages,
// generate without prompt): it waits for the model to be loaded.
func (x *exchange) loadModel(name string, keepAlive any) bool {
	if x.s.sched != nil && !isFaultModel(name) {
		return x.s.sched.hold(x, name, keepAliveOf(keepAlive))
	}
	return x.s.load(x, name)
}

// unload ends a model's residency (keep_alive 0); in scheduler mode a busy
// model unloads once it is idle.
func (s *Server) unload(name string) {
	if s.sched != nil {
		s.sched.expireModel(name)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.loaded, normalizeModel(name))
}

type modelDetails struct {
	ParentModel       string   `json:"parent_model"`
	Format            string   `json:"format"`
	Family            string   `json:"family"`
	Families          []string `json:"families"`
	ParameterSize     string   `json:"parameter_size"`
	QuantizationLevel string   `json:"quantization_level"`
}

func (m *modelEntry) details() modelDetails {
	return modelDetails{Format: "gguf", Family: m.family, Families: []string{m.family}, ParameterSize: m.params, QuantizationLevel: m.quant}
}

// tags answers GET /api/tags.
func (x *exchange) tags() {
	type listModel struct {
		Name       string       `json:"name"`
		Model      string       `json:"model"`
		ModifiedAt time.Time    `json:"modified_at"`
		Size       int64        `json:"size"`
		Digest     string       `json:"digest"`
		Details    modelDetails `json:"details"`
	}
	list := []listModel{}
	for _, n := range x.s.Models() {
		m, _ := x.s.model(n)
		list = append(list, listModel{Name: m.name, Model: m.name, ModifiedAt: modifiedAt, Size: m.size, Digest: m.digest, Details: m.details()})
	}
	x.json(http.StatusOK, map[string]any{"models": list})
}

// processModel is one entry of /api/ps (Ollama's api.ProcessModelResponse).
type processModel struct {
	Name          string       `json:"name"`
	Model         string       `json:"model"`
	Size          int64        `json:"size"`
	Digest        string       `json:"digest"`
	Details       modelDetails `json:"details"`
	ExpiresAt     time.Time    `json:"expires_at"`
	SizeVRAM      int64        `json:"size_vram"`
	ContextLength int          `json:"context_length"`
}

// process describes m as loaded, entirely in VRAM.
func (m *modelEntry) process(expires time.Time) processModel {
	return processModel{Name: m.name, Model: m.name, Size: m.size, Digest: m.digest,
		Details: m.details(), ExpiresAt: expires, SizeVRAM: m.size, ContextLength: 4096}
}

// ps answers GET /api/ps with the loaded models.
func (x *exchange) ps() {
	if x.s.sched != nil {
		x.json(http.StatusOK, map[string]any{"models": x.s.sched.ps()})
		return
	}
	list := []processModel{}
	x.s.mu.Lock()
	loaded := make(map[string]*loadState, len(x.s.loaded))
	for n, ls := range x.s.loaded {
		loaded[n] = ls
	}
	x.s.mu.Unlock()
	for n, ls := range loaded {
		select {
		case <-ls.ready:
		default:
			continue // still loading
		}
		m, ok := x.s.model(n)
		if !ok || !ls.ok {
			continue
		}
		list = append(list, m.process(ls.expires))
	}
	slices.SortFunc(list, func(a, b processModel) int { return strings.Compare(a.Name, b.Name) })
	x.json(http.StatusOK, map[string]any{"models": list})
}

// show answers POST /api/show.
func (x *exchange) show() {
	var req struct {
		Model string `json:"model"`
		Name  string `json:"name"`
	}
	if !x.decode(&req) {
		return
	}
	name := req.Model
	if name == "" {
		name = req.Name
	}
	if name == "" {
		x.fail(http.StatusBadRequest, "model is required")
		return
	}
	m, ok := x.s.model(name)
	if !ok {
		x.fail(http.StatusNotFound, fmt.Sprintf("model '%s' not found", name))
		return
	}
	template := "{{ .Prompt }}"
	x.json(http.StatusOK, map[string]any{
		"license": "ollamatest fake model",
		"modelfile": "# Modelfile generated by \"ollama show\"\n# To build a new Modelfile based on this, replace FROM with:\n# FROM " +
			m.name + "\n\nFROM /root/.ollama/models/blobs/sha256-" + m.digest + "\nTEMPLATE \"\"\"" + template +
			"\"\"\"\nPARAMETER stop <|eot_id|>\n",
		"parameters": fmt.Sprintf("%-30s %q", "stop", "<|eot_id|>"),
		"template":   template,
		"details":    m.details(),
		"model_info": map[string]any{
			"general.architecture":                m.family,
			"general.basename":                    strings.SplitN(m.name, ":", 2)[0],
			"general.parameter_count":             m.paramsN,
			m.family + ".context_length":          m.ctxLen,
			m.family + ".embedding_length":        m.embedLen,
			"general.file_type":                   15,
			"general.quantization_version":        2,
			"tokenizer.ggml.model":                "gpt2",
			m.family + ".attention.head_count":    24,
			m.family + ".attention.head_count_kv": 8,
		},
		"capabilities": m.caps,
		"modified_at":  modifiedAt,
	})
}
