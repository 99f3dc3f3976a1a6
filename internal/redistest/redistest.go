// Package redistest starts real redis-server processes for integration tests:
// a standalone server, a small Redis Cluster, or a master with replicas watched
// by Sentinels (redis-server --sentinel), each on free loopback ports in a
// temporary directory, stopped automatically when the test ends.
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
	// sentinel runs the server as a Sentinel from dir/sentinel.conf, which the
	// Sentinel rewrites as it learns the deployment.
	sentinel bool
	// extra are arguments appended to the command line (--replicaof …).
	extra []string

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
	var args []string
	if s.sentinel {
		// A Sentinel reads (and rewrites) a config file; the command-line
		// options below override its port and the rest.
		args = append(args, filepath.Join(s.dir, "sentinel.conf"), "--sentinel")
	}
	args = append(args,
		"--port", strconv.Itoa(s.Port),
		"--bind", "127.0.0.1",
		"--dir", s.dir,
		"--save", "",
		"--appendonly", "no",
		"--protected-mode", "no",
		"--daemonize", "no",
		"--logfile", "redis.log",
	)
	if s.cluster {
		args = append(args,
			"--cluster-enabled", "yes",
			"--cluster-config-file", "nodes.conf",
			"--cluster-node-timeout", "5000",
		)
	}
	args = append(args, s.extra...)
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

// MasterName is the name the Sentinels of StartSentinel monitor their master under.
const MasterName = "mymaster"

// Sentinel is a master with replicas, watched by Sentinels (redis-server
// --sentinel) with a quorum of one, so that `SENTINEL FAILOVER` from any of
// them promotes a replica at once.
type Sentinel struct {
	// Servers are the data nodes: the first master, then the replicas. After a
	// failover the master is another one of them (see MasterAddr).
	Servers []*Server
	// Sentinels are the Sentinel processes.
	Sentinels []*Server

	tb testing.TB
}

// StartSentinel starts a master, replicas replicas of it and sentinels
// Sentinels monitoring it as MasterName, waits until every replica is in sync
// and every Sentinel knows every replica, and registers the shutdown with
// tb.Cleanup. Nothing is persisted, as with Start.
func StartSentinel(tb testing.TB, replicas, sentinels int) *Sentinel {
	tb.Helper()
	if replicas < 1 || sentinels < 1 {
		tb.Fatalf("redistest: a Sentinel deployment needs a replica and a Sentinel, got %d and %d", replicas, sentinels)
	}
	bin, _ := Binaries(tb)
	d := &Sentinel{tb: tb}
	master := &Server{tb: tb, bin: bin, dir: tb.TempDir()}
	master.startOnFreePort(false)
	tb.Cleanup(master.stop)
	d.Servers = append(d.Servers, master)
	host, port, _ := net.SplitHostPort(master.Addr)
	for i := 0; i < replicas; i++ {
		r := &Server{tb: tb, bin: bin, dir: tb.TempDir(), extra: []string{"--replicaof", host, port}}
		r.startOnFreePort(false)
		tb.Cleanup(r.stop)
		d.Servers = append(d.Servers, r)
	}
	for i := 0; i < sentinels; i++ {
		s := &Server{tb: tb, bin: bin, dir: tb.TempDir(), sentinel: true}
		// A short down-after keeps an accidental outage of the master from
		// lasting; a test fails over on purpose with Failover.
		conf := fmt.Sprintf("sentinel monitor %s %s %s 1\n"+
			"sentinel down-after-milliseconds %[1]s 2000\n"+
			"sentinel failover-timeout %[1]s 10000\n", MasterName, host, port)
		if err := os.WriteFile(filepath.Join(s.dir, "sentinel.conf"), []byte(conf), 0o644); err != nil {
			tb.Fatalf("redistest: write sentinel.conf: %v", err)
		}
		s.startOnFreePort(false)
		tb.Cleanup(s.stop)
		d.Sentinels = append(d.Sentinels, s)
	}
	d.waitReady()
	return d
}

// URL returns a redis+sentinel:// URL naming every Sentinel (the first in the
// authority, the others as addr= parameters) and the master name.
func (d *Sentinel) URL() string {
	var b strings.Builder
	b.WriteString("redis+sentinel://")
	b.WriteString(d.Sentinels[0].Addr)
	b.WriteString("?master_name=" + MasterName)
	for _, s := range d.Sentinels[1:] {
		b.WriteString("&addr=" + s.Addr)
	}
	return b.String()
}

// SentinelAddrs returns the host:port of every Sentinel.
func (d *Sentinel) SentinelAddrs() []string {
	addrs := make([]string, len(d.Sentinels))
	for i, s := range d.Sentinels {
		addrs[i] = s.Addr
	}
	return addrs
}

// MasterAddr returns the master's host:port as the first Sentinel reports it.
func (d *Sentinel) MasterAddr() string {
	d.tb.Helper()
	addr, err := d.masterAddr(d.Sentinels[0].Addr)
	if err != nil {
		d.tb.Fatalf("redistest: master address: %v", err)
	}
	return addr
}

