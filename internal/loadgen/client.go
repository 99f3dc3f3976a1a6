package loadgen

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/coder/websocket"

	"chainmend/responses"
)

// sample is one timed turn.
type sample struct {
	class string
	ttfe  time.Duration // send → first event
	total time.Duration // send → terminal event
	// events counts the frames of the turn (terminal included).
	events int
}

// target is where a client connects: the emulator directly or a gateway.
type target struct {
	name    string // "direct" or "gateway"
	wsURL   string
	httpURL string
	http    *http.Client
}

func clientHeaders(sid, tenant string) http.Header {
	h := http.Header{}
	h.Set("Authorization", "Bearer sk-loadgen-"+tenant)
	h.Set("OpenAI-Beta", "responses_websockets=2026-02-06")
	h.Set("Originator", "codex_exec")
	h.Set("User-Agent", "codex_exec/0.169.0 (loadgen)")
	h.Set("Session-Id", sid)
	h.Set("Thread-Id", sid)
	h.Set("X-Client-Request-Id", sid)
	return h
}

// wsSession is one client connection running one conversation.
type wsSession struct {
	tg   *target
	hdr  http.Header
	conn *websocket.Conn
	p    *payloads
	step int    // turn number within the conversation, 0-based
	big  bool   // mixBig: every other create is a 175 KB full create
	prev string // last response id
	call string // pending call id to answer, "" for none
	buf  []byte
}

func dialWS(ctx context.Context, tg *target, hdr http.Header, p *payloads) (*wsSession, error) {
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(dctx, tg.wsURL, &websocket.DialOptions{
		HTTPHeader: hdr, HTTPClient: tg.http, CompressionMode: websocket.CompressionDisabled,
	})
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", tg.name, err)
	}
	c.SetReadLimit(64 << 20)
	return &wsSession{tg: tg, hdr: hdr, conn: c, p: p}, nil
}

func (s *wsSession) close() { _ = s.conn.Close(websocket.StatusNormalClosure, "") }

// next returns the next create of the conversation and its class.
func (s *wsSession) next() ([]byte, string) {
	switch {
	case s.big && s.step%2 == 0:
		return s.p.big, classWSFull175K
	case !s.big && s.step%cycleLen == 0:
		return s.p.small, classWSFull3K
	default:
		s.buf = s.p.chained(s.buf[:0], "", s.prev, s.call, s.step)
		return s.buf, classWSChained3K
	}
}

// turn sends the next create and reads the response to its terminal event.
func (s *wsSession) turn(ctx context.Context) (sample, error) {
	payload, class := s.next()
	smp, ev, err := s.exchange(ctx, payload)
	smp.class = class
	if err != nil {
		return smp, err
	}
	s.step++
	s.prev, s.call = ev.ResponseID, ""
	for i := range ev.Output {
		if ev.Output[i].IsCall() {
			s.call = ev.Output[i].CallID
		}
	}
	return smp, nil
}

// exchange sends payload and reads to the terminal event, which it parses.
func (s *wsSession) exchange(ctx context.Context, payload []byte) (sample, responses.Event, error) {
	var smp sample
	tctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	t0 := time.Now()
	if err := s.conn.Write(tctx, websocket.MessageText, payload); err != nil {
		return smp, responses.Event{}, fmt.Errorf("%s write: %w", s.tg.name, err)
	}
	for {
		_, data, err := s.conn.Read(tctx)
		if err != nil {
			return smp, responses.Event{}, fmt.Errorf("%s read: %w", s.tg.name, err)
		}
		now := time.Since(t0)
		if smp.events == 0 {
			smp.ttfe = now
		}
		smp.events++
		kind := responses.EventKind(data)
		if kind == responses.EventError {
			return smp, responses.Event{}, fmt.Errorf("%s: error frame: %.300s", s.tg.name, data)
		}
		if responses.IsTerminal(kind) {
			smp.total = now
			ev, err := responses.ParseEvent(data)
			if err != nil {
				return smp, ev, fmt.Errorf("%s: terminal event: %w", s.tg.name, err)
			}
			if ev.Type != responses.EventCompleted {
				return smp, ev, fmt.Errorf("%s: terminal %s", s.tg.name, ev.Type)
			}
			return smp, ev, nil
		}
	}
}

// warmup sends a generate:false create (what Codex sends first), so that the gateway holds
// an upstream connection for the session.
func (s *wsSession) warmup(ctx context.Context) error {
	b := []byte(`{"type":"response.create","model":"gpt-5.5","store":false,"generate":false,"input":[]}`)
	_, ev, err := s.exchange(ctx, b)
	if err == nil {
		s.prev = ev.ResponseID
	}
	return err
}

// httpSession runs full creates over POST + SSE.
type httpSession struct {
	tg   *target
	hdr  http.Header
	p    *payloads
	step int
	big  bool // every create is 175 KB, else 3 KB
}

func (s *httpSession) turn(ctx context.Context) (sample, error) {
	body, class := s.p.httpSmall, classHTTP3K
	if s.big {
		body, class = s.p.httpBig, classHTTP175K
	}
	smp := sample{class: class}
	tctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(tctx, http.MethodPost, s.tg.httpURL, bytes.NewReader(body))
	if err != nil {
		return smp, err
	}
	req.Header = s.hdr.Clone()
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "text/event-stream")
	t0 := time.Now()
	resp, err := s.tg.http.Do(req)
	if err != nil {
		return smp, fmt.Errorf("%s post: %w", s.tg.name, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 600))
		return smp, fmt.Errorf("%s: status %d: %s", s.tg.name, resp.StatusCode, b)
	}
	rd := responses.NewSSEReader(resp.Body)
	for {
		ev, err := rd.Next()
		if err != nil {
			return smp, fmt.Errorf("%s: stream ended early: %w", s.tg.name, err)
		}
		now := time.Since(t0)
		if smp.events == 0 {
			smp.ttfe = now
		}
		smp.events++
		kind := ev.Name
		if kind == "" {
			kind = responses.EventKind(ev.Data)
		}
		if kind == responses.EventError {
			return smp, fmt.Errorf("%s: error event: %.300s", s.tg.name, ev.Data)
		}
		if responses.IsTerminal(kind) {
			smp.total = now
			if kind != responses.EventCompleted {
				return smp, fmt.Errorf("%s: terminal %s", s.tg.name, kind)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			s.step++
			return smp, nil
		}
	}
}

var errStopped = errors.New("stopped")
