// Command demo shows chainmend repairing a broken conversation against the upstream
// emulator: no network, no API key.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"chainmend/internal/demo"
)

func main() {
	policies := flag.String("policies", "policies", "policy directory")
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := demo.Run(ctx, os.Stdout, *policies); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}
