package gateway

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/coder/websocket"
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
		if resp != nil {
			return nil, fmt.Errorf("dial upstream: status %d: %w", resp.StatusCode, err)
		}
		return nil, fmt.Errorf("dial upstream: %w", err)
	}
	c.SetReadLimit(upstreamReadLimit)
	u := &upstreamConn{conn: c, route: route, done: make(chan struct{}), quit: make(chan struct{}), born: time.Now()}
	go u.readLoop()
	return u, nil
}

func (u *upstreamConn) readLoop() {
	defer close(u.done)
	ctx := context.Background()
	for {
		_, data, err := u.conn.Read(ctx)
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
