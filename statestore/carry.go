package statestore

import (
	"context"
	"errors"

	"github.com/redis/go-redis/v9"
)

// Carried calls. A commit that puts a response's pending calls and makes that
// response its session's anchor writes the calls into the anchor value too
// (anchorCarryVersion), so that a full create that moves to another instance
// reads its anchor, the calls that anchor left pending and its transcript in
// one round trip: the anchor's response id is not known before the read, so
// its pending key could not be in the same pipeline.
//
// The copy must never outlive a change of the pending key. Whoever deletes or
// overwrites a response's pending calls finds the conversation whose anchor may
// carry them through the response's conversation index (the local tier's copy,
// or a GET in the commit's own pipeline when this instance does not hold it)
// and strips the copy with stripScript, in the same pipeline when the owner is
// known beforehand, in a second one only when it was not. The copy expires with
// the pending key or the index, whichever ends first, so an index that has
// expired means no copy is left to strip. Other instances drop what they kept
// of the copy on the pending key's announcement, as for any other write.

// stripScript removes the pending calls an anchor carries when they are those of
// the response ARGV[1], keeping the anchor, its expiry header and its TTL. An
// anchor that moved on to another response, or carries nothing, is left alone.
// It returns 1 when it stripped.
//
// KEYS: anchor key. ARGV: response id.
var stripScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if not v or string.byte(v, 1) ~= 50 then
  return 0
end
local function uvarint(i)
  local n, mul = 0, 1
  while i <= #v do
    local b = string.byte(v, i)
    if b < 128 then
      return n + b * mul, i + 1
    end
    n = n + (b - 128) * mul
    mul = mul * 128
    i = i + 1
  end
  return nil, i
end
local exp, i = uvarint(2)
if not exp then
  return 0
end
local n, j = uvarint(i)
if not n or string.sub(v, j, j + n - 1) ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], '1' .. string.sub(v, 2, i - 1) .. ARGV[1], 'KEEPTTL')
return 1
`)

// carriedCheck is a response whose pending calls a write deletes or overwrites,
// and the conversation whose anchor may carry a copy of them.
type carriedCheck struct {
	tenant string
	id     string
	// owner is the conversation, when known before the write.
	owner Scope
	known bool
	// get asks Redis for the conversation in the write's pipeline when it was
	// not known.
	get *redis.StringCmd
}

// carriedChecksLocked lists the responses of b whose pending calls b deletes or
// overwrites and whose conversation's anchor b does not rewrite itself, with
// their conversation as the local tier knows it; called with t.mu held, before
// b's own writes. A response whose conversation is unknown here is asked of
// Redis in the commit's pipeline when b deletes its calls; b's own new response
// needs no question: nothing carried its calls before b.
func (s *Tiered) carriedChecksLocked(b *Batch, tenant string, now int64) []carriedCheck {
	var out []carriedCheck
	check := func(id string, ask bool) {
		e, ok := s.local.peekLocked(lkey{kind: KindConversation, tenant: tenant, id: id}, now)
		switch {
		case ok && e.neg:
			// No index, so no copy: both end together.
		case ok:
			owner := Scope{Tenant: tenant, Session: e.session, Lane: e.lane}
			if owner.Session == b.Scope.Session && owner.Lane == b.Scope.Lane && b.Anchor != nil {
				return // b writes that anchor anew
			}
			out = append(out, carriedCheck{tenant: tenant, id: id, owner: owner, known: true})
		case ask:
			out = append(out, carriedCheck{tenant: tenant, id: id})
		}
	}
	for _, id := range b.DeletePending {
		check(id, true)
	}
	if p := b.PutPending; p != nil {
		check(p.ResponseID, false)
	}
	return out
}

// needsStrip reports whether the conversation Redis named for c, asked in the
// pipeline of a write made for scope with or without an anchor, may still
// carry c's calls.
func (c *carriedCheck) needsStrip(scope Scope, anchorWritten bool) (Scope, bool) {
	if c.get == nil || c.get.Err() != nil || absent(c.get.Val(), nil) {
		return Scope{}, false // no index, so no copy
	}
	session, lane, _, err := decodeConv(c.get.Val())
	if err != nil {
		return Scope{}, false
	}
	if session == scope.Session && lane == scope.Lane && anchorWritten {
		return Scope{}, false
	}
	return Scope{Tenant: c.tenant, Session: session, Lane: lane}, true
}

// stripLate strips the copies the conversations Redis named in a write's
// pipeline may carry: the second round trip a commit pays only when it deleted
// the calls of a response whose conversation this instance did not know.
func (s *Tiered) stripLate(ctx context.Context, checks []carriedCheck, scope Scope, anchorWritten bool) error {
	var owners []carriedCheck
	for i := range checks {
		if owner, ok := checks[i].needsStrip(scope, anchorWritten); ok {
			c := checks[i]
			c.owner, c.known = owner, true
			owners = append(owners, c)
		}
	}
	if len(owners) == 0 {
		return nil
	}
	return s.do(ctx, opCommit, func(ctx context.Context) error {
		cmds := make([]*scripted, len(owners))
		for i, c := range owners {
			cmds[i] = c.strip()
		}
		return s.runScripts(ctx, cmds)
	})
}

// strip returns the script command that strips c's copy from its owner's anchor.
func (c *carriedCheck) strip() *scripted {
	return &scripted{sc: stripScript, keys: []string{sessionKey(c.tenant, c.owner.id(), suffixAnchor)}, args: []any{c.id}}
}

// delScript deletes KEYS[1] unless Redis is out of memory. Its first write asks
// for memory without changing anything (SETRANGE of nothing), which Redis
// refuses under OOM while the script has changed nothing yet; a plain DEL would
// go through and leave a Cluster commit half written (see writeRedis). It
// returns what DEL returns.
//
// KEYS: a string key (pending, anchor).
var delScript = redis.NewScript(`
redis.call('SETRANGE', KEYS[1], 0, '')
return redis.call('DEL', KEYS[1])
`)

// scripted is a script command of a pipeline: sent by SHA, and once more with
// its source when the server lacks it (after a restart or SCRIPT FLUSH).
type scripted struct {
	sc   *redis.Script
	keys []string
	args []any
	cmd  *redis.Cmd
}

// queue adds the command to p, by SHA or, with source, as EVAL.
func (c *scripted) queue(ctx context.Context, p redis.Pipeliner, source bool) {
	if source {
		c.cmd = c.sc.Eval(ctx, p, c.keys, c.args...)
	} else {
		c.cmd = c.sc.EvalSha(ctx, p, c.keys, c.args...)
	}
}

// noScript reports whether the server lacked the command's script.
func (c *scripted) noScript() bool {
	return c.cmd != nil && redis.HasErrorPrefix(c.cmd.Err(), "NOSCRIPT")
}

// runScripts runs script commands in one pipeline, and those the server lacked
// once more with their source. It returns the first error.
func (s *Tiered) runScripts(ctx context.Context, cmds []*scripted) error {
	for _, source := range []bool{false, true} {
		var todo []*scripted
		for _, c := range cmds {
			if !source || c.noScript() {
				todo = append(todo, c)
			}
		}
		if len(todo) == 0 {
			break
		}
		_, _ = s.client().Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, c := range todo {
				c.queue(ctx, p, source)
			}
			return nil
		})
	}
	for _, c := range cmds {
		if err := c.cmd.Err(); err != nil && !errors.Is(err, redis.Nil) {
			return err
		}
	}
	return nil
}
