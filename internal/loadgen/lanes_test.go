package loadgen

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"chainmend/emulator"
	"chainmend/responses"
)

// TestCreatesOnLanes checks the frames a lane sends: valid JSON, the lane in stream_id where
// a reader of server frames would look for it, and on the default lane the frame of the
// single-lane phases byte for byte.
func TestCreatesOnLanes(t *testing.T) {
	p := newPayloads("lg-test", 1)
	for _, tc := range []struct {
		name  string
		lane  string
		frame func(lane string) []byte
	}{
		{"full create, default lane", "", func(l string) []byte {
			if l == "" {
				return p.small
			}
			return onLane(p.small, l)
		}},
		{"full create, named lane", "lane0", func(l string) []byte { return onLane(p.small, l) }},
		{"tool output, default lane", "", func(l string) []byte { return p.chained(nil, l, "resp_1", "call_1", 1) }},
		{"tool output, named lane", "lane3", func(l string) []byte { return p.chained(nil, l, "resp_1", "call_1", 1) }},
		{"user message, named lane", "lane.a-1_B", func(l string) []byte { return p.chained(nil, l, "resp_2", "", 2) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := tc.frame(tc.lane)
			var m map[string]any
			if err := json.Unmarshal(b, &m); err != nil {
				t.Fatalf("not JSON: %v\n%.300s", err, b)
			}
			if m["type"] != "response.create" {
				t.Errorf("type %v", m["type"])
			}
			got, has := m["stream_id"]
			if tc.lane == "" && has {
				t.Errorf("default-lane create carries stream_id %v", got)
			}
			if tc.lane != "" && got != tc.lane {
				t.Errorf("stream_id %v, want %q", got, tc.lane)
			}
			if l := responses.EventLane(b); l != tc.lane {
				t.Errorf("EventLane %q, want %q", l, tc.lane)
			}
			if tc.lane != "" {
				// The lane adds its member and nothing else.
				plain := string(tc.frame(""))
				if want := len(plain) + len(`"stream_id":"",`) + len(tc.lane); len(b) != want {
					t.Errorf("size %d, want %d", len(b), want)
				}
				if s := strings.Replace(string(b), `"stream_id":"`+tc.lane+`",`, "", 1); s != plain {
					t.Errorf("frame differs from the default-lane frame beyond stream_id")
				}
			}
		})
	}
	old := p.chained(nil, "", "resp_1", "call_1", 1)
	if !strings.HasPrefix(string(old), createPrefix+p.envelope+`"previous_response_id":"resp_1"`) {
		t.Errorf("default-lane chained create changed shape: %.200s", old)
	}
}

func TestLaneRatio(t *testing.T) {
	for _, tc := range []struct {
		name        string
		lanes, base LaneArm
		want        LaneRatio
	}{
		{"equal", LaneArm{Added: Dist{P50: 100, P90: 200, P99: 400}, CPUPerTurnUs: 300},
			LaneArm{Added: Dist{P50: 100, P90: 200, P99: 400}, CPUPerTurnUs: 300}, LaneRatio{1, 1, 1, 1}},
		{"lanes dearer", LaneArm{Added: Dist{P50: 110, P90: 300, P99: 800}, CPUPerTurnUs: 330},
			LaneArm{Added: Dist{P50: 100, P90: 200, P99: 400}, CPUPerTurnUs: 300}, LaneRatio{1.1, 1.5, 2, 1.1}},
		// A baseline percentile at or below zero (noise: the direct side was slower) has no
		// ratio; 0 stands for it because JSON has no NaN.
		{"baseline not positive", LaneArm{Added: Dist{P50: 100, P90: 200, P99: 400}, CPUPerTurnUs: 300},
			LaneArm{Added: Dist{P50: 0, P90: -50, P99: 400}}, LaneRatio{0, 0, 1, 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := *laneRatio(&tc.lanes, &tc.base)
			for i, pair := range [][2]float64{{got.AddedP50, tc.want.AddedP50}, {got.AddedP90, tc.want.AddedP90},
				{got.AddedP99, tc.want.AddedP99}, {got.CPU, tc.want.CPU}} {
				if d := pair[0] - pair[1]; d > 1e-9 || d < -1e-9 {
					t.Errorf("field %d: %v, want %v", i, pair[0], pair[1])
				}
			}
		})
	}
}

