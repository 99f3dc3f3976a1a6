package statestore

import (
	"encoding/binary"
	"errors"
	"math"
	"strings"

	"github.com/redis/go-redis/v9"

	"chainmend/responses"
)

// lkey identifies an entry of the local tier. It is a struct of the request's
// own strings rather than the Redis key so that a local hit builds no string
// and allocates nothing.
type lkey struct {
	kind   Kind
	tenant string
	id     string // response id for KindPending and KindConversation, session for the others
}

// Redis keys. The part in braces is the Cluster hash tag: all keys of one
// session (anchor, replay list, replay meta) share a slot, so a turn's session
// writes and the replay script stay on one node; a response's keys (its pending
// calls and its conversation) share a tag of their own. Every suffix ends
// differently, so no id can make two keys of different kinds or sessions collide.
const (
	keyPrefix        = "cm:{t:"
	suffixPending    = "}:pending"
	suffixConv       = "}:conv"
	suffixAnchor     = "}:anchor"
	suffixReplay     = "}:replay"
	suffixReplayMeta = "}:replaymeta"
)

func pendingKey(tenant, responseID string) string {
	return keyPrefix + tenant + ":r:" + responseID + suffixPending
}

// convKey is next to the response's pending key (same hash tag), so a commit's
// two writes about one response go to one Cluster node.
func convKey(tenant, responseID string) string {
	return keyPrefix + tenant + ":r:" + responseID + suffixConv
}

func sessionKey(tenant, session, suffix string) string {
	return keyPrefix + tenant + ":s:" + session + suffix
}

// redisKey returns the main Redis key of a local entry.
func (k lkey) redisKey() string {
	switch k.kind {
	case KindPending:
		return pendingKey(k.tenant, k.id)
	case KindAnchor:
		return sessionKey(k.tenant, k.id, suffixAnchor)
	case KindConversation:
		return convKey(k.tenant, k.id)
	default:
		return sessionKey(k.tenant, k.id, suffixReplay)
	}
}

// Values are compact binary: a version byte, the value's expiry (unix
// milliseconds, uvarint), then the payload. The expiry lets another instance
// keep a backfilled copy no longer than Redis keeps the key, without asking
// for the TTL in a second command.
//
// Pending payload: per call a kind code and the length-prefixed call id. An
// empty list is a valid payload, which keeps "known: nothing pending"
// distinct from a missing key. Anchor payload: the response id. Conversation
// payload: the length-prefixed session, then the lane.
const valueVersion = '1'

var errCorrupt = errors.New("statestore: corrupt value")

func kindCode(kind string) byte {
	switch kind {
	case responses.TypeFunctionCall:
		return 'f'
	case responses.TypeCustomToolCall:
		return 'c'
	case responses.TypeLocalShellCall:
		return 'l'
	default:
		return 'x'
	}
}

func kindOfCode(c byte) string {
	switch c {
	case 'f':
		return responses.TypeFunctionCall
	case 'c':
		return responses.TypeCustomToolCall
	case 'l':
		return responses.TypeLocalShellCall
	default:
		return ""
	}
}

// Anchor values of version '2' also carry the pending calls of the anchor
// response, written when one commit put both (issue 14): a session that moves to
// another instance then reads its anchor and the calls it left pending in one
// round trip, without knowing the response id beforehand. Payload: the
// length-prefixed response id, the copy's expiry (unix ms, uvarint), then the
// calls as in a pending value. The copy never outlives the pending key nor the
// response's conversation index, through which a commit that deletes or
// overwrites those calls finds the anchor and strips the copy (stripScript).
const anchorCarryVersion = '2'

// A tombstone (version '0', then the expiry) is what the write-back leaves of a
// value it deletes (writeback.go): a delete that keeps its version, so that an
// older value another instance writes back later does not come back over it.
// Readers take it for a missing key.
const tombstoneVersion = '0'

func encodeTombstone(expiresMs int64) []byte {
	return appendHeaderV(make([]byte, 0, 1+binary.MaxVarintLen64), tombstoneVersion, expiresMs)
}

// absent reports whether a Redis answer means no value: a missing key, or a
// tombstone.
func absent(val string, err error) bool {
	return errors.Is(err, redis.Nil) || err == nil && len(val) > 0 && val[0] == tombstoneVersion
}

func appendHeader(b []byte, expiresMs int64) []byte {
	return appendHeaderV(b, valueVersion, expiresMs)
}

func appendHeaderV(b []byte, version byte, expiresMs int64) []byte {
	b = append(b, version)
	return binary.AppendUvarint(b, uint64(max(expiresMs, 0)))
}

