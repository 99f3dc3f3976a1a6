package gateway

import (
	"bufio"
	"errors"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// corkLimit bounds what a corked connection holds before it writes anyway.
const corkLimit = 64 << 10

// corkConn is the client side of a WebSocket session as the WebSocket library writes to
// it. The library flushes every message with its own socket write; when the relay already
// holds the next upstream events (a burst of deltas, or the tail of a short response), it
// corks the connection, writes them all, and uncorks: one write(2) instead of one per event
// (issue 7: that syscall was a third of the gateway's CPU per turn, and it capped the relay
// at about 40,000 events per second). Nothing is held when no further event is waiting, so
// no event is delayed for one that has not arrived.
//
// Every socket write carries the write deadline (Config.WriteTimeout), which cuts off a
// client that stops reading; that replaces a context with a timeout per frame. After the
// first failed write the connection refuses every further one, so a timed-out write can
// never leave a gap in the stream.
type corkConn struct {
	net.Conn
	timeout time.Duration

	aborted atomic.Bool

	mu     sync.Mutex
	corked bool
	buf    []byte
	err    error
}

var errAborted = errors.New("client connection aborted")

func (c *corkConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return 0, c.err
	}
	if c.corked && len(c.buf)+len(p) <= corkLimit {
		c.buf = append(c.buf, p...)
		return len(p), nil
	}
	if err := c.flushLocked(); err != nil {
		return 0, err
	}
	return c.writeLocked(p)
}

func (c *corkConn) writeLocked(p []byte) (int, error) {
	if c.timeout > 0 {
		_ = c.Conn.SetWriteDeadline(time.Now().Add(c.timeout))
	}
	// Checked after the deadline is set: an abort that set its own deadline before ours
	// is seen here.
	if c.aborted.Load() {
		c.err = errAborted
		return 0, c.err
	}
	n, err := c.Conn.Write(p)
	if err != nil {
		c.err = err
	}
	return n, err
}

func (c *corkConn) flushLocked() error {
	if len(c.buf) == 0 {
		return c.err
	}
	_, err := c.writeLocked(c.buf)
	if cap(c.buf) > 2*corkLimit {
		c.buf = nil
	} else {
		c.buf = c.buf[:0]
	}
	return err
}

// cork holds writes until uncork (or until corkLimit bytes are held).
func (c *corkConn) cork() {
	c.mu.Lock()
	c.corked = true
	c.mu.Unlock()
}

// uncork writes what is held, in one socket write.
func (c *corkConn) uncork() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.corked = false
	return c.flushLocked()
}

// abort fails the write in flight and every later one: the session is over. It does not
// wait for the write in flight (which holds mu): the past deadline unblocks it.
func (c *corkConn) abort() {
	c.aborted.Store(true)
	_ = c.Conn.SetWriteDeadline(time.Unix(1, 0))
}

// corkHijacker hands the WebSocket library a corkConn, and a buffered writer over it, when
// it hijacks the client's HTTP connection.
type corkHijacker struct {
	http.ResponseWriter
	timeout time.Duration
	conn    *corkConn
}

func (h *corkHijacker) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	nc, brw, err := http.NewResponseController(h.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	// net/http has written the 101 response; whatever its writer still holds goes first.
	if err := brw.Writer.Flush(); err != nil {
		_ = nc.Close()
		return nil, nil, err
	}
	h.conn = &corkConn{Conn: nc, timeout: h.timeout}
	return h.conn, bufio.NewReadWriter(brw.Reader, bufio.NewWriterSize(h.conn, 4096)), nil
}

func (h *corkHijacker) Unwrap() http.ResponseWriter { return h.ResponseWriter }
