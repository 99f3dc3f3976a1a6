package gateway

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestFrameBlocks: frames read into shared blocks stay as they were after later reads, an
// append to one never reaches the next, and frames larger than a block arrive whole.
func TestFrameBlocks(t *testing.T) {
	sizes := []int{10, 300, 1023, 1024, 1025, frameBlockSize - 5, frameBlockSize, 3*frameBlockSize + 7, 1, 0, 20000, 20000, 5}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		for i, n := range sizes {
			if c.Write(r.Context(), websocket.MessageText, bytes.Repeat([]byte{byte('a' + i)}, n)) != nil {
				return
			}
		}
		_ = c.Close(websocket.StatusNormalClosure, "")
	}))
	defer srv.Close()
	c, _, err := websocket.Dial(context.Background(), "ws"+strings.TrimPrefix(srv.URL, "http"), nil)
	require.NoError(t, err)
	defer c.CloseNow()
	c.SetReadLimit(1 << 20)
	var blocks frameBlocks
	var got [][]byte
	for range sizes {
		f, err := blocks.next(context.Background(), c)
		require.NoError(t, err)
		assert.Equal(t, len(f), cap(f), "capacity clipped")
		got = append(got, f)
	}
	_ = append(got[0], "overwrite?"...)
	for i, n := range sizes {
		assert.Equal(t, bytes.Repeat([]byte{byte('a' + i)}, n), got[i], "frame %d (%d bytes)", i, n)
	}
	_, err = blocks.next(context.Background(), c)
	assert.Error(t, err, "the close ends the reads")
}
