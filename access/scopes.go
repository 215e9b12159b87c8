package access

import (
	"fmt"
	"strings"
)

// Scope names, as written in config (auth.keys[].scopes).
const (
	// ScopeInference: chat, generate, embed, /v1 inference, /v1/messages, /chat.
	ScopeInference = "inference"
	// ScopeModelsRead: tags, show, ps, version, /v1/models.
	ScopeModelsRead = "models:read"
	// ScopeModelsManage: pull, push, create, copy, delete, blobs.
	ScopeModelsManage = "models:manage"
)

// Scopes is a set of scopes, one bit each, so a route's check is one AND.
type Scopes uint8

// The scopes as bits of a Scopes set.
const (
	Inference Scopes = 1 << iota
	ModelsRead
	ModelsManage
)

// defaultScopes is what a key without scopes holds.
const defaultScopes = Inference | ModelsRead

// Has reports whether s holds every scope of need.
func (s Scopes) Has(need Scopes) bool { return s&need == need }

// ParseScopes reads scope names; an unknown name is an error naming the
// accepted ones.
func ParseScopes(names []string) (Scopes, error) {
	var s Scopes
	for _, n := range names {
		switch strings.TrimSpace(n) {
		case ScopeInference:
			s |= Inference
		case ScopeModelsRead:
			s |= ModelsRead
		case ScopeModelsManage:
			s |= ModelsManage
		default:
			return 0, fmt.Errorf("unknown scope %q (want %s, %s or %s)", n, ScopeInference, ScopeModelsRead, ScopeModelsManage)
		}
	}
	return s, nil
}
