package e2e

// A redis-server with a password and, optionally, TLS, for the security suite
// (internal/redistest starts plain servers only).

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"chainmend/internal/redistest"
)

// secureRedis is one redis-server process started by startSecureRedis.
type secureRedis struct {
	addr     string
	password string
	// caFile is the PEM of the CA that signed the server certificate (TLS only).
	caFile string
	tls    *tls.Config
}

// testCA writes a throwaway CA and a server certificate for 127.0.0.1 into dir and returns
// the paths of the CA certificate, the server certificate and its key.
func testCA(t *testing.T, dir string) (caFile, certFile, keyFile string) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ca := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "chainmend test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	srv := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srv, caCert, &srvKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(srvKey)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	return write("ca.pem", "CERTIFICATE", caDER), write("server.pem", "CERTIFICATE", srvDER), write("server-key.pem", "EC PRIVATE KEY", keyDER)
}

// startSecureRedis starts redis-server on a free loopback port with requirepass and, with
// withTLS, only a TLS port. It skips (fails under CI=true, like redistest) when the server
// is missing, or when withTLS and this redis-server was built without TLS.
func startSecureRedis(t *testing.T, password string, withTLS bool) *secureRedis {
	t.Helper()
	bin, _ := redistest.Binaries(t)
	dir := t.TempDir()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	r := &secureRedis{addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), password: password}
	args := []string{"--bind", "127.0.0.1", "--dir", dir, "--save", "", "--appendonly", "no", "--daemonize", "no",
		"--requirepass", password}
	if withTLS {
		var cert, key string
		r.caFile, cert, key = testCA(t, dir)
		args = append(args, "--port", "0", "--tls-port", strconv.Itoa(port), "--tls-cert-file", cert, "--tls-key-file", key,
			"--tls-ca-cert-file", r.caFile, "--tls-auth-clients", "no")
		pool := x509.NewCertPool()
		pem, _ := os.ReadFile(r.caFile)
		pool.AppendCertsFromPEM(pem)
		r.tls = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	} else {
		args = append(args, "--port", strconv.Itoa(port))
	}
	cmd := exec.Command(bin, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-done })
	deadline := time.Now().Add(15 * time.Second)
	for {
		select {
		case <-done:
			msg := out.String()
			if withTLS && (strings.Contains(msg, "tls-port") || strings.Contains(strings.ToLower(msg), "tls")) {
				notice := "this redis-server was built without TLS support: rediss:// cannot be tested here (" + strings.TrimSpace(msg) + ")"
				if os.Getenv("CI") == "true" {
					t.Fatal(notice)
				}
				t.Skip("!!!!!!!! SKIPPING: " + notice + " !!!!!!!!")
			}
			t.Fatalf("redis-server exited: %s", msg)
		default:
		}
		c := r.client()
		err := c.Ping(context.Background()).Err()
		_ = c.Close()
		if err == nil {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("redis-server not ready: %v\n%s", err, out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// client returns a go-redis client that authenticates (and trusts the test CA).
func (r *secureRedis) client() *redis.Client {
	return redis.NewClient(&redis.Options{Addr: r.addr, Password: r.password, TLSConfig: r.tls, MaxRetries: -1, DialTimeout: time.Second})
}

// url returns the URL the gateway gets: rediss:// with TLS, redis:// without, password in
// the user info.
func (r *secureRedis) url(password string) string {
	scheme := "redis"
	if r.tls != nil {
		scheme = "rediss"
	}
	return scheme + "://:" + password + "@" + r.addr + "/0"
}
