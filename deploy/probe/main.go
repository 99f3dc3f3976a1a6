// Command chainmend-probe is the health check of the gateway's container image: a distroless
// image has no shell, curl or wget, so HEALTHCHECK runs this instead. It sends GET PATH
// (default /healthz; /readyz for readiness) to the gateway in the same container and exits 0
// on a 200 answer, 1 otherwise.
//
// The address is the port of GATEWAY_LISTEN (the image sets it, 0.0.0.0:8787) on loopback,
// so a probe follows the gateway when the listen address is changed through the environment;
// -addr overrides it.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"
)

func main() {
	os.Exit(run(os.Args[1:], os.Getenv, os.Stderr))
}

// run probes and returns the exit code.
func run(args []string, getenv func(string) string, stderr io.Writer) int {
	fs := flag.NewFlagSet("chainmend-probe", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "", "gateway address (default: the port of GATEWAY_LISTEN on 127.0.0.1)")
	timeout := fs.Duration("timeout", 2*time.Second, "give up after this long")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	path := "/healthz"
	if fs.NArg() > 0 {
		path = fs.Arg(0)
	}
	target := *addr
	if target == "" {
		var err error
		if target, err = loopback(getenv("GATEWAY_LISTEN")); err != nil {
			fmt.Fprintln(stderr, "chainmend-probe:", err)
			return 1
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+target+path, nil)
	if err != nil {
		fmt.Fprintln(stderr, "chainmend-probe:", err)
		return 1
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Fprintln(stderr, "chainmend-probe:", err)
		return 1
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(stderr, "chainmend-probe: %s: %s %s\n", path, resp.Status, body)
		return 1
	}
	return 0
}

// loopback turns a listen address into one to dial from the same host: an unspecified host
// (0.0.0.0, ::, none) becomes 127.0.0.1. An empty address is the gateway's default.
func loopback(listen string) (string, error) {
	if listen == "" {
		listen = "127.0.0.1:8787"
	}
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return "", fmt.Errorf("GATEWAY_LISTEN %q: %w", listen, err)
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port), nil
}
