// Command loadgen is the side-by-side load tool (issue 7): Codex-shaped conversations
// against the upstream emulator, direct and through the gateway, interleaved in one run.
// See internal/loadgen and BENCHMARKS.md ("Gateway path", "Lanes"); `make load` runs it,
// `--only lanes` only the lanes phases.
package main

import (
	"os"

	"chainmend/internal/loadgen"
)

func main() { os.Exit(loadgen.Main(os.Args[1:], os.Stdout, os.Stderr)) }
