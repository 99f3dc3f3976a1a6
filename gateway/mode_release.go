//go:build !debug

package gateway

import "chainmend/engine"

// DefaultMode follows the build: a normal (release) build repairs.
const DefaultMode = engine.ModeRepair
