package redistest

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func TestServerKillRestart(t *testing.T) {
	s := Start(t)
	c := s.Client()
	ctx := context.Background()
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatalf("set: %v", err)
	}
	s.Kill()
	if err := ping(s.Addr); err == nil {
		t.Fatal("server still answers after Kill")
	}
	s.Restart()
	// Nothing is persisted: the restarted server is empty.
	if n, err := c.Exists(ctx, "k").Result(); err != nil || n != 0 {
		t.Fatalf("after restart: exists=%d err=%v, want 0, nil", n, err)
	}
}

func TestCluster(t *testing.T) {
	c := StartCluster(t, 3)
	cc := c.Client()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// Keys spread over every master must be writable through the client.
	for _, k := range []string{"a", "b", "c", "d", "e", "f", "{x}1", "{x}2"} {
		if err := cc.Set(ctx, k, "v", 0).Err(); err != nil {
			t.Fatalf("set %s: %v", k, err)
		}
	}
	if got := c.URL(); got == "" {
		t.Fatal("empty URL")
	}
	c.Kill()
	c.Restart()
	if err := cc.Set(ctx, "a", "v2", 0).Err(); err != nil {
		t.Fatalf("set after restart: %v", err)
	}
}

func TestSentinel(t *testing.T) {
	d := StartSentinel(t, 1, 2)
	c := d.Client()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := c.Set(ctx, "k", "v1", 0).Err(); err != nil {
		t.Fatalf("set through the Sentinels: %v", err)
	}
	old := d.MasterAddr()
	if old != d.Servers[0].Addr {
		t.Fatalf("master %s, want the first server %s", old, d.Servers[0].Addr)
	}
	if got := d.Failover(); got == old || got != d.Servers[1].Addr {
		t.Fatalf("after failover the master is %s, want the replica %s", got, d.Servers[1].Addr)
	}
	// The client follows the switch: a write lands on the new master.
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := c.Set(ctx, "k", "v2", 0).Err()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("set after failover: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	nc := d.Servers[1].Client()
	if v, err := nc.Get(ctx, "k").Result(); err != nil || v != "v2" {
		t.Fatalf("new master holds %q, %v; want v2", v, err)
	}
}

func TestSlow(t *testing.T) {
	s := Start(t)
	p := StartSlow(t, s.Addr)
	c := redis.NewClient(&redis.Options{Addr: p.Addr, ContextTimeoutEnabled: true})
	t.Cleanup(func() { _ = c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatalf("set through the proxy: %v", err)
	}
	p.SetLatency(200 * time.Millisecond)
	start := time.Now()
	cmds, err := c.Pipelined(ctx, func(pl redis.Pipeliner) error {
		for i := 0; i < 10; i++ {
			pl.Get(ctx, "k")
		}
		return nil
	})
	took := time.Since(start)
	if err != nil || len(cmds) != 10 || cmds[9].(*redis.StringCmd).Val() != "v" {
		t.Fatalf("pipeline through the slow proxy: %v", err)
	}
	if took < 200*time.Millisecond || took > 2*time.Second {
		t.Fatalf("a pipeline took %s, want the latency once (200 ms)", took)
	}
	// A deadline shorter than the latency fails, and the connection survives it
	// on the server's side: the next command answers once the latency is gone.
	sctx, scancel := context.WithTimeout(ctx, 50*time.Millisecond)
	err = c.Get(sctx, "k").Err()
	scancel()
	if err == nil {
		t.Fatal("a 50 ms deadline met a 200 ms latency")
	}
	p.SetLatency(0)
	time.Sleep(250 * time.Millisecond)
	if v, err := c.Get(ctx, "k").Result(); err != nil || v != "v" {
		t.Fatalf("after the latency: %q, %v", v, err)
	}
}
