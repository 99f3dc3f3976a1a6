package gateway

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"strings"

	"chainmend/responses"
	"chainmend/statestore"
)

// DefaultSessionHeaders are the headers that name a client's session, in the order they are
// read: Codex 0.169 sends session-id, older builds session_id.
var DefaultSessionHeaders = []string{"session-id", "session_id"}

// tenantHexLen is the length of a tenant id: 128 bits of SHA-256 in hex, so that two
// credentials never share a tenant by accident.
const tenantHexLen = 32

// TenantOf returns the tenant id of a credential: a short hex SHA-256 of the Authorization
// value (a "Bearer " prefix and surrounding spaces ignored). The credential itself never
// reaches a key, a log or a metric.
func TenantOf(authorization string) string {
	cred := strings.TrimSpace(authorization)
	if len(cred) > 7 && strings.EqualFold(cred[:7], "bearer ") {
		cred = strings.TrimSpace(cred[7:])
	}
	sum := sha256.Sum256([]byte(cred))
	return hex.EncodeToString(sum[:tenantHexLen/2])
}

// maxSessionLen bounds a session id used verbatim; longer or unusual ids are hashed so keys
// stay short and printable.
const maxSessionLen = 128

// SessionOf returns the session id of a turn: the first of the headers that is set, else the
// request's prompt_cache_key, else the connection id ("conn:"-prefixed so it cannot collide
// with a client-chosen id). Ids that are long or contain control characters are replaced by
// "h:" and a hash of them.
func SessionOf(h http.Header, headers []string, promptCacheKey, connID string) string {
	for _, name := range headers {
		if v := strings.TrimSpace(h.Get(name)); v != "" {
			return sanitizeSession(v)
		}
	}
	if v := strings.TrimSpace(promptCacheKey); v != "" {
		return sanitizeSession(v)
	}
	return sanitizeSession("conn:" + connID)
}

func sanitizeSession(s string) string {
	ok := len(s) <= maxSessionLen && !strings.HasPrefix(s, "h:")
	for i := 0; ok && i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == 0x7f {
			ok = false
		}
	}
	if ok {
		return s
	}
	sum := sha256.Sum256([]byte(s))
	return "h:" + hex.EncodeToString(sum[:16])
}

// scopeOf names the state a request reads and writes: its tenant and its session, as the
// configuration says to tell them.
func (s *Server) scopeOf(hdr http.Header, req *responses.Request, connID string) statestore.Scope {
	return statestore.Scope{
		Tenant:  TenantOf(hdr.Get("Authorization")),
		Session: SessionOf(hdr, s.cfg.SessionHeaders, req.String("prompt_cache_key"), connID),
	}
}
