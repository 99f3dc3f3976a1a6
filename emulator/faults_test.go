package emulator

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func waitStats(t *testing.T, e *Emulator, cond func(Stats) bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	require.NoError(t, e.Wait(ctx, cond), "stats %+v", e.Stats())
}

func TestFaults(t *testing.T) {
	t.Run("close after N responses", func(t *testing.T) {
		e := StartTest(t, WithFaults(Faults{CloseAfterResponses: 2}))
		c := dial(t, e, nil)
		c.create(req(map[string]any{"generate": false})).responseID(t) // warm-ups do not count
		c.create(req(nil, user("1"))).responseID(t)
		c.create(req(nil, user("2"))).responseID(t)
		_, err := c.next(testTimeout)
		assert.Equal(t, websocket.StatusNormalClosure, websocket.CloseStatus(err), "%v", err)
		waitStats(t, e, func(s Stats) bool { return s.OpenConnections == 0 })
		assert.Equal(t, int64(1), e.Stats().FaultCloses)
	})
	t.Run("close right after completed, abruptly", func(t *testing.T) {
		e := StartTest(t, WithFaults(Faults{CloseAfterCompleted: true, CloseMode: CloseAbrupt}))
		c := dial(t, e, nil)
		warm := c.create(req(map[string]any{"generate": false}))
		c.create(req(map[string]any{"previous_response_id": warm.responseID(t)}, user("1"))).responseID(t)
		_, err := c.next(testTimeout)
		require.Error(t, err)
		assert.Equal(t, websocket.StatusCode(-1), websocket.CloseStatus(err), "no close frame: %v", err)
		conn := e.Conn(1)
		require.NotNil(t, conn)
		<-conn.Done()
	})
	t.Run("close going away after one response", func(t *testing.T) {
		e := StartTest(t)
		e.SetCreateFault(1, CreateFault{CloseAfter: true})
		e.UpdateFaults(func(f *Faults) { f.CloseMode = CloseGoingAway })
		c := dial(t, e, nil)
		c.create(req(nil, user("1"))).responseID(t)
		_, err := c.next(testTimeout)
		assert.Equal(t, websocket.StatusGoingAway, websocket.CloseStatus(err))
	})
	t.Run("fail the Nth create", func(t *testing.T) {
		e := StartTest(t)
		injected := &APIError{Status: 500, Type: TypeServerError, Code: CodeServerError, Message: "boom"}
		e.FailCreate(2, injected)
		c := dial(t, e, nil)
		r1 := c.create(req(nil, user("1"))).responseID(t)
		res := c.create(req(map[string]any{"previous_response_id": r1}, user("2")))
		require.NotNil(t, res.err)
		assert.Equal(t, 500, res.err.Status)
		assert.Equal(t, "boom", res.err.Error.Message)
		assert.Equal(t, CodeServerError, *res.err.Error.Code)
		// The failed continuation evicted r1, and the connection stays open.
		res = c.create(req(map[string]any{"previous_response_id": r1}, user("3")))
		assert.Equal(t, "Previous response with id '"+r1+"' not found.", res.errMessage(t))
		cr, ok := e.CreateBySeq(2)
		require.True(t, ok)
		assert.True(t, cr.Injected)
		assert.Equal(t, OutcomeError, cr.Outcome)
		next := e.FailNextCreate(ErrPreviousResponseNotFound("resp_x"))
		assert.Equal(t, 4, next)
		assert.Equal(t, CodePreviousResponseNotFound, *c.create(req(nil, user("4"))).err.Error.Code)
	})
	t.Run("stall never answers", func(t *testing.T) {
		e := New(WithFaults(Faults{All: CreateFault{Stall: true}}))
		require.NoError(t, e.Start())
		c := dial(t, e, nil)
		c.send(req(nil, user("1")))
		_, err := c.next(150 * time.Millisecond)
		assert.ErrorIs(t, err, context.DeadlineExceeded)
		assert.Equal(t, int64(1), e.Stats().Stalls)
		closed := make(chan struct{})
		go func() { e.Close(); close(closed) }()
		select {
		case <-closed:
		case <-time.After(testTimeout):
			t.Fatal("Close did not end a stalled connection")
		}
	})
	t.Run("stall over HTTP ends when the client gives up", func(t *testing.T) {
		e := StartTest(t, WithFaults(Faults{All: CreateFault{Stall: true}}))
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		r, err := http.NewRequestWithContext(ctx, http.MethodPost, e.HTTPURL(), nil)
		require.NoError(t, err)
		_, err = http.DefaultClient.Do(r)
		assert.ErrorIs(t, err, context.DeadlineExceeded)
		waitStats(t, e, func(s Stats) bool { return s.OpenConnections == 0 })
	})
	t.Run("delay the first event", func(t *testing.T) {
		e := StartTest(t, WithFaults(Faults{All: CreateFault{Delay: 80 * time.Millisecond}}))
		c := dial(t, e, nil)
		start := time.Now()
		c.create(req(nil, user("1"))).responseID(t)
		assert.GreaterOrEqual(t, time.Since(start), 80*time.Millisecond)
	})
	t.Run("drop mid-stream", func(t *testing.T) {
		e := StartTest(t, WithFaults(Faults{Creates: map[int]CreateFault{1: {DropAfterEvents: 3}}}))
		c := dial(t, e, nil)
		c.send(req(nil, user("1")))
		var got []string
		for {
			ev, err := c.next(testTimeout)
			if err != nil {
				assert.Equal(t, websocket.StatusCode(-1), websocket.CloseStatus(err))
				break
			}
			got = append(got, ev.Type)
		}
		assert.Equal(t, []string{"response.created", "response.in_progress", "response.output_item.added"}, got)
		waitStats(t, e, func(s Stats) bool { return s.OpenConnections == 0 })
		cr, _ := e.CreateBySeq(1)
		assert.Equal(t, OutcomeDropped, cr.Outcome)
		assert.Equal(t, int64(1), e.Stats().Drops)
	})
	t.Run("drop mid-stream over HTTP", func(t *testing.T) {
		e := StartTest(t, WithFaults(Faults{All: CreateFault{DropAfterEvents: 2}}))
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		body := []byte(`{"model":"m","stream":true,"store":false,"input":"hi"}`)
		r, err := http.NewRequestWithContext(ctx, http.MethodPost, e.HTTPURL(), bytes.NewReader(body))
		require.NoError(t, err)
		resp, err := http.DefaultClient.Do(r)
		require.NoError(t, err)
		defer resp.Body.Close()
		_, err = io.ReadAll(resp.Body)
		assert.Error(t, err, "the body must end in a transport error, not a clean EOF")
	})
	t.Run("reset connections", func(t *testing.T) {
		e := StartTest(t)
		c1, c2 := dial(t, e, nil), dial(t, e, nil)
		c1.create(req(nil, user("1"))).responseID(t)
		c2.create(req(nil, user("1"))).responseID(t)
		e.ResetConnections()
		for _, c := range []*wsClient{c1, c2} {
			_, err := c.next(testTimeout)
			assert.True(t, isClosed(err), "%v", err)
		}
	})
	t.Run("drop one connection", func(t *testing.T) {
		e := StartTest(t)
		c1, c2 := dial(t, e, nil), dial(t, e, nil)
		c1.create(req(nil, user("1"))).responseID(t)
		c2.create(req(nil, user("1"))).responseID(t)
		e.Conn(1).Drop()
		_, err := c1.next(testTimeout)
		assert.True(t, isClosed(err), "%v", err)
		c2.create(req(nil, user("2"))).responseID(t)
		assert.Equal(t, int64(1), e.Stats().Drops)
	})
	t.Run("event interval", func(t *testing.T) {
		e := StartTest(t, WithFaults(Faults{All: CreateFault{EventInterval: 5 * time.Millisecond}}))
		start := time.Now()
		res := dial(t, e, nil).create(req(nil, user("1")))
		res.responseID(t)
		assert.GreaterOrEqual(t, time.Since(start), time.Duration(len(res.events)-1)*5*time.Millisecond)
	})
	t.Run("clear faults", func(t *testing.T) {
		e := StartTest(t, WithFaults(Faults{All: CreateFault{Error: ErrServer()}}))
		c := dial(t, e, nil)
		require.NotNil(t, c.create(req(nil, user("1"))).err)
		e.ClearFaults()
		c.create(req(nil, user("2"))).responseID(t)
	})
	t.Run("scripted failure status", func(t *testing.T) {
		e := StartTest(t, WithScript(Sequence(Turn{Output: []Output{Say("x")}, Status: StatusFailed})))
		res := dial(t, e, nil).create(req(nil, user("1")))
		assert.Equal(t, "response.failed", res.terminal.Type)
		assert.Equal(t, "failed", res.terminal.Response.Status)
	})
	t.Run("panicking script answers server_error", func(t *testing.T) {
		e := StartTest(t, WithScript(ScriptFunc(func(*Request) Turn { panic("script bug") })))
		res := dial(t, e, nil).create(req(nil, user("1")))
		require.NotNil(t, res.err)
		assert.Equal(t, 500, res.err.Status)
	})
}

