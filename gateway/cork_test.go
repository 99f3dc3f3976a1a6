package gateway

import (
	"io"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	acc := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		acc <- c
	}()
	client, err = net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	server = <-acc
	require.NotNil(t, server)
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

func TestCorkCoalesces(t *testing.T) {
	peer, nc := tcpPair(t)
	c := &corkConn{Conn: nc, timeout: time.Second}
	c.cork()
	for _, s := range []string{"one ", "two ", "three"} {
		n, err := c.Write([]byte(s))
		require.NoError(t, err)
		assert.Equal(t, len(s), n)
	}
	_ = peer.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	buf := make([]byte, 64)
	_, err := peer.Read(buf)
	require.Error(t, err, "nothing is sent while corked")
	require.NoError(t, c.uncork())
	_ = peer.SetReadDeadline(time.Now().Add(time.Second))
	got := make([]byte, len("one two three"))
	_, err = io.ReadFull(peer, got)
	require.NoError(t, err)
	assert.Equal(t, "one two three", string(got))

	// Uncorked, a write goes out at once.
	_, err = c.Write([]byte("four"))
	require.NoError(t, err)
	got = make([]byte, 4)
	_, err = io.ReadFull(peer, got)
	require.NoError(t, err)
	assert.Equal(t, "four", string(got))
}

func TestCorkLimitWritesThrough(t *testing.T) {
	peer, nc := tcpPair(t)
	c := &corkConn{Conn: nc, timeout: time.Second}
	c.cork()
	big := make([]byte, corkLimit)
	done := make(chan []byte)
	go func() {
		b, _ := io.ReadAll(io.LimitReader(peer, int64(corkLimit+10)))
		done <- b
	}()
	_, err := c.Write([]byte("0123456789"))
	require.NoError(t, err)
	_, err = c.Write(big) // over the limit: what is held and this go out
	require.NoError(t, err)
	select {
	case b := <-done:
		assert.Len(t, b, corkLimit+10)
		assert.Equal(t, "0123456789", string(b[:10]))
	case <-time.After(5 * time.Second):
		t.Fatal("a corked connection over its limit did not write")
	}
}

func TestCorkWriteTimeoutIsSticky(t *testing.T) {
	_, nc := tcpPair(t) // the peer never reads
	c := &corkConn{Conn: nc, timeout: 100 * time.Millisecond}
	chunk := make([]byte, 1<<20)
	var err error
	deadline := time.Now().Add(10 * time.Second)
	for err == nil && time.Now().Before(deadline) {
		_, err = c.Write(chunk)
	}
	require.Error(t, err, "a client that stops reading is cut off")
	_, err2 := c.Write([]byte("x"))
	assert.Error(t, err2, "no write after a failed one: the stream would have a gap")
}

func TestCorkAbortUnblocksWrite(t *testing.T) {
	_, nc := tcpPair(t) // the peer never reads
	c := &corkConn{Conn: nc, timeout: time.Minute}
	errc := make(chan error, 1)
	go func() {
		chunk := make([]byte, 1<<20)
		for i := 0; i < 1000; i++ {
			if _, err := c.Write(chunk); err != nil {
				errc <- err
				return
			}
		}
		errc <- nil
	}()
	time.Sleep(100 * time.Millisecond) // the writer is blocked on a full socket by now
	c.abort()
	select {
	case err := <-errc:
		assert.Error(t, err)
	case <-time.After(5 * time.Second):
		t.Fatal("abort did not unblock the write")
	}
	_, err := c.Write([]byte("x"))
	assert.Error(t, err)
}
