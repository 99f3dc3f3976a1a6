// Package redistest starts real redis-server processes for integration tests:
// a standalone server or a small Redis Cluster, each on free loopback ports in
// a temporary directory, stopped automatically when the test ends.
//
// The servers keep nothing on disk (--save "" --appendonly no), so a Kill
// followed by Restart simulates an outage that loses all data, the way a
// crashed cache node comes back. A cluster keeps its nodes.conf, so a
// restarted cluster node rejoins with its slots.
//
// When redis-server is not installed the helpers skip the test with a loud
// message, except under CI=true, where a missing server fails the run: CI must
// never pass by silently skipping the Redis suite.
package redistest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// startTimeout bounds how long a server or cluster may take to become ready.
const startTimeout = 15 * time.Second

// Binaries returns the paths of redis-server and redis-cli, or skips (fails
// under CI=true) the test when either is missing.
func Binaries(tb testing.TB) (server, cli string) {
	tb.Helper()
	server, errS := exec.LookPath("redis-server")
	cli, errC := exec.LookPath("redis-cli")
	if errS == nil && errC == nil {
		return server, cli
	}
	msg := "redis-server/redis-cli not found in PATH: Redis integration tests cannot run " +
		"(install the Debian package redis-server, or run `make deps-redis`)"
	if os.Getenv("CI") == "true" {
		tb.Fatal(msg)
	}
	tb.Skip("!!!!!!!! SKIPPING: " + msg + " !!!!!!!!")
	return "", ""
}

// Server is one redis-server process on a loopback port.
type Server struct {
	// Addr is host:port of the server.
	Addr string
	// Port is the TCP port of the server.
	Port int

	tb      testing.TB
	bin     string
	dir     string
	cluster bool

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// Start starts a standalone redis-server and registers its shutdown with
// tb.Cleanup. It fails (or skips, see Binaries) the test when that is not
// possible.
func Start(tb testing.TB) *Server {
	tb.Helper()
	bin, _ := Binaries(tb)
	s := &Server{tb: tb, bin: bin, dir: tb.TempDir()}
	s.startOnFreePort(false)
	tb.Cleanup(s.stop)
	return s
}

// URL returns a redis:// URL for the server.
func (s *Server) URL() string { return "redis://" + s.Addr }

// Client returns a go-redis client for the server, closed on cleanup.
func (s *Server) Client() *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: s.Addr})
	s.tb.Cleanup(func() { _ = c.Close() })
	return c
}

// Kill stops the server abruptly (SIGKILL) and waits until it is gone.
func (s *Server) Kill() {
	s.tb.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.killLocked()
}

// Restart starts the server again on the same port and in the same directory
// and waits until it answers. It kills a running server first.
func (s *Server) Restart() {
	s.tb.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.killLocked()
	// The port was ours a moment ago; retry briefly in case the kernel has not
	// released it yet.
	var err error
	for i := 0; i < 50; i++ {
		if err = s.launchLocked(); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.tb.Fatalf("redistest: restart %s: %v", s.Addr, err)
}

func (s *Server) killLocked() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.done
	s.cmd = nil
}

func (s *Server) stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.killLocked()
}

// startOnFreePort picks a free port (and, for a cluster node, a free bus port
// at port+10000) and starts the server, retrying when another process grabs
// the port between the probe and the bind.
func (s *Server) startOnFreePort(cluster bool) {
	s.tb.Helper()
	s.cluster = cluster
	var lastErr error
	for attempt := 0; attempt < 20; attempt++ {
		port, err := freePort(cluster)
		if err != nil {
			lastErr = err
			continue
		}
		s.Port = port
		s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		s.mu.Lock()
		err = s.launchLocked()
		s.mu.Unlock()
		if err == nil {
			return
		}
		lastErr = err
	}
	s.tb.Fatalf("redistest: cannot start redis-server: %v", lastErr)
}