func TestLanePhaseSelection(t *testing.T) {
	for _, tc := range []struct {
		only  string
		lanes int
		want  []string
		other map[string]bool // other runs and whether they are wanted
	}{
		{"", 4, []string{"lanes-1-local", "lanes-1-redis", "lanes-10-local", "lanes-10-redis"},
			map[string]bool{"moved": true, "idle": true, "ws-small-1-redis": true}},
		{"lanes", 4, []string{"lanes-1-local", "lanes-1-redis", "lanes-10-local", "lanes-10-redis"},
			map[string]bool{"moved": false, "throughput": false, "stream": false, "idle": false, "ws-small-1-redis": false}},
		{"lanes-10-", 4, []string{"lanes-10-local", "lanes-10-redis"}, nil},
		{"lanes-.*-redis", 4, []string{"lanes-1-redis", "lanes-10-redis"}, nil},
		{"ws-small-1-", 4, nil, map[string]bool{"ws-small-1-local": true, "idle": false}},
		{"", 0, nil, nil},
	} {
		t.Run(fmt.Sprintf("only=%q,lanes=%d", tc.only, tc.lanes), func(t *testing.T) {
			c := Config{Lanes: tc.lanes, LaneSessions: []int{1, 10}}
			if tc.only != "" {
				c.Only = regexp.MustCompile(tc.only)
			}
			names, stores, sessions := c.laneNames()
			if !slices.Equal(names, tc.want) {
				t.Errorf("lanes phases %v, want %v", names, tc.want)
			}
			for i, n := range names {
				if want := fmt.Sprintf("lanes-%d-%s", sessions[i], stores[i]); n != want {
					t.Errorf("phase %s runs as %s", n, want)
				}
			}
			for name, want := range tc.other {
				if got := c.want(name); got != want {
					t.Errorf("want(%q) = %v, expected %v", name, got, want)
				}
			}
		})
	}
}

// TestLaneConn runs four lanes on one socket against the emulator, which enforces what the
// gateway must also do: creates on a lane in order, each lane chained to its own latest
// response, every frame of a named lane carrying its stream_id.
func TestLaneConn(t *testing.T) {
	emu := emulator.New(emulator.WithScript(script(0)), emulator.WithRecording(false))
	if err := emu.Listen("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	defer emu.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tg := &target{name: "direct", wsURL: emu.WebSocketURL(), http: newHTTPClient(4)}
	names := []string{"lane0", "lane1", "lane2", "lane3"}
	c, err := dialLanes(ctx, tg, clientHeaders("lg-lanetest", "t0"), names)
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()

	const turns = 2*cycleLen + 1 // full creates, tool outputs and user messages, twice over
	var wg sync.WaitGroup
	errs := make([]error, len(names))
	classes := make([][]string, len(names))
	for i, n := range names {
		s := c.lane(n, newPayloads("lg-lanetest."+n, uint64(i+1)))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := 0; k < turns; k++ {
				smp, err := s.turn(ctx)
				if err != nil {
					errs[i] = err
					return
				}
				if smp.events < 2 || smp.total < smp.ttfe {
					t.Errorf("lane %s turn %d: %d events, first %v, terminal %v", n, k, smp.events, smp.ttfe, smp.total)
				}
				classes[i] = append(classes[i], smp.class)
			}
		}()
	}
	wg.Wait()
	for i, n := range names {
		if errs[i] != nil {
			t.Fatalf("lane %s: %v", n, errs[i])
		}
		if full := slices.Index(classes[i][1:], classWSFull3K) + 1; classes[i][0] != classWSFull3K || full != cycleLen {
			t.Errorf("lane %s classes %v: want a full create every %d turns", n, classes[i], cycleLen)
		}
	}
	st := emu.Stats()
	if st.Errors != 0 || st.Creates != int64(len(names)*turns) || st.Lanes != int64(len(names)) {
		t.Errorf("emulator: %d creates on %d lanes, %d errors; want %d creates on %d lanes, none refused",
			st.Creates, st.Lanes, st.Errors, len(names)*turns, len(names))
	}
	t.Logf("peak responses in flight on the socket: %d", st.PeakInFlight)

	// A frame for a lane the socket does not run fails the socket, and so every lane's turn.
	s := c.lane("lane0", newPayloads("lg-lanetest.stray", 99))
	s.name = "stray"
	s.full = onLane(s.p.small, "stray")
	if _, err := s.turn(ctx); err == nil || !strings.Contains(err.Error(), `lane "stray", which this socket does not run`) {
		t.Errorf("stray lane: err %v", err)
	}
	if _, err := c.lane("lane1", newPayloads("lg-lanetest.after", 98)).turn(ctx); err == nil {
		t.Error("a turn after the socket failed succeeded")
	}
}
