package statestore

import (
	"strings"

	"github.com/redis/go-redis/v9"
)

// replayState is the local copy of a session's transcript. It only grows at
// the end and is trimmed by re-slicing at the front, so a Transcript handed
// out earlier keeps seeing exactly its own items without a copy.
type replayState struct {
	items   []ReplayItem
	last    string
	trimmed bool
	bytes   int
	// broken marks a transcript with a gap (appends were lost while Redis
	// was unreachable and no local copy existed); it answers Miss until the
	// next reset, so a partial history is never replayed.
	broken bool
}

// itemOverhead approximates the per-item memory besides Raw.
const itemOverhead = 64

func (r *replayState) transcript() Transcript {
	return Transcript{
		// The capacity is clipped so a caller's append cannot write into
		// the store's backing array.
		Items:          r.items[:len(r.items):len(r.items)],
		LastResponseID: r.last,
		Trimmed:        r.trimmed,
		Bytes:          r.bytes,
	}
}

func (r *replayState) size() int {
	n := entryOverhead + len(r.last)
	for i := range r.items {
		n += itemOverhead + len(r.items[i].Raw) + len(r.items[i].Type) + len(r.items[i].CallID)
	}
	return n
}

// appendItems adds copies of items (one allocation for all their bytes, so
// the caller's read buffer is never retained), then trims to the cap. It
// returns the number of items trimmed.
func (r *replayState) appendItems(items []ReplayItem, capBytes int) int {
	total := 0
	for i := range items {
		total += len(items[i].Raw)
	}
	arena := make([]byte, 0, total)
	for _, it := range items {
		start := len(arena)
		arena = append(arena, it.Raw...)
		r.items = append(r.items, ReplayItem{
			Raw:    arena[start:len(arena):len(arena)],
			Type:   strings.Clone(noNUL(it.Type)),
			CallID: strings.Clone(noNUL(it.CallID)),
		})
		r.bytes += len(it.Raw)
	}
	return r.trim(capBytes)
}

// keep truncates the transcript to its first n items (n ≤ len(items)) and
// recomputes its bytes; trimmed stays. The capacity is clipped so that the next
// append moves the kept items to a new array instead of writing over the
// dropped ones, which a Transcript handed out earlier may still show. (The
// dropped items' bytes stay reachable while a kept item of the same append
// holds their arena: at most the tail of the one append the cut falls into.)
func (r *replayState) keep(n int) {
	r.items = r.items[:n:n]
	r.bytes = 0
	for i := range r.items {
		r.bytes += len(r.items[i].Raw)
	}
}

func (r *replayState) trim(capBytes int) int {
	cut, cutBytes := trimPoint(r.items, r.bytes, capBytes)
	if cut == 0 {
		return 0
	}
	rest := r.items[cut:]
	if len(rest) < cut {
		// Re-home the survivors once the dead prefix dominates, so the
		// trimmed items' memory can be collected.
		rest = append([]ReplayItem(nil), rest...)
	}
	r.items = rest
	r.bytes -= cutBytes
	r.trimmed = true
	return cut
}

// trimPoint returns how many leading items to cut from a transcript of total
// bytes so it fits capBytes, and their bytes. It cuts only in whole units: a
// prefix may end only where every call in it has its output in it and its
// last item is not a reasoning item (which must stay with the item it
// produced). Among those cuts it prefers the first that brings the rest
// under three quarters of the cap (so trimming does not recur every turn)
// unless that would empty the transcript, else the first under the cap, else
// the largest one. replayScript mirrors
// this logic exactly; the two must agree.
func trimPoint(items []ReplayItem, total, capBytes int) (cut, cutBytes int) {
	if total <= capBytes {
		return 0, 0
	}
	low := capBytes - capBytes/4
	open := make(map[string]int)
	openN, acc := 0, 0
	firstCap, firstCapBytes := 0, 0
	for i := range items {
		it := &items[i]
		acc += len(it.Raw)
		class := classOf(it.Type)
		switch class {
		case classCall:
			if open[it.CallID] == 0 {
				openN++
			}
			open[it.CallID]++
		case classOutput:
			if c := open[it.CallID]; c > 0 {
				if c == 1 {
					openN--
					delete(open, it.CallID)
				} else {
					open[it.CallID] = c - 1
				}
			}
		}
		if openN != 0 || class == classReasoning {
			continue
		}
		rest := total - acc
		if rest <= low {
			if i+1 < len(items) || firstCap == 0 {
				return i + 1, acc
			}
			break // emptying would lose more than the first cut under the cap
		}
		if firstCap == 0 && rest <= capBytes {
			firstCap, firstCapBytes = i+1, acc
		}
		cut, cutBytes = i+1, acc
	}
	if firstCap > 0 {
		return firstCap, firstCapBytes
	}
	return cut, cutBytes
}