// launchLocked starts the process and waits for PING to answer.
func (s *Server) launchLocked() error {
	args := []string{
		"--port", strconv.Itoa(s.Port),
		"--bind", "127.0.0.1",
		"--dir", s.dir,
		"--save", "",
		"--appendonly", "no",
		"--protected-mode", "no",
		"--daemonize", "no",
		"--logfile", "redis.log",
	}
	if s.cluster {
		args = append(args,
			"--cluster-enabled", "yes",
			"--cluster-config-file", "nodes.conf",
			"--cluster-node-timeout", "5000",
		)
	}
	cmd := exec.Command(s.bin, args...)
	cmd.Dir = s.dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start redis-server: %w", err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	s.cmd, s.done = cmd, done

	deadline := time.Now().Add(startTimeout)
	for time.Now().Before(deadline) {
		select {
		case <-done:
			s.cmd = nil
			return fmt.Errorf("redis-server on port %d exited: %s%s", s.Port, stderr.String(), s.logTail())
		default:
		}
		if ping(s.Addr) == nil {
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	s.killLocked()
	return fmt.Errorf("redis-server on port %d not ready after %s%s", s.Port, startTimeout, s.logTail())
}

// logTail returns the end of the server log, for failure messages.
func (s *Server) logTail() string {
	b, err := os.ReadFile(filepath.Join(s.dir, "redis.log"))
	if err != nil || len(b) == 0 {
		return ""
	}
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return "\n--- redis.log ---\n" + string(b)
}

// Cluster is a Redis Cluster of masters without replicas.
type Cluster struct {
	// Nodes are the cluster's servers.
	Nodes []*Server

	tb  testing.TB
	cli string
}

// StartCluster starts masters cluster-enabled servers, joins them with
// `redis-cli --cluster create`, waits until every node reports
// cluster_state:ok, and registers the shutdown with tb.Cleanup.
func StartCluster(tb testing.TB, masters int) *Cluster {
	tb.Helper()
	if masters < 3 {
		tb.Fatalf("redistest: a cluster needs at least 3 masters, got %d", masters)
	}
	bin, cli := Binaries(tb)
	c := &Cluster{tb: tb, cli: cli}
	for i := 0; i < masters; i++ {
		s := &Server{tb: tb, bin: bin, dir: tb.TempDir()}
		s.startOnFreePort(true)
		tb.Cleanup(s.stop)
		c.Nodes = append(c.Nodes, s)
	}
	args := []string{"--cluster", "create"}
	for _, n := range c.Nodes {
		args = append(args, n.Addr)
	}
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, cli, args...).CombinedOutput()
	if err != nil {
		tb.Fatalf("redistest: redis-cli --cluster create: %v\n%s", err, out)
	}
	c.WaitReady()
	return c
}

// URL returns a redis+cluster:// URL naming every node (the first in the
// authority, the others as addr= parameters).
func (c *Cluster) URL() string {
	var b strings.Builder
	b.WriteString("redis+cluster://")
	b.WriteString(c.Nodes[0].Addr)
	for i, n := range c.Nodes[1:] {
		if i == 0 {
			b.WriteByte('?')
		} else {
			b.WriteByte('&')
		}
		b.WriteString("addr=")
		b.WriteString(n.Addr)
	}
	return b.String()
}

// Addrs returns the host:port of every node.
func (c *Cluster) Addrs() []string {
	addrs := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		addrs[i] = n.Addr
	}
	return addrs
}

// Client returns a go-redis cluster client, closed on cleanup.
func (c *Cluster) Client() *redis.ClusterClient {
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs()})
	c.tb.Cleanup(func() { _ = cc.Close() })
	return cc
}

// Kill stops every node abruptly.
func (c *Cluster) Kill() {
	for _, n := range c.Nodes {
		n.Kill()
	}
}

// Restart restarts every node and waits until the cluster is ok again.
func (c *Cluster) Restart() {
	c.tb.Helper()
	for _, n := range c.Nodes {
		n.Restart()
	}
	c.WaitReady()
}

// WaitReady waits until every node reports cluster_state:ok and knows every
// other node, so that a client can be routed from any of them.
func (c *Cluster) WaitReady() {
	c.tb.Helper()
	deadline := time.Now().Add(startTimeout)
	var last error
	for time.Now().Before(deadline) {
		if last = c.ready(); last == nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.tb.Fatalf("redistest: cluster not ready after %s: %v", startTimeout, last)
}

func (c *Cluster) ready() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	for _, n := range c.Nodes {
		rc := redis.NewClient(&redis.Options{Addr: n.Addr, MaxRetries: -1, DialerRetries: 1})
		info, err := rc.ClusterInfo(ctx).Result()
		_ = rc.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", n.Addr, err)
		}
		if !strings.Contains(info, "cluster_state:ok") {
			return fmt.Errorf("%s: cluster_state not ok", n.Addr)
		}
		if !strings.Contains(info, "cluster_known_nodes:"+strconv.Itoa(len(c.Nodes))) {
			return fmt.Errorf("%s: not every node known yet", n.Addr)
		}
	}
	return nil
}

// ping sends one PING with a short timeout.
func ping(addr string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	rc := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialerRetries: 1})
	defer rc.Close()
	return rc.Ping(ctx).Err()
}

// freePort asks the kernel for a free loopback port. For a cluster node the
// bus port (port+10000) must exist and be free as well.
func freePort(cluster bool) (int, error) {
	for i := 0; i < 50; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, fmt.Errorf("listen: %w", err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		_ = l.Close()
		if !cluster {
			return port, nil
		}
		if port+10000 > 65535 {
			continue
		}
		bl, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port+10000)))
		if err != nil {
			continue
		}
		_ = bl.Close()
		return port, nil
	}
	return 0, errors.New("no free port pair for a cluster node")
}
