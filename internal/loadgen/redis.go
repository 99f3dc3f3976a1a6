package loadgen

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// redisProc is a plain redis-server child on a free loopback port, no persistence.
type redisProc struct {
	cmd  *exec.Cmd
	addr string
	cli  *redis.Client
	done chan struct{}
}

func startRedis(bin string) (*redisProc, error) {
	if bin == "" {
		bin = "redis-server"
	}
	path, err := exec.LookPath(bin)
	if err != nil {
		return nil, fmt.Errorf("redis-server not found (make deps-redis installs it): %w", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	cmd := exec.Command(path, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "",
		"--appendonly", "no", "--daemonize", "no", "--protected-mode", "no", "--loglevel", "warning")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	r := &redisProc{cmd: cmd, addr: "127.0.0.1:" + strconv.Itoa(port), done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(r.done) }()
	r.cli = redis.NewClient(&redis.Options{Addr: r.addr, DisableIdentity: true})
	for i := 0; i < 200; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		err = r.cli.Ping(ctx).Err()
		cancel()
		if err == nil {
			return r, nil
		}
		time.Sleep(25 * time.Millisecond)
	}
	r.stop()
	return nil, fmt.Errorf("redis-server did not answer: %w", err)
}

func (r *redisProc) url() string { return "redis://" + r.addr + "/0" }

func (r *redisProc) stop() {
	_ = r.cli.Close()
	_ = r.cmd.Process.Kill()
	<-r.done
}

// commandStats returns INFO commandstats as command → calls.
func (r *redisProc) commandStats() map[string]int64 {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	s, err := r.cli.Info(ctx, "commandstats").Result()
	out := map[string]int64{}
	if err != nil {
		return out
	}
	for _, line := range strings.Split(s, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || !strings.HasPrefix(name, "cmdstat_") {
			continue
		}
		for _, kv := range strings.Split(rest, ",") {
			if v, ok := strings.CutPrefix(kv, "calls="); ok {
				n, _ := strconv.ParseInt(v, 10, 64)
				out[strings.TrimPrefix(name, "cmdstat_")] = n
			}
		}
	}
	return out
}

// redisDelta is what the gateways asked Redis during a phase: commands from INFO
// commandstats (the load tool's own INFO calls excluded; commands a script runs count too),
// round trips from a go-redis hook in each gateway (one per command sent alone, one per
// pipeline).
type redisDelta struct {
	Commands  map[string]int64 `json:"commands"`
	Singles   int64            `json:"round_trips_single"`
	Pipelines int64            `json:"round_trips_pipelined"`
	// ReadRoundTrips are the reads: every round trip but the commits (which are pipelines
	// with exactly one PUBLISH, the invalidation): Singles + Pipelines - WriteRoundTrips.
	ReadRoundTrips  int64 `json:"read_round_trips"`
	WriteRoundTrips int64 `json:"write_round_trips"`
}

func diffCommandStats(before, after map[string]int64, singles, pipelines int64) redisDelta {
	d := redisDelta{Commands: map[string]int64{}, Singles: singles, Pipelines: pipelines}
	for k, v := range after {
		if n := v - before[k]; n > 0 && k != "info" && k != "ping" {
			d.Commands[k] = n
		}
	}
	d.WriteRoundTrips = d.Commands["publish"]
	d.ReadRoundTrips = max(0, singles+pipelines-d.WriteRoundTrips)
	return d
}
