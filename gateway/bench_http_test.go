package gateway

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"chainmend/emulator"
	"chainmend/responses"
)

// tcpCopy is the floor of any hop (issue 14): a proxy that copies bytes both ways without
// looking at them. It returns its address.
func tcpCopy(b *testing.B, upstream string) string {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", upstream)
			if err != nil {
				_ = c.Close()
				continue
			}
			go func() { _, _ = io.Copy(u, c); _ = u.Close() }()
			go func() { _, _ = io.Copy(c, u); _ = c.Close() }()
		}
	}()
	return ln.Addr().String()
}

// BenchmarkTurnHTTP is one ~3 KB HTTP+SSE turn (a full create, as every HTTP turn is)
// through the gateway, through a raw TCP copy (the floor) and direct; the interleaved run
// reports the gateway's added time over the floor's.
func BenchmarkTurnHTTP(b *testing.B) {
	st := newBenchStack(b, emulator.WithScript(emulator.Reply("ok, done")))
	text := strings.Repeat("line of tool output ", 140)
	body := []byte(`{"model":"gpt-5.5","store":false,"stream":true,"input":[{"type":"message","role":"user","content":` +
		fmt.Sprintf("%q", text) + `}]}`)
	emuHost := strings.TrimPrefix(st.emu.URL(), "http://")
	urls := []string{st.gw.URL + "/v1/responses", "http://" + tcpCopy(b, emuHost) + "/v1/responses", st.emu.URL() + "/v1/responses"}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
	turn := func(b *testing.B, url string) {
		req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
		if err != nil {
			b.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer sk-bench")
		resp, err := client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			msg, _ := io.ReadAll(resp.Body)
			b.Fatalf("status %d: %s", resp.StatusCode, msg)
		}
		rd := responses.NewSSEReader(bufio.NewReader(resp.Body))
		for {
			ev, err := rd.Next()
			if err != nil {
				b.Fatalf("no terminal event: %v", err)
			}
			if responses.IsTerminal(responses.EventKind(ev.Data)) {
				_, _ = io.Copy(io.Discard, resp.Body)
				return
			}
		}
	}
	for i, name := range []string{"gateway", "tcp_copy", "direct"} {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				turn(b, urls[i])
			}
		})
	}
	b.Run("interleaved", func(b *testing.B) {
		var t [3]time.Duration
		n := 0
		for b.Loop() {
			for k, u := range urls {
				t0 := time.Now()
				turn(b, u)
				t[k] += time.Since(t0)
			}
			n++
		}
		b.ReportMetric(float64(t[0].Nanoseconds())/float64(n), "gateway-ns/turn")
		b.ReportMetric(float64(t[1].Nanoseconds())/float64(n), "floor-ns/turn")
		b.ReportMetric(float64(t[2].Nanoseconds())/float64(n), "direct-ns/turn")
		b.ReportMetric(float64(t[0]-t[1])/float64(n), "added-over-floor-ns/turn")
	})
}