// masterAddr asks one Sentinel for the master's address.
func (d *Sentinel) masterAddr(sentinel string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	sc := redis.NewSentinelClient(&redis.Options{Addr: sentinel, MaxRetries: -1, DialerRetries: 1})
	defer sc.Close()
	hp, err := sc.GetMasterAddrByName(ctx, MasterName).Result()
	if err != nil {
		return "", err
	}
	if len(hp) != 2 {
		return "", fmt.Errorf("unexpected reply %q", hp)
	}
	return net.JoinHostPort(hp[0], hp[1]), nil
}

// Client returns a go-redis failover client (through the Sentinels), closed on
// cleanup.
func (d *Sentinel) Client() *redis.Client {
	c := redis.NewFailoverClient(&redis.FailoverOptions{MasterName: MasterName, SentinelAddrs: d.SentinelAddrs()})
	d.tb.Cleanup(func() { _ = c.Close() })
	return c
}

// Failover asks the first Sentinel to fail over (SENTINEL FAILOVER), retrying
// while no replica is eligible yet, and waits until every Sentinel names a new
// master and that master says it is one. It returns the new master's address.
// The old master keeps its role until the Sentinels convert it (about ten
// seconds later): writes a client still sends there in between are lost, as
// with any Sentinel failover.
func (d *Sentinel) Failover() string {
	d.tb.Helper()
	old := d.MasterAddr()
	sc := redis.NewSentinelClient(&redis.Options{Addr: d.Sentinels[0].Addr, MaxRetries: -1, DialerRetries: 1})
	defer sc.Close()
	deadline := time.Now().Add(startTimeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := sc.Failover(ctx, MasterName).Err()
		cancel()
		if err == nil {
			break
		}
		// NOGOODSLAVE: the Sentinel has not seen a healthy replica yet;
		// INPROG: a failover is already running.
		if time.Now().After(deadline) {
			d.tb.Fatalf("redistest: SENTINEL FAILOVER: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	var last error
	for time.Now().Before(deadline) {
		if last = d.switched(old); last == nil {
			return d.MasterAddr()
		}
		time.Sleep(50 * time.Millisecond)
	}
	d.tb.Fatalf("redistest: failover from %s not done after %s: %v", old, startTimeout, last)
	return ""
}

// switched reports nil once every Sentinel names a master other than old and
// that master has the master role.
func (d *Sentinel) switched(old string) error {
	var now string
	for _, s := range d.Sentinels {
		addr, err := d.masterAddr(s.Addr)
		if err != nil {
			return fmt.Errorf("sentinel %s: %w", s.Addr, err)
		}
		if addr == old {
			return fmt.Errorf("sentinel %s still names %s", s.Addr, old)
		}
		now = addr
	}
	role, _, err := replication(now)
	if err != nil {
		return fmt.Errorf("new master %s: %w", now, err)
	}
	if role != "master" {
		return fmt.Errorf("new master %s has role %s", now, role)
	}
	return nil
}

// waitReady waits until every replica's link to the master is up and every
// Sentinel lists every replica as healthy, so that a failover can start.
func (d *Sentinel) waitReady() {
	d.tb.Helper()
	deadline := time.Now().Add(startTimeout)
	var last error
	for time.Now().Before(deadline) {
		if last = d.ready(); last == nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	d.tb.Fatalf("redistest: sentinel deployment not ready after %s: %v", startTimeout, last)
}

// ready reports nil once the deployment can fail over (see waitReady).
func (d *Sentinel) ready() error {
	for _, r := range d.Servers[1:] {
		role, link, err := replication(r.Addr)
		if err != nil {
			return fmt.Errorf("replica %s: %w", r.Addr, err)
		}
		if role != "slave" || link != "up" {
			return fmt.Errorf("replica %s: role %s, master link %q", r.Addr, role, link)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	for _, s := range d.Sentinels {
		sc := redis.NewSentinelClient(&redis.Options{Addr: s.Addr, MaxRetries: -1, DialerRetries: 1})
		replicas, err := sc.Replicas(ctx, MasterName).Result()
		_ = sc.Close()
		if err != nil {
			return fmt.Errorf("sentinel %s: %w", s.Addr, err)
		}
		healthy := 0
		for _, r := range replicas {
			if flags := r["flags"]; flags == "slave" && r["master-link-status"] == "ok" {
				healthy++
			}
		}
		if healthy < len(d.Servers)-1 {
			return fmt.Errorf("sentinel %s knows %d healthy replicas of %d", s.Addr, healthy, len(d.Servers)-1)
		}
	}
	return nil
}

// replication returns a server's role and, for a replica, the state of its
// link to the master ("up" or "down"), from INFO replication.
func replication(addr string) (role, link string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	rc := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialerRetries: 1})
	defer rc.Close()
	info, err := rc.Info(ctx, "replication").Result()
	if err != nil {
		return "", "", err
	}
	for _, line := range strings.Split(info, "\n") {
		k, v, _ := strings.Cut(strings.TrimSpace(line), ":")
		switch k {
		case "role":
			role = v
		case "master_link_status":
			link = v
		}
	}
	return role, link, nil
}
