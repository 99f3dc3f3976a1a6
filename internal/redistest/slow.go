package redistest

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Slow is a TCP proxy in front of one server that makes it slow, not dead: every
// byte a client sends reaches the server a set latency later, in order, so that
// each command (alone or pipelined) is answered that much later and connections
// stay up. It stands for a Redis under load or across a congested link, which a
// client cannot tell from an outage by its deadlines alone. A Cluster or Sentinel
// deployment cannot sit behind it: their nodes hand out their own addresses.
type Slow struct {
	// Addr is host:port of the proxy.
	Addr string

	latency atomic.Int64 // nanoseconds
	ln      net.Listener
	target  string

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

// StartSlow starts a proxy to the server at target (host:port), without latency
// until SetLatency, and registers its shutdown with tb.Cleanup.
func StartSlow(tb testing.TB, target string) *Slow {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("redistest: slow proxy: %v", err)
	}
	p := &Slow{Addr: ln.Addr().String(), ln: ln, target: target, conns: make(map[net.Conn]struct{})}
	p.wg.Add(1)
	go p.serve()
	tb.Cleanup(p.close)
	return p
}

// URL returns a redis:// URL for the proxy.
func (p *Slow) URL() string { return "redis://" + p.Addr }

// SetLatency sets the delay added to every byte sent from now on; bytes already
// waiting keep theirs.
func (p *Slow) SetLatency(d time.Duration) { p.latency.Store(int64(d)) }

func (p *Slow) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = c.Close()
			continue
		}
		if !p.track(c, s) {
			return
		}
		p.wg.Add(2)
		go func() {
			defer p.wg.Done()
			p.delayed(s, c)
			p.untrack(c, s)
		}()
		go func() {
			defer p.wg.Done()
			_, _ = io.Copy(c, s)
			p.untrack(c, s)
		}()
	}
}

// track records a connection pair for close; false once the proxy is closing.
func (p *Slow) track(conns ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns == nil {
		for _, c := range conns {
			_ = c.Close()
		}
		return false
	}
	for _, c := range conns {
		p.conns[c] = struct{}{}
	}
	return true
}

// untrack closes a connection pair and forgets it.
func (p *Slow) untrack(conns ...net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range conns {
		_ = c.Close()
		if p.conns != nil {
			delete(p.conns, c)
		}
	}
}

// chunk is bytes read from the client, due at the server at due.
type chunk struct {
	b   []byte
	due time.Time
}

// delayed copies from the client to the server, each read chunk written once
// its latency has passed: reading goes on meanwhile, so the latency adds to
// every command without limiting how many are in flight.
func (p *Slow) delayed(dst, src net.Conn) {
	ch := make(chan chunk, 1024)
	go func() {
		defer close(ch)
		for {
			buf := make([]byte, 32<<10)
			n, err := src.Read(buf)
			if n > 0 {
				ch <- chunk{b: buf[:n], due: time.Now().Add(time.Duration(p.latency.Load()))}
			}
			if err != nil {
				return
			}
		}
	}()
	for c := range ch {
		if d := time.Until(c.due); d > 0 {
			time.Sleep(d)
		}
		if _, err := dst.Write(c.b); err != nil {
			_ = src.Close() // unblocks the reader, which closes ch
			for range ch {
			}
			return
		}
	}
}

func (p *Slow) close() {
	_ = p.ln.Close()
	p.mu.Lock()
	for c := range p.conns {
		_ = c.Close()
	}
	p.conns = nil
	p.mu.Unlock()
	p.wg.Wait()
}
