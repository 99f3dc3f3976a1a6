package e2e

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// testSecret is the client credential of the suites; it must never reach a log line, a
// metric or a Redis key.
const testSecret = "sk-chainmend-e2e-fake-5f1c0ffee"

func TestMain(m *testing.M) {
	code := m.Run()
	RemoveBuilds()
	os.Exit(code)
}

// header returns the handshake headers of a client of session.
func header(session string) http.Header {
	return http.Header{"Authorization": {"Bearer " + testSecret}, "Session-Id": {session}}
}

// policiesDir is the default policy set.
func policiesDir(t *testing.T) string { return filepath.Join(RepoRoot(t), "policies") }

// waitFor polls cond until it holds or timeout passes.
func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// noSecret fails the test when the credential shows up in text.
func noSecret(t *testing.T, where, text string) {
	t.Helper()
	if strings.Contains(text, testSecret) {
		t.Errorf("the API key leaked into %s", where)
	}
}

// contains reports whether list holds s.
func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
