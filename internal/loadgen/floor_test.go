package loadgen

import (
	"context"
	"io"
	"math/rand/v2"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"chainmend/emulator"
)

// startTestFloor runs the floor proxy in this process in front of upstream (host:port).
func startTestFloor(t *testing.T, upstream string) *gatewayProc {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() { _ = serveFloor(ln, upstream) }()
	return &gatewayProc{name: "F", addr: ln.Addr().String()}
}

// TestFloorRelaysTurns runs WebSocket and HTTP+SSE conversations through the floor to the
// emulator, which checks every create as it does for direct clients.
func TestFloorRelaysTurns(t *testing.T) {
	emu := emulator.New(emulator.WithScript(script(0)), emulator.WithRecording(false))
	if err := emu.Listen("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	defer emu.Close()
	u, err := url.Parse(emu.URL())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cli := newHTTPClient(4)
	defer cli.CloseIdleConnections()
	ft := (&env{}).floorTarget(startTestFloor(t, u.Host), cli)

	p := newPayloads("lg-floortest", 1)
	hdr := clientHeaders("lg-floortest", "t0")
	ws, err := dialWS(ctx, ft, hdr, p)
	if err != nil {
		t.Fatal(err)
	}
	const turns = cycleLen + 2 // a full create, chained turns, a full create again
	for i := 0; i < turns; i++ {
		smp, err := ws.turn(ctx)
		if err != nil {
			t.Fatalf("WebSocket turn %d: %v", i, err)
		}
		if smp.events < 2 || smp.total < smp.ttfe {
			t.Errorf("WebSocket turn %d: %d events, first %v, terminal %v", i, smp.events, smp.ttfe, smp.total)
		}
	}
	ws.close()
	for _, big := range []bool{false, true} {
		hs := &httpSession{tg: ft, hdr: hdr, p: p, big: big}
		for i := 0; i < 2; i++ {
			if _, err := hs.turn(ctx); err != nil {
				t.Fatalf("HTTP turn (big %v) %d: %v", big, i, err)
			}
		}
	}
	if st := emu.Stats(); st.Errors != 0 || st.Creates != turns+4 {
		t.Errorf("emulator: %d creates, %d errors; want %d creates, none refused", st.Creates, st.Errors, turns+4)
	}
}

// TestFloorHalfClose checks that the end of each direction reaches the other side: the
// upstream answers only after the client's EOF, and the client sees the upstream's.
func TestFloorHalfClose(t *testing.T) {
	up, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	go func() {
		c, err := up.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		b, _ := io.ReadAll(c) // to the client's EOF
		_, _ = c.Write([]byte(strings.ToUpper(string(b))))
	}()
	f := startTestFloor(t, up.Addr().String())
	c, err := net.Dial("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte("floor")); err != nil {
		t.Fatal(err)
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "FLOOR" {
		t.Errorf("got %q, %v; want %q and the upstream's EOF", got, err, "FLOOR")
	}
}

// fakeArm is a turn that takes no time but reports a fixed one, and logs its calls.
func fakeArm(name string, total time.Duration, log *[]string) func(context.Context) (sample, error) {
	return func(context.Context) (sample, error) {
		*log = append(*log, name)
		return sample{class: classWSChained3K, ttfe: total / 2, total: total, events: 3}, nil
	}
}

// TestPairThreeArms checks that every matched turn runs each arm once, in an order that
// varies, and what the class result reads off the floor arm.
func TestPairThreeArms(t *testing.T) {
	var log []string
	w := newConvWorker(42)
	w.turnD = fakeArm("d", 100*time.Microsecond, &log)
	w.turnG = fakeArm("g", 400*time.Microsecond, &log)
	w.turnF = fakeArm("f", 200*time.Microsecond, &log)
	const n = 600
	first := map[string]int{}
	for i := 0; i < n; i++ {
		log = log[:0]
		if err := w.pair(context.Background(), true); err != nil {
			t.Fatal(err)
		}
		if len(log) != 3 || !strings.Contains(strings.Join(log, ""), "d") || !strings.Contains(strings.Join(log, ""), "g") ||
			!strings.Contains(strings.Join(log, ""), "f") {
			t.Fatalf("pair %d ran %v", i, log)
		}
		first[log[0]]++
	}
	for _, a := range []string{"d", "g", "f"} {
		if first[a] < n/6 { // a third each, expected; far below means the order is not random
			t.Errorf("arm %s first in %d of %d pairs", a, first[a], n)
		}
	}
	if w.n != n || w.gwTurns != n || w.floorTurns != n {
		t.Errorf("recorded %d pairs, %d gateway and %d floor turns; want %d each", w.n, w.gwTurns, w.floorTurns, n)
	}
	cr := classResults([]*convWorker{w})
	if len(cr) != 1 || cr[0].Floor == nil {
		t.Fatalf("class results %+v: want one class with a floor arm", cr)
	}
	c, f := cr[0], cr[0].Floor
	for _, chk := range []struct {
		what      string
		got, want float64
	}{
		{"gateway added p50", c.AddedTotal.P50, 300},
		{"floor added p50", f.AddedTotal.P50, 100},
		{"floor paired p99", f.PairedTotal.P99, 100},
		{"gateway over floor p50", f.GatewayOverTotal.P50, 200},
		{"gateway over floor, paired p90", f.GatewayOverPairedTotal.P90, 200},
		{"gateway over floor, first event p50", f.GatewayOverTTFE.P50, 100},
		{"ratio p50", f.RatioTotal.P50, 3},
		{"ratio first event p99", f.RatioTTFE.P99, 3},
	} {
		if chk.got != chk.want {
			t.Errorf("%s: %v, want %v", chk.what, chk.got, chk.want)
		}
	}
}

// TestPairTwoArmsUnchanged checks that without a floor arm (lanes) a worker draws the same
// order from its seed as it did before the floor existed: direct first when IntN(2) is 0.
func TestPairTwoArmsUnchanged(t *testing.T) {
	var log []string
	w := newConvWorker(7)
	w.turnD = fakeArm("d", time.Millisecond, &log)
	w.turnG = fakeArm("g", 2*time.Millisecond, &log)
	ref := rand.New(rand.NewPCG(7, 7))
	for i := 0; i < 200; i++ {
		log = log[:0]
		if err := w.pair(context.Background(), i%3 != 0); err != nil {
			t.Fatal(err)
		}
		want := "dg"
		if ref.IntN(2) != 0 {
			want = "gd"
		}
		if got := strings.Join(log, ""); got != want {
			t.Fatalf("pair %d ran %s, want %s", i, got, want)
		}
	}
	if cr := classResults([]*convWorker{w}); len(cr) != 1 || cr[0].Floor != nil || w.floorTurns != 0 {
		t.Errorf("a worker without a floor arm reports one: %+v", cr)
	}
}

// TestTargets reads the targets off a made-up report.
func TestTargets(t *testing.T) {
	class := func(name string, gwAdded, floorAdded float64) ClassResult {
		return ClassResult{Class: name, Pairs: 100, AddedTotal: Dist{P50: gwAdded},
			Floor: &FloorResult{AddedTotal: Dist{P50: floorAdded}, GatewayOverTotal: Dist{P50: gwAdded - floorAdded},
				RatioTotal: Ratios{P50: gwAdded / floorAdded}}}
	}
	r := &Report{
		Phases: []PhaseResult{
			{Name: "ws-small-1-local", Sessions: 1, Instances: 1, Classes: []ClassResult{
				class(classWSFull3K, 900, 100), class(classWSChained3K, 150, 100)}},
			{Name: "ws-small-1-redis", Sessions: 1, Instances: 1, Classes: []ClassResult{class(classWSChained3K, 260, 120)}},
			{Name: "http-big-1-local", Sessions: 1, Instances: 1, Classes: []ClassResult{class(classHTTP175K, 700, 200)}},
			{Name: "ws-small-10-local", Sessions: 10, Instances: 1, CPUPerTurnUs: 300, FloorCPUPerTurnUs: 100, CPUOverFloor: 3},
			{Name: "ws-small-10-redis-1inst", Sessions: 10, Instances: 1, CPUPerTurnUs: 300, FloorCPUPerTurnUs: 100, CPUOverFloor: 3},
			{Name: "ws-small-100-redis", Sessions: 100, Instances: 1, CPUPerTurnUs: 300, FloorCPUPerTurnUs: 100, CPUOverFloor: 3},
		},
		Throughput: &ThroughputResult{Sessions: 32, DirectTurnsPS: 1000, GatewayTurnsPS: 850, Ratio: 0.85, FloorTurnsPS: 990, FloorRatio: 0.99},
	}
	got := targets(r)
	want := []struct {
		prefix string
		value  float64
		met    bool
	}{
		{"WebSocket chained 3 KB, added p50 ≤ floor + 60 µs (ws-small-1-local)", 50, true},
		{"HTTP+SSE 175 KB, added p50 ≤ floor + 400 µs (http-big-1-local)", 500, false},
		{"WebSocket chained 3 KB, Redis ≤ local + 60 µs", 90, false},
		{"CPU per turn ≤ 1.5× the floor's (ws-small-10-local)", 3, false},
		{"throughput at saturation ≥ 0.8× direct", 0.85, true},
	}
	if len(got) != len(want) {
		for _, g := range got {
			t.Log(g.Target)
		}
		t.Fatalf("%d targets, want %d", len(got), len(want))
	}
	for i, w := range want {
		if !strings.HasPrefix(got[i].Target, w.prefix) || got[i].Value != w.value || got[i].Met != w.met {
			t.Errorf("target %d: %q = %v (met %v), want %q = %v (met %v)", i, got[i].Target, got[i].Value, got[i].Met,
				w.prefix, w.value, w.met)
		}
	}
}

// TestThroughputRounds runs the saturation run for a few short rounds with two in-process
// floor proxies standing in for the gateway and the floor (no child processes, so no CPU
// figures), and checks that every side ran and that each round has its ratios.
func TestThroughputRounds(t *testing.T) {
	emu := emulator.New(emulator.WithScript(script(0)), emulator.WithRecording(false))
	if err := emu.Listen("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	defer emu.Close()
	u, err := url.Parse(emu.URL())
	if err != nil {
		t.Fatal(err)
	}
	e := &env{direct: &target{name: "direct", wsURL: emu.WebSocketURL()}, logf: t.Logf}
	const rounds = 2
	res := e.runThroughput(context.Background(), startTestFloor(t, u.Host), startTestFloor(t, u.Host), nil, 4, rounds, 100*time.Millisecond)
	if res.Errors != 0 {
		t.Fatalf("%d errors: %s", res.Errors, res.FirstErr)
	}
	if res.DirectTurnsPS <= 0 || res.GatewayTurnsPS <= 0 || res.FloorTurnsPS <= 0 {
		t.Errorf("turns/s direct %.0f, gateway %.0f, floor %.0f: every side must run", res.DirectTurnsPS, res.GatewayTurnsPS, res.FloorTurnsPS)
	}
	if len(res.GatewayRoundRatios) != rounds || len(res.FloorRoundRatios) != rounds {
		t.Fatalf("round ratios %v / %v, want %d each", res.GatewayRoundRatios, res.FloorRoundRatios, rounds)
	}
	for i := 0; i < rounds; i++ {
		if res.GatewayRoundRatios[i] <= 0 || res.FloorRoundRatios[i] <= 0 {
			t.Errorf("round %d: ratios %.2f / %.2f, want both positive", i, res.GatewayRoundRatios[i], res.FloorRoundRatios[i])
		}
	}
}
