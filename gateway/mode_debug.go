//go:build debug

package gateway

import "chainmend/engine"

// DefaultMode follows the build: a binary built with -tags debug is strict, so that client
// bugs surface instead of being repaired.
const DefaultMode = engine.ModeStrict
