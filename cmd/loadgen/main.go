// Command loadgen is the side-by-side load tool (issue 7): Codex-shaped conversations
// against the upstream emulator, direct, through the gateway and through the floor (a raw
// TCP copy proxy, issue 14), interleaved in one run. See internal/loadgen and
// BENCHMARKS.md ("Against the floor", "Gateway path", "Lanes"); `make load` runs it,
// `--only lanes` only the lanes phases.
package main

import (
	"os"

	"chainmend/internal/loadgen"
)

func main() { os.Exit(loadgen.Main(os.Args[1:], os.Stdout, os.Stderr)) }
