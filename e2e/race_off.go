//go:build !race

package e2e

// raceEnabled reports whether this binary runs with the race detector; Build then builds
// the binaries it starts with -race too.
const raceEnabled = false
