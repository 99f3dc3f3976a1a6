package emulator

import (
	"context"
	"errors"
	"net/http"
	"sync"
)

// serveHTTP answers POST /v1/responses. Every request is its own connection
// record: there is no connection cache over HTTP, so store:false responses
// can never be chained here.
func (e *Emulator) serveHTTP(c *call) {
	w, r, body := c.w, c.r, c.body
	conn := e.newConn(e.nextConnSeq(), transportHTTP, r.Header)
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	stop := context.AfterFunc(e.ctx, cancel)
	defer stop()
	dropped := make(chan struct{})
	var once sync.Once
	drop := func() {
		once.Do(func() { close(dropped) })
		cancel()
	}
	conn.setDrop(func() {
		e.count.drops.Add(1)
		drop()
	})
	e.track(conn, drop)
	defer e.untrack(conn)
	reason := "request done"
	defer func() { e.endConn(conn, reason) }()

	e.count.framesIn.Add(1)
	in := conn.add(Received, "", "", body)
	p, perr := parseCreate(body)
	if p != nil {
		conn.setType(in, "response.create", "")
	}
	x := e.begin(conn, transportHTTP, body, p, perr, nil)
	abort := func() {
		select {
		case <-dropped:
			reason = "dropped"
			// Aborting the handler resets the connection mid-response, which
			// is what a network failure looks like to the client.
			panic(http.ErrAbortHandler)
		default:
		}
	}
	if x.fault.Stall {
		e.count.stalls.Add(1)
		e.finish(x, OutcomeStalled, nil, nil)
		<-ctx.Done()
		abort()
		return
	}
	if sleepCtx(ctx, x.fault.Delay) != nil {
		abort()
		return
	}
	if x.err != nil {
		e.count.errors.Add(1)
		e.finish(x, OutcomeError, nil, x.err)
		conn.add(Sent, "error", "", x.err.HTTPBody())
		writeAPIError(w, x.err)
		return
	}

	flusher, _ := w.(http.Flusher)
	started := false
	out := func(typ string, data []byte) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		if !p.stream {
			return nil
		}
		if !started {
			started = true
			h := w.Header()
			h.Set("Content-Type", "text/event-stream")
			h.Set("Cache-Control", "no-cache")
			w.WriteHeader(http.StatusOK)
		}
		buf := make([]byte, 0, len(typ)+len(data)+16)
		buf = append(buf, "event: "...)
		buf = append(buf, typ...)
		buf = append(buf, "\ndata: "...)
		buf = append(buf, data...)
		buf = append(buf, '\n', '\n')
		conn.add(Sent, typ, "", data)
		if _, err := w.Write(buf); err != nil {
			return err
		}
		if flusher != nil {
			flusher.Flush()
		}
		e.count.framesOut.Add(1)
		return nil
	}
	resp, apiErr, err := e.run(ctx, x, out, nil)
	if apiErr != nil {
		e.count.errors.Add(1)
		e.finish(x, OutcomeError, nil, apiErr)
		conn.add(Sent, "error", "", apiErr.HTTPBody())
		writeAPIError(w, apiErr)
		return
	}
	if err != nil {
		e.finish(x, OutcomeDropped, resp, nil)
		if errors.Is(err, errDropped) {
			e.count.drops.Add(1)
			reason = "dropped"
			panic(http.ErrAbortHandler)
		}
		abort()
		return
	}
	if !p.stream {
		body := x.object(resp, resp.status, resp.output, true)
		if resp.final != nil {
			body = resp.final
		}
		conn.add(Sent, "response", "", body)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
		e.count.framesOut.Add(1)
	}
}
