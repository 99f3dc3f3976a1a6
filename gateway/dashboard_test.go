package gateway_test

import (
	"encoding/json"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"chainmend/gateway"
	"chainmend/statestore"
)

// describing records the name of every metric registered through it.
type describing struct {
	prometheus.Registerer
	names map[string]bool
}

var fqName = regexp.MustCompile(`fqName: "([^"]+)"`)

func (d *describing) Register(c prometheus.Collector) error {
	ch := make(chan *prometheus.Desc, 64)
	go func() { c.Describe(ch); close(ch) }()
	for desc := range ch {
		if m := fqName.FindStringSubmatch(desc.String()); m != nil {
			d.names[m[1]] = true
		}
	}
	return d.Registerer.Register(c)
}

func (d *describing) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := d.Register(c); err != nil {
			panic(err)
		}
	}
}

// TestDashboardMetricsExist checks that every metric the Grafana dashboard queries is
// registered by the gateway (its own, the engine's, the store's and the reloader's), so the
// dashboard cannot drift into blank panels.
func TestDashboardMetricsExist(t *testing.T) {
	data, err := os.ReadFile("../deploy/grafana/chainmend.json")
	require.NoError(t, err)
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	require.NoError(t, json.Unmarshal(data, &dash))
	require.NotEmpty(t, dash.Panels)

	reg := prometheus.NewRegistry()
	rec := &describing{Registerer: reg, names: map[string]bool{}}
	store, err := statestore.New(statestore.WithRegisterer(rec))
	require.NoError(t, err)
	cfg := gateway.DefaultConfig()
	cfg.Policies = "../policies"
	srv, err := gateway.New(cfg, gateway.WithStore(store), gateway.WithRegistry(reg), gateway.WithRegisterer(rec))
	require.NoError(t, err)
	defer srv.Close()
	gateway.NewReloader(srv)

	nameRe := regexp.MustCompile(`chainmend_[a-z_]+`)
	n := 0
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			for _, name := range nameRe.FindAllString(tg.Expr, -1) {
				n++
				base := name
				for _, suf := range []string{"_bucket", "_sum", "_count"} {
					if strings.HasSuffix(base, suf) && rec.names[strings.TrimSuffix(base, suf)] {
						base = strings.TrimSuffix(base, suf)
					}
				}
				if !rec.names[base] {
					t.Errorf("panel %q queries %s, which the gateway does not export", p.Title, name)
				}
			}
		}
	}
	require.Greater(t, n, 15)
}
