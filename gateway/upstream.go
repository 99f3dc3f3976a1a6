package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/coder/websocket"

	"chainmend/responses"
)

// upstreamReadLimit bounds one upstream event; a response.completed carries the whole
// response, encrypted reasoning included.
const upstreamReadLimit = 256 << 20

// upstreamConn is one upstream WebSocket connection, shared by the lanes of a client
// connection. A reader goroutine hands each frame to route (the session's demultiplexer, by
// stream_id), so that a lane's turn can wait for its frame, a timeout and the client at once,
// and the session notices a closed connection between turns.
type upstreamConn struct {
	conn  *websocket.Conn
	route func(*upstreamConn, []byte)
	done  chan struct{}
	quit  chan struct{}
	once  sync.Once
	born  time.Time

	mu  sync.Mutex
	err error
}

func dialUpstream(ctx context.Context, url string, hdr http.Header, client *http.Client, timeout time.Duration, route func(*upstreamConn, []byte)) (*upstreamConn, error) {
	dctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, resp, err := websocket.Dial(dctx, url, &websocket.DialOptions{
		HTTPClient:      client,
		HTTPHeader:      hdr,
		CompressionMode: websocket.CompressionDisabled,
	})
	if err != nil {
		if resp != nil && resp.StatusCode >= 400 {
			de := &dialError{status: resp.StatusCode, retryAfter: resp.Header.Get("Retry-After"), contentType: resp.Header.Get("Content-Type"), err: err}
			if resp.Body != nil {
				de.body, _ = io.ReadAll(io.LimitReader(resp.Body, 1024))
			}
			return nil, de
		}
		return nil, fmt.Errorf("dial upstream: %w", err)
	}
	c.SetReadLimit(upstreamReadLimit)
	u := &upstreamConn{conn: c, route: route, done: make(chan struct{}), quit: make(chan struct{}), born: time.Now()}
	go u.readLoop()
	return u, nil
}

// dialError is an upstream that refused the WebSocket handshake with an HTTP status (a rate
// limit, an overload, a bad credential): its status, Retry-After and body are the client's
// answer, never a retry.
type dialError struct {
	status      int
	retryAfter  string
	contentType string
	body        []byte
	err         error
}

func (e *dialError) Error() string {
	msg := fmt.Sprintf("the upstream refused the connection: %d %s", e.status, http.StatusText(e.status))
	if e.retryAfter != "" {
		msg += " (Retry-After: " + e.retryAfter + ")"
	}
	return msg
}

func (e *dialError) Unwrap() error { return e.err }

// writeTo answers a client's handshake with the upstream's refusal.
func (e *dialError) writeTo(w http.ResponseWriter) {
	if e.retryAfter != "" {
		w.Header().Set("Retry-After", e.retryAfter)
	}
	if len(e.body) > 0 {
		ct := e.contentType
		if ct == "" {
			ct = "application/json"
		}
		w.Header().Set("Content-Type", ct)
		w.WriteHeader(e.status)
		_, _ = w.Write(e.body)
		return
	}
	httpError(w, responses.ErrorBody{Status: e.status, Type: "server_error", Message: e.Error()})
}

func (u *upstreamConn) readLoop() {
	defer close(u.done)
	ctx := context.Background()
	var blocks frameBlocks
	for {
		data, err := blocks.next(ctx, u.conn)
		if err != nil {
			u.mu.Lock()
			u.err = err
			u.mu.Unlock()
			return
		}
		select {
		case <-u.quit:
			return
		default:
		}
		// route blocks while the frame's lane is full: a client that does not read slows
		// its own connection, nothing else.
		u.route(u, data)
	}
}

// alive reports whether the connection can take a turn: open, and young enough.
func (u *upstreamConn) alive(maxAge time.Duration) bool {
	select {
	case <-u.done:
		return false
	default:
	}
	return time.Since(u.born) < maxAge
}

func (u *upstreamConn) failure() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.err == nil {
		return errors.New("upstream connection closed")
	}
	return u.err
}

func (u *upstreamConn) send(ctx context.Context, frame []byte, timeout time.Duration) error {
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return u.conn.Write(wctx, websocket.MessageText, frame)
}

func (u *upstreamConn) close() {
	u.once.Do(func() { close(u.quit) })
	_ = u.conn.CloseNow()
}

// frameBlocks reads the upstream's frames into shared blocks instead of a new buffer per
// frame (websocket.Conn.Read grows one from 512 bytes for every message): a response's
// events, mostly a few hundred bytes each, cost an allocation per block, not one or more per
// event. A block is never written again once a frame in it was handed out, so frames stay
// valid for as long as anyone holds them (the driver keeps output items until the commit);
// a block is freed with the last frame that points into it.
type frameBlocks struct {
	buf []byte
}

// frameBlockSize is the size of a fresh block; a frame larger than what is left moves to a
// block of its own size (doubling as it grows).
const frameBlockSize = 32 << 10

// next reads the next message. The frame it returns has its capacity clipped, so that an
// append to it can never write into the frame after it.
func (b *frameBlocks) next(ctx context.Context, c *websocket.Conn) ([]byte, error) {
	_, r, err := c.Reader(ctx)
	if err != nil {
		return nil, err
	}
	if cap(b.buf)-len(b.buf) < 1024 {
		b.buf = make([]byte, 0, frameBlockSize)
	}
	start := len(b.buf)
	for {
		if len(b.buf) == cap(b.buf) {
			n := len(b.buf) - start
			grown := make([]byte, n, max(frameBlockSize, 2*n))
			copy(grown, b.buf[start:])
			b.buf, start = grown, 0
		}
		m, err := r.Read(b.buf[len(b.buf):cap(b.buf)])
		b.buf = b.buf[:len(b.buf)+m]
		if err == io.EOF {
			return b.buf[start:len(b.buf):len(b.buf)], nil
		}
		if err != nil {
			return nil, err
		}
	}
}
