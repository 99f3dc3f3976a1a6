package loadgen

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// The floor (issue 14) is the third arm of every latency phase: a TCP proxy that copies
// bytes both ways without looking at them, between the clients and the same emulator.
// Any proxy hop costs at least what it costs (two more sockets, a process crossing and its
// wake-ups each way), and nothing that parses frames can beat it, so the gateway's figures
// are read against it: added latency over the floor's, CPU per turn over the floor's. It
// is part of the load tool, not of the product.
//
// It runs as a child process like the gateways (childEnv=floor), so that its CPU time is
// its own; the control endpoints (/readyz, /loadgen/cpu) need a second listener, because
// everything that reaches the first one is copied upstream.

// runFloorChild is the floor child's main: --listen and --upstream, both host:port.
func runFloorChild(args []string) error {
	fs := flag.NewFlagSet("floor", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:0", "address the clients connect to")
	upstream := fs.String("upstream", "", "address every accepted connection is copied to")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *upstream == "" {
		return errors.New("--upstream is required")
	}
	ctlLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/readyz", func(http.ResponseWriter, *http.Request) {})
	mux.HandleFunc("/loadgen/cpu", serveChildCPU)
	go func() { _ = (&http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}).Serve(ctlLn) }()
	// The parent reads these lines to learn the addresses (startChild).
	fmt.Printf("CONTROL %s\nLISTEN %s\n", ctlLn.Addr(), ln.Addr())
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() { <-ctx.Done(); ln.Close() }()
	err = serveFloor(ln, *upstream)
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// serveFloor is the proxy: every accepted connection gets its own upstream connection and
// two io.Copy loops. On Linux, io.Copy between two TCP connections splices through a pipe,
// so the bytes are not even copied through user space: the cheapest relay there is.
func serveFloor(ln net.Listener, upstream string) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go floorConn(c.(*net.TCPConn), upstream)
	}
}

// floorConn relays one connection until both directions have ended. Each direction
// half-closes its destination when its source ends, so a client's or the emulator's close
// reaches the other side as it would without the proxy.
func floorConn(c *net.TCPConn, upstream string) {
	defer c.Close()
	uc, err := net.DialTimeout("tcp", upstream, 5*time.Second)
	if err != nil {
		return
	}
	u := uc.(*net.TCPConn)
	defer u.Close()
	up := make(chan struct{})
	go func() {
		_, _ = io.Copy(u, c)
		_ = u.CloseWrite()
		close(up)
	}()
	_, _ = io.Copy(c, u)
	_ = c.CloseWrite()
	<-up
}

// startFloor starts the floor child in front of upstream (host:port).
func startFloor(logPath, upstream string) (*gatewayProc, error) {
	return startChild("floor", "F", logPath, nil, "--listen", "127.0.0.1:0", "--upstream", upstream)
}
