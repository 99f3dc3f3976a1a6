package gateway

import (
	"context"
	"time"

	"chainmend/engine"
	"chainmend/responses"
)

// The WebSocket side of the turn driver: a session is the transport of its turns.
var _ transport = (*session)(nil)

// lane returns the turn state of a lane, creating it on first use.
func (ss *session) lane(name string) *laneState {
	l := ss.lanes[name]
	if l == nil {
		l = &laneState{name: name}
		ss.lanes[name] = l
	}
	return l
}

func (ss *session) kind() string { return engine.TransportWebSocket }

// cached is what the open upstream connection holds for the lane; a connection that is
// closed or due for rotation holds nothing, since the next send replaces it.
func (ss *session) cached(l *laneState) string {
	if ss.up == nil || !ss.up.alive(ss.srv.cfg.UpstreamMaxAge) {
		return ""
	}
	return l.cachedBy(ss.up)
}

func (ss *session) hold(l *laneState, responseID string) {
	if ss.up == nil {
		return
	}
	l.cached, l.cachedOn = responseID, ss.up
}

// upstream returns an open upstream connection, replacing a closed or old one.
func (ss *session) upstream() (*upstreamConn, error) {
	cfg := &ss.srv.cfg
	if ss.up != nil && ss.up.alive(cfg.UpstreamMaxAge) {
		return ss.up, nil
	}
	if ss.up != nil {
		if time.Since(ss.up.born) >= cfg.UpstreamMaxAge {
			ss.srv.metrics.upstream.WithLabelValues("rotated").Inc()
		} else {
			ss.srv.metrics.upstream.WithLabelValues("lost").Inc()
		}
		ss.up.close()
		ss.up = nil
	}
	up, err := dialUpstream(ss.ctx, ss.srv.wsURL, ss.hdr, ss.srv.client, cfg.DialTimeout)
	if err != nil {
		ss.srv.metrics.upstream.WithLabelValues("dial_failed").Inc()
		return nil, err
	}
	ss.srv.metrics.upstream.WithLabelValues("dialed").Inc()
	ss.up = up
	return up, nil
}

func (ss *session) dropUpstream() {
	if ss.up != nil {
		ss.up.close()
		ss.up = nil
	}
}

func (ss *session) send(ctx context.Context, payload []byte, fresh bool) (exchange, error) {
	if fresh {
		ss.dropUpstream()
	}
	up, err := ss.upstream()
	if err != nil {
		return nil, err
	}
	if err := up.send(ctx, payload, ss.srv.cfg.WriteTimeout); err != nil {
		return nil, err
	}
	ss.ex.up = up
	return &ss.ex, nil
}

// relay writes one event. Events already queued behind it go out with it in one socket write
// (corkConn); a failed write fails every later one, so the terminal write reports the client
// gone too.
func (ss *session) relay(ev *upstreamEvent, more bool) error {
	if more {
		ss.out.cork()
	}
	if err := ss.write(ev.raw); err != nil {
		return err
	}
	if !more {
		return ss.flush()
	}
	return nil
}

func (ss *session) flush() error {
	if err := ss.out.uncork(); err != nil {
		ss.cancel() // as in write: a client that cannot take frames ends its session
		return errClientGone
	}
	return nil
}

func (ss *session) writeError(e responses.ErrorBody, raw *upstreamEvent) error {
	if raw != nil {
		return ss.write(withStatus(raw.data, e.Status))
	}
	return ss.write(responses.ErrorFrame(e))
}

// wsExchange is a turn in flight on the upstream WebSocket. Its event is reused from one
// call of next to the next: the driver is done with an event before it asks for another.
type wsExchange struct {
	up    *upstreamConn
	timer *time.Timer
	ev    upstreamEvent
}

func (x *wsExchange) next(ctx context.Context, wait time.Duration) (*upstreamEvent, error) {
	if x.timer == nil {
		x.timer = time.NewTimer(wait)
	} else {
		x.timer.Reset(wait)
	}
	defer x.timer.Stop()
	var f []byte
	select {
	case <-ctx.Done():
		return nil, errClientGone
	case <-x.timer.C:
		return nil, errUpstreamTimeout
	case f = <-x.up.frames:
	case <-x.up.done:
		// Frames read before the close are still queued: relay them first.
		select {
		case f = <-x.up.frames:
		default:
			return nil, x.up.failure()
		}
	}
	x.ev = upstreamEvent{data: f, raw: f, kind: responses.EventKind(f)}
	return &x.ev, nil
}

func (x *wsExchange) more() bool { return len(x.up.frames) > 0 }

func (x *wsExchange) close() {}
