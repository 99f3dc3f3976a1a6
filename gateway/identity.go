package gateway

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"strconv"
	"strings"

	"chainmend/responses"
	"chainmend/statestore"
)

// DefaultSessionHeaders are the headers that name a client's session, in the order they are
// read: Codex 0.169 sends session-id, older builds session_id.
var DefaultSessionHeaders = []string{"session-id", "session_id"}

// DefaultTenantHeaders are the headers that select a credential or a billing scope (SPEC §7):
// OpenAI's bearer token, Azure's api-key, and the organization and project a key may act for.
// Every one that is present takes part in the tenant, so two requests share state only when
// they agree on all of them.
var DefaultTenantHeaders = []string{"Authorization", "api-key", "OpenAI-Organization", "OpenAI-Project"}

// tenantHexLen is the length of a tenant id: 128 bits of SHA-256 in hex, so that two
// credentials never share a tenant by accident.
const tenantHexLen = 32

// TenantOf returns the tenant id of a request: a short hex SHA-256 over every header of
// headers that the request carries, by name and value (a "Bearer " prefix and surrounding
// spaces ignored), or ok false when it carries none of them. The credentials themselves never
// reach a key, a log or a metric.
func TenantOf(h http.Header, headers []string) (tenant string, ok bool) {
	// Every turn computes it: the input is built on the stack and hashed at once.
	var buf [512]byte
	in := buf[:0]
	for _, name := range headers {
		v := strings.TrimSpace(headerValue(h, name))
		if len(v) > 7 && strings.EqualFold(v[:7], "bearer ") {
			v = strings.TrimSpace(v[7:])
		}
		if v == "" {
			continue
		}
		ok = true
		// Length-prefixed, so that no two header sets spell the same input:
		// len(name) ":" lower(name) len(value) ":" value.
		in = strconv.AppendInt(in, int64(len(name)), 10)
		in = append(in, ':')
		for i := 0; i < len(name); i++ {
			c := name[i]
			if 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
			in = append(in, c)
		}
		in = strconv.AppendInt(in, int64(len(v)), 10)
		in = append(in, ':')
		in = append(in, v...)
	}
	if !ok {
		return "", false
	}
	sum := sha256.Sum256(in)
	return hex.EncodeToString(sum[:tenantHexLen/2]), true
}

// headerValue is h.Get(name) without canonicalizing a name that is already canonical.
func headerValue(h http.Header, name string) string {
	if vs, ok := h[name]; ok {
		if len(vs) == 0 {
			return ""
		}
		return vs[0]
	}
	return h.Get(name)
}

// connectionTenant is the tenant of a request without credentials: its own connection, so it
// shares state with nobody, not even another anonymous client with the same session header.
func connectionTenant(connID string) string {
	sum := sha256.Sum256([]byte("connection\x00" + connID))
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

// tenantOf is the tenant of a connection's requests: by its credential headers, else the
// connection's own.
func (s *Server) tenantOf(hdr http.Header, connID string) string {
	if t, ok := TenantOf(hdr, s.cfg.TenantHeaders); ok {
		return t
	}
	return connectionTenant(connID)
}

// scopeOf names the state a request reads and writes: its tenant and its session, as the
// configuration says to tell them.
func (s *Server) scopeOf(hdr http.Header, req *responses.Request, connID string) statestore.Scope {
	return statestore.Scope{
		Tenant:  s.tenantOf(hdr, connID),
		Session: SessionOf(hdr, s.cfg.SessionHeaders, req.String("prompt_cache_key"), connID),
	}
}
