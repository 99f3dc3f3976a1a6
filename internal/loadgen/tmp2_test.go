package loadgen

import (
	"context"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"chainmend/emulator"
	"chainmend/gateway"
)

func TestTmpUp(t *testing.T) {
	emu := emulator.New(emulator.WithScript(script(10)))
	if err := emu.Listen("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	defer emu.Close()
	cfg := gateway.DefaultConfig()
	cfg.Upstream = emu.URL() + "/v1"
	cfg.Policies = "../../policies"
	reg := prometheus.NewRegistry()
	srv, _ := gateway.New(cfg, gateway.WithLogger(slog.New(slog.DiscardHandler)), gateway.WithRegistry(reg))
	srv.LoadPolicies()
	hs := httptest.NewServer(srv.Handler())
	defer hs.Close()
	p := newPayloads("sid1", 1)
	tg := &target{name: "gateway", wsURL: wsURL(hs), http: newHTTPClient(4)}
	s, err := dialWS(context.Background(), tg, clientHeaders("sid1", "t"), p)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 6; i++ {
		smp, err := s.turn(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		fmt.Println(smp.class, smp.events)
	}
	for _, c := range emu.Creates() {
		fmt.Println("create", c.Seq, c.PreviousResponseID, len(c.Frame), c.Outcome)
	}
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() == "chainmend_rule_fired_total" || mf.GetName() == "chainmend_rules_fired_total" {
			for _, m := range mf.Metric {
				fmt.Println(m.Label, m.Counter.GetValue())
			}
		}
	}
}
