// Command policyctl validates, tests and explains chainmend policies.
package main

import (
	"os"

	"chainmend/internal/policyctl"
)

func main() {
	os.Exit(policyctl.Main(os.Args[1:], os.Stdout, os.Stderr))
}