// Replay write modes of replayScript.
const (
	replayAppend = "a" // append the items
	replayReset  = "r" // replace the transcript with the items
	replayBreak  = "b" // mark the transcript broken (history has a gap)
	// replayKeep, followed by a count N > 0 ("k12"), keeps the first N items of
	// the stored transcript and appends the items (Batch.ReplayKeep). When Redis
	// holds fewer than N items (or none), it marks the transcript broken as "b"
	// does: the kept part is gone, and what is left would be a history with a
	// gap. A broken transcript stays broken, as under an append. "k0" is "r".
	replayKeep = "k"

	// The write-back modes (writeback.go) do the same as reset and break,
	// unless Redis holds a transcript written later than the local copy
	// (meta e, the expiry, greater than ARGV 6): then they change nothing
	// and the script answers {0, 0, 0, 0, 0, 0, 1}.
	replayResetIfOlder        = "R"
	replayResetTrimmedIfOlder = "T" // as R, for a transcript already trimmed
	replayBreakIfOlder        = "B"
)

// replayScript applies one turn's replay write atomically on the server:
// append (or reset, or keep a prefix and append), trim in whole units with the
// same rule as trimPoint, set
// the meta hash (b = bytes, t = trimmed, l = last response id, x = broken,
// e = expiry in unix ms, k = token of the last applied write) and refresh
// both TTLs. The token makes
// a retried write idempotent. It returns {items, bytes, trimmed, broken,
// duplicate, items cut}.
//
// Its first write (the token) asks for memory: under Redis OOM it is refused
// before anything changed, where a first DEL would have gone through and the
// writes after it too (a script is never stopped once it has written), leaving
// a transcript written by a commit Redis otherwise refused.
//
// A keep ("k" N) drops the list's elements from N on (LTRIM) and recomputes
// the meta's bytes on the server from the elements it dropped or, when fewer,
// from those it kept (b always equals their sum), so that no kept byte travels;
// then it appends as "a" does, cap trim included. Its first write is the token
// too, so under OOM it changes nothing.
//
// KEYS: list, meta. ARGV: token, mode, last response id, cap bytes, ttl ms,
// expiry unix ms, elements….
var replayScript = redis.NewScript(`
local list, meta = KEYS[1], KEYS[2]
local tok, mode, last = ARGV[1], ARGV[2], ARGV[3]
local cap, ttl, exp = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
if tok ~= '' and redis.call('HGET', meta, 'k') == tok then
  local m = redis.call('HMGET', meta, 'b', 't', 'x')
  return {redis.call('LLEN', list), tonumber(m[1]) or 0, tonumber(m[2]) or 0, tonumber(m[3]) or 0, 1, 0}
end
local wasTrimmed = false
if mode == 'R' or mode == 'T' or mode == 'B' then
  local cur = tonumber(redis.call('HGET', meta, 'e'))
  if cur and cur > tonumber(exp) then
    return {0, 0, 0, 0, 0, 0, 1}
  end
  wasTrimmed = mode == 'T'
  if mode == 'B' then mode = 'b' else mode = 'r' end
end
local keep = 0
if string.sub(mode, 1, 1) == 'k' then
  keep = tonumber(string.sub(mode, 2)) or 0
  if keep > 0 then mode = 'k' else mode = 'r' end
end
redis.call('HSET', meta, 'k', tok)
local function split(e)
  local a = string.find(e, '\0', 2, true)
  local b = string.find(e, '\0', a + 1, true)
  return #e - b, string.sub(e, a + 1, b - 1)
end
if mode == 'k' then
  local m = redis.call('HMGET', meta, 'b', 'x')
  local n = redis.call('LLEN', list)
  if m[2] == '1' then
    mode = 'a'
  elseif not m[1] or n < keep then
    mode = 'b'
  else
    mode = 'a'
    if n > keep then
      local bytes, from, to, sign = tonumber(m[1]), keep, n - 1, -1
      if n - keep > keep then bytes, from, to, sign = 0, 0, keep - 1, 1 end
      for i = from, to, 256 do
        for _, e in ipairs(redis.call('LRANGE', list, i, math.min(i + 255, to))) do
          bytes = bytes + sign * split(e)
        end
      end
      redis.call('LTRIM', list, 0, keep - 1)
      redis.call('HSET', meta, 'b', bytes)
    end
  end
end
if mode == 'r' or mode == 'b' then
  redis.call('DEL', list, meta)
end
if mode == 'b' then
  redis.call('HSET', meta, 'x', 1, 'k', tok, 'e', exp)
  redis.call('PEXPIRE', meta, ttl)
  return {0, 0, 0, 1, 0, 0}
end
local m = redis.call('HMGET', meta, 'b', 't', 'x')
if m[3] == '1' then
  redis.call('HSET', meta, 'k', tok, 'e', exp)
  redis.call('PEXPIRE', meta, ttl)
  return {0, 0, 0, 1, 0, 0}
end
local bytes, trimmed = tonumber(m[1]) or 0, tonumber(m[2]) or 0
if wasTrimmed then trimmed = 1 end
local n, cutN = #ARGV, 0
for i = 7, n, 1000 do
  redis.call('RPUSH', list, unpack(ARGV, i, math.min(i + 999, n)))
end
for i = 7, n do
  local len = split(ARGV[i])
  bytes = bytes + len
end
if bytes > cap then
  local low = cap - math.floor(cap / 4)
  local open, openN, acc = {}, 0, 0
  local cut, cutB, firstCap, firstCapB, lastCut, lastCutB = 0, 0, 0, 0, 0, 0
  local idx, total, done = 0, redis.call('LLEN', list), false
  while not done and idx < total do
    local chunk = redis.call('LRANGE', list, idx, idx + 255)
    if #chunk == 0 then break end
    for _, e in ipairs(chunk) do
      idx = idx + 1
      local len, cid = split(e)
      acc = acc + len
      local cls = string.sub(e, 1, 1)
      if cls == 'c' then
        local c = open[cid] or 0
        if c == 0 then openN = openN + 1 end
        open[cid] = c + 1
      elseif cls == 'o' then
        local c = open[cid] or 0
        if c == 1 then
          openN = openN - 1
          open[cid] = nil
        elseif c > 1 then
          open[cid] = c - 1
        end
      end
      if openN == 0 and cls ~= 'r' then
        local rest = bytes - acc
        if rest <= low then
          if idx < total or firstCap == 0 then cut, cutB = idx, acc end
          done = true
          break
        end
        if firstCap == 0 and rest <= cap then firstCap, firstCapB = idx, acc end
        lastCut, lastCutB = idx, acc
      end
    end
  end
  if cut == 0 then
    if firstCap > 0 then cut, cutB = firstCap, firstCapB else cut, cutB = lastCut, lastCutB end
  end
  if cut > 0 then
    cutN = cut
    redis.call('LTRIM', list, cut, -1)
    bytes = bytes - cutB
    trimmed = 1
  end
end
redis.call('HSET', meta, 'b', bytes, 't', trimmed, 'l', last, 'k', tok, 'e', exp)
redis.call('PEXPIRE', meta, ttl)
redis.call('PEXPIRE', list, ttl)
return {redis.call('LLEN', list), bytes, trimmed, 0, 0, cutN}
`)