func TestConnectionLimit(t *testing.T) {
	e := StartTest(t, WithConnectionLimit(100*time.Millisecond))
	c := dial(t, e, nil)
	c.create(req(nil, user("1"))).responseID(t)
	ev, err := c.next(testTimeout)
	require.NoError(t, err)
	assert.Equal(t, "error", ev.Type)
	assert.Equal(t, 400, ev.Status)
	assert.Equal(t, CodeConnectionLimitReached, *ev.Error.Code)
	assert.Equal(t, "Responses websocket connection limit reached (60 minutes). Create a new websocket connection to continue.", ev.Error.Message)
	_, err = c.next(testTimeout)
	assert.Equal(t, websocket.StatusNormalClosure, websocket.CloseStatus(err))
}

// TestOneResponseInFlight sends two creates back to back; the second must not
// start before the first has ended.
func TestOneResponseInFlight(t *testing.T) {
	e := StartTest(t, WithScript(Reply("x")))
	e.SetCreateFault(1, CreateFault{Delay: 50 * time.Millisecond, EventInterval: time.Millisecond})
	c := dial(t, e, nil)
	c.send(req(nil, user("1")))
	c.send(req(nil, user("2")))
	var marks []string
	for completed := 0; completed < 2; {
		ev, err := c.next(testTimeout)
		require.NoError(t, err)
		switch ev.Type {
		case "response.created", "response.completed":
			marks = append(marks, ev.Type+" "+ev.Response.ID)
			if ev.Type == "response.completed" {
				completed++
			}
		}
	}
	assert.Equal(t, []string{
		"response.created resp_emu0001", "response.completed resp_emu0001",
		"response.created resp_emu0002", "response.completed resp_emu0002",
	}, marks)
}
