// Package policytests holds the YAML fixtures of the default policies. The test in this
// package runs them with go test; policyctl test runs the same files.
package policytests