func readHeader(s string) (expiresMs int64, rest string, err error) {
	if len(s) == 0 || s[0] != valueVersion {
		return 0, s, errCorrupt
	}
	return readExpiry(s)
}

// readExpiry reads the expiry after a header's version byte.
func readExpiry(s string) (expiresMs int64, rest string, err error) {
	v, w := binary.Uvarint([]byte(s[1:min(len(s), 1+binary.MaxVarintLen64)]))
	if w <= 0 || v > math.MaxInt64 {
		return 0, s, errCorrupt
	}
	return int64(v), s[1+w:], nil
}

func encodePending(calls []Call, expiresMs int64) []byte {
	return appendCalls(appendHeader(make([]byte, 0, 1+binary.MaxVarintLen64+callsLen(calls)), expiresMs), calls)
}

// callsLen bounds the encoded size of calls.
func callsLen(calls []Call) int {
	n := 0
	for _, c := range calls {
		n += 1 + binary.MaxVarintLen32 + len(c.ID)
		if kindCode(c.Kind) == 'x' {
			n += binary.MaxVarintLen32 + len(c.Kind)
		}
	}
	return n
}

func appendCalls(b []byte, calls []Call) []byte {
	for _, c := range calls {
		code := kindCode(c.Kind)
		b = append(b, code)
		if code == 'x' {
			b = binary.AppendUvarint(b, uint64(len(c.Kind)))
			b = append(b, c.Kind...)
		}
		b = binary.AppendUvarint(b, uint64(len(c.ID)))
		b = append(b, c.ID...)
	}
	return b
}

func decodePending(s string) (calls []Call, expiresMs int64, err error) {
	expiresMs, s, err = readHeader(s)
	if err != nil {
		return nil, 0, err
	}
	calls, err = decodeCalls(s)
	return calls, expiresMs, err
}

func decodeCalls(s string) (calls []Call, err error) {
	calls = make([]Call, 0, 4)
	for len(s) > 0 {
		code := s[0]
		s = s[1:]
		var kind string
		if code == 'x' {
			var ok bool
			if kind, s, ok = readString(s); !ok {
				return nil, errCorrupt
			}
		} else if kind = kindOfCode(code); kind == "" {
			return nil, errCorrupt
		}
		id, rest, ok := readString(s)
		if !ok {
			return nil, errCorrupt
		}
		s = rest
		calls = append(calls, Call{ID: id, Kind: kind})
	}
	return calls, nil
}

func encodeAnchor(id string, expiresMs int64) []byte {
	return append(appendHeader(make([]byte, 0, 1+binary.MaxVarintLen64+len(id)), expiresMs), id...)
}

// encodeAnchorCarrying encodes an anchor that carries its response's pending
// calls until callsExpMs (see anchorCarryVersion).
func encodeAnchorCarrying(id string, expiresMs int64, calls []Call, callsExpMs int64) []byte {
	b := make([]byte, 0, 1+3*binary.MaxVarintLen64+len(id)+callsLen(calls))
	b = appendHeaderV(b, anchorCarryVersion, expiresMs)
	b = binary.AppendUvarint(b, uint64(len(id)))
	b = append(b, id...)
	b = binary.AppendUvarint(b, uint64(max(callsExpMs, 0)))
	return appendCalls(b, calls)
}

// anchorValue is a decoded anchor: the response id, and the pending calls it
// carries when carries is set.
type anchorValue struct {
	id         string
	expiresMs  int64
	carries    bool
	calls      []Call
	callsExpMs int64
}

func decodeAnchor(s string) (anchorValue, error) {
	if len(s) > 0 && s[0] == anchorCarryVersion {
		exp, rest, err := readExpiry(s)
		if err != nil {
			return anchorValue{}, err
		}
		id, rest, ok := readString(rest)
		if !ok {
			return anchorValue{}, errCorrupt
		}
		cexp, w := binary.Uvarint([]byte(rest[:min(len(rest), binary.MaxVarintLen64)]))
		if w <= 0 || cexp > math.MaxInt64 {
			return anchorValue{}, errCorrupt
		}
		calls, err := decodeCalls(rest[w:])
		if err != nil {
			return anchorValue{}, err
		}
		return anchorValue{id: id, expiresMs: exp, carries: true, calls: calls, callsExpMs: int64(cexp)}, nil
	}
	exp, id, err := readHeader(s)
	return anchorValue{id: id, expiresMs: exp}, err
}

