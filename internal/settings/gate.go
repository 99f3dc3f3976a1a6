package settings

import (
	"fmt"
	"strings"

	"chainmend/engine"
	"chainmend/gateway"
	"chainmend/internal/policytest"
)

// gateNamed bounds how many failing cases the gate's error names: a set that breaks every
// fixture must still give a log line an operator can read.
const gateNamed = 5

// FixtureGate returns a reload gate that runs the policy fixtures of dir (a directory of
// fixture files or one file, as `policyctl test` takes them) against a new policy set and
// refuses the set unless every case passes. The fixtures are read at each reload, so a
// change that edits policies and fixtures together is judged by the new fixtures. The
// error names the failing cases (fixture file, case, line) and what differed, because it
// is the only thing the reload log line says about why a set was refused.
//
// A request that would leave pre_send with its call/output pairing broken, in a case that
// does not expect it (policytest.PairingLint), does not refuse the set: the gate returns
// it as engine.Diagnostics of lint findings, which the reloader logs with the activated
// set. The cases' declared expectations decide; the guard tells the operator.
func FixtureGate(dir string) gateway.ReloadGate {
	return func(snap *engine.Snapshot) error {
		files, err := policytest.LoadFiles(dir)
		if err != nil {
			return err
		}
		rep, err := policytest.RunWith(snap, files, policytest.Options{PairingAsLint: true})
		if err != nil {
			return fmt.Errorf("fixtures %s: %w", dir, err)
		}
		if len(rep.Results) == 0 {
			return fmt.Errorf("no fixtures in %s: a gate that checks nothing would pass any set", dir)
		}
		if rep.Failed == 0 {
			if len(rep.Lint) > 0 {
				return rep.Lint
			}
			return nil
		}
		var named []string
		for _, r := range rep.Results {
			if r.Passed {
				continue
			}
			if len(named) == gateNamed {
				named = append(named, fmt.Sprintf("and %d more", rep.Failed-gateNamed))
				break
			}
			named = append(named, fmt.Sprintf("%s (line %d): %s", r.Name(), r.Line, oneLine(r.Failures)))
		}
		return fmt.Errorf("%d of %d fixtures in %s failed: %s", rep.Failed, len(rep.Results), dir, strings.Join(named, "; "))
	}
}

// oneLine joins a case's failures for a log line: policytest lays some of them out over
// several indented lines (want/got pairs) for a terminal.
func oneLine(failures []string) string {
	out := make([]string, len(failures))
	for i, f := range failures {
		out[i] = strings.Join(strings.Fields(f), " ")
	}
	return strings.Join(out, ", ")
}
