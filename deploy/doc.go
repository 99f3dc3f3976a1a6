// Package deploy holds the deployment recipes of the gateway, and the tests that keep them
// honest: Dockerfile (a static binary in a distroless image, run as non-root), compose.yaml
// (two gateways, Redis, Prometheus, Grafana, the emulator under a profile), kubernetes/ (a
// kustomization), the Prometheus and Grafana provisioning, and probe/, the image's health
// check. No container runtime is needed to test them: deploy_test.go renders the
// kustomization with kubectl, parses every file, checks each flag, environment variable,
// path, port and probe against the gateway binary it builds, and runs that binary with the
// Deployment's own arguments. Nothing here is imported by the gateway.
package deploy