func encodeConv(session, lane string, expiresMs int64) []byte {
	b := appendHeader(make([]byte, 0, 1+2*binary.MaxVarintLen64+len(session)+len(lane)), expiresMs)
	b = binary.AppendUvarint(b, uint64(len(session)))
	b = append(b, session...)
	return append(b, lane...)
}

func decodeConv(s string) (session, lane string, expiresMs int64, err error) {
	expiresMs, s, err = readHeader(s)
	if err != nil {
		return "", "", 0, err
	}
	session, lane, ok := readString(s)
	if !ok || session == "" {
		return "", "", 0, errCorrupt
	}
	return session, lane, expiresMs, nil
}

// readString reads a uvarint length and that many bytes.
func readString(s string) (v, rest string, ok bool) {
	n, w := binary.Uvarint([]byte(s[:min(len(s), binary.MaxVarintLen64)]))
	if w <= 0 || n > uint64(len(s)-w) {
		return "", s, false
	}
	return s[w : w+int(n)], s[w+int(n):], true
}

// Replay list elements: a class byte the trim script understands, the item
// type, NUL, the call id, NUL, then the raw JSON untouched. The class lets the
// Lua script find unit boundaries without parsing JSON.
const (
	classCall      = 'c'
	classOutput    = 'o'
	classReasoning = 'r'
	classOther     = 'i'
)

// classOf maps an item type to its class through the wire model's one taxonomy
// (responses.IsCall, responses.IsOutput), so the store never disagrees with the
// rules about what a call or an output is.
func classOf(itemType string) byte {
	switch {
	case responses.IsCall(itemType):
		return classCall
	case responses.IsOutput(itemType):
		return classOutput
	case itemType == responses.TypeReasoning:
		return classReasoning
	default:
		return classOther
	}
}

// noNUL keeps the element header parseable; a NUL in a type or call id can
// only come from a hostile client and is replaced.
func noNUL(s string) string {
	if strings.IndexByte(s, 0) < 0 {
		return s
	}
	return strings.ReplaceAll(s, "\x00", "\uFFFD")
}

func encodeReplayItem(it ReplayItem) string {
	t, id := noNUL(it.Type), noNUL(it.CallID)
	var b strings.Builder
	b.Grow(3 + len(t) + len(id) + len(it.Raw))
	b.WriteByte(classOf(it.Type))
	b.WriteString(t)
	b.WriteByte(0)
	b.WriteString(id)
	b.WriteByte(0)
	b.Write(it.Raw)
	return b.String()
}

func decodeReplayItem(e string) (ReplayItem, error) {
	if len(e) < 3 {
		return ReplayItem{}, errCorrupt
	}
	e = e[1:]
	i := strings.IndexByte(e, 0)
	if i < 0 {
		return ReplayItem{}, errCorrupt
	}
	t := e[:i]
	e = e[i+1:]
	j := strings.IndexByte(e, 0)
	if j < 0 {
		return ReplayItem{}, errCorrupt
	}
	return ReplayItem{Type: t, CallID: e[:j], Raw: []byte(e[j+1:])}, nil
}

// Invalidation messages: the sender's instance id, a newline, then per entry
// a kind byte and the length-prefixed tenant and id. Length prefixes keep any
// session or response id unambiguous.
func encodeInvalidation(instance string, keys []lkey) string {
	n := len(instance) + 1
	for _, k := range keys {
		n += 1 + 2*binary.MaxVarintLen32 + len(k.tenant) + len(k.id)
	}
	b := make([]byte, 0, n)
	b = append(b, instance...)
	b = append(b, '\n')
	for _, k := range keys {
		b = append(b, '0'+byte(k.kind))
		b = binary.AppendUvarint(b, uint64(len(k.tenant)))
		b = append(b, k.tenant...)
		b = binary.AppendUvarint(b, uint64(len(k.id)))
		b = append(b, k.id...)
	}
	return string(b)
}

func decodeInvalidation(msg string) (instance string, keys []lkey, err error) {
	i := strings.IndexByte(msg, '\n')
	if i < 0 {
		return "", nil, errCorrupt
	}
	instance, s := msg[:i], msg[i+1:]
	for len(s) > 0 {
		kind := Kind(s[0] - '0')
		if kind >= numKinds {
			return instance, keys, errCorrupt
		}
		tenant, rest, ok := readString(s[1:])
		if !ok {
			return instance, keys, errCorrupt
		}
		id, rest, ok := readString(rest)
		if !ok {
			return instance, keys, errCorrupt
		}
		s = rest
		keys = append(keys, lkey{kind: kind, tenant: tenant, id: id})
	}
	return instance, keys, nil
}
