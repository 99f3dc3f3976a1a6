package policyctl

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/xml"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"chainmend/internal/policytest"
)

var testCmd = command{
	name:     "test",
	synopsis: "policyctl test [--policies DIR] [-run RE] [-o text|json|junit] [--coverage] [--watch] [DIR|FILE…]",
	about: `Runs fixtures (YAML files of cases: a turn context and the expected outcome) against a
policy set, one line per case like go test, then "N passed, M failed". A failure names the
fixture file and the line of the expectation that failed, with what was wanted and what
the policies did. A case whose request leaves pre_send with a broken call/output pairing
fails unless it says expect.broken_pairing: true.

Typos fail loudly: an unknown field, rule id, reason, verdict or transcript operation is an
error (exit 1), and so is a run with no case (a -run that matches nothing says so).

--coverage prints, per policy file, how many of its rules some case fired, and exits 3
when a rule of a file under test fired in no case. A file is under test when a case of the
run names one of its rules (fired, not_fired, enforce); the others only took part.
--watch runs again whenever a policy or fixture file changes, until interrupted.`,
	examples: `  policyctl test                                    # policytests/ against policies/
  policyctl test --policies my-policies my-tests/model.yaml
  policyctl test -run 'esc/partial' -v
  policyctl test --coverage                         # rules no case fired, per policy file
  policyctl test -o junit > report.xml              # for CI
  policyctl test -o json | jq '.results[] | select(.passed|not) | .failures'
  policyctl test --watch --policies my-policies my-tests/`,
	setup: func(fs *flag.FlagSet) func([]string, io.Writer, io.Writer) int {
		var o testOptions
		fs.StringVar(&o.policies, "policies", defaultDir, "policy directory or file (comma-separated for several)")
		fs.StringVar(&o.run, "run", "", "run only the cases whose fixture/case name matches this regular expression")
		fs.StringVar(&o.format, "o", "text", "output format: text, json, junit")
		asJSON := fs.Bool("json", false, "same as -o json")
		fs.BoolVar(&o.verbose, "v", false, "print the fired rules of every case")
		fs.BoolVar(&o.coverage, "coverage", false, "print rule coverage per policy file; exit 3 when a rule of a file under test fired in no case")
		fs.BoolVar(&o.watch, "watch", false, "run again whenever a policy or fixture file changes, until interrupted")
		return func(args []string, stdout, stderr io.Writer) int {
			if *asJSON {
				o.format = "json"
			}
			if err := checkFormat(o.format, "text", "json", "junit"); err != nil {
				fmt.Fprintf(stderr, "policyctl test: %v\n", err)
				return exitUsage
			}
			o.paths = args
			if len(o.paths) == 0 {
				o.paths = []string{defaultTest}
			}
			if o.run != "" {
				re, err := regexp.Compile(o.run)
				if err != nil {
					fmt.Fprintf(stderr, "policyctl test: -run: %v\n", err)
					return exitUsage
				}
				o.filter = re
			}
			if o.watch {
				return watch(&o, stdout, stderr)
			}
			return runTests(&o, stdout, stderr)
		}
	},
}

type testOptions struct {
	policies, run, format string
	filter                *regexp.Regexp
	verbose, coverage     bool
	watch                 bool
	paths                 []string
}

// runTests loads the policies and fixtures and runs them once.
func runTests(o *testOptions, stdout, stderr io.Writer) int {
	snap, _, code := load(strings.Split(o.policies, ","), stderr, false)
	if snap == nil {
		return code
	}
	files, err := policytest.LoadFiles(o.paths...)
	if err != nil {
		fmt.Fprintf(stderr, "policyctl: %v\n", err)
		return ExitError
	}
	rep, err := policytest.Run(snap, files, o.filter)
	if err != nil {
		fmt.Fprintf(stderr, "policyctl: %v\n", err)
		return ExitError
	}
	code = testStatus(o, rep)
	switch o.format {
	case "json":
		err = writeJSON(stdout, testJSON{Report: rep, Exit: code})
	case "junit":
		err = writeJUnit(stdout, rep)
	default:
		printText(stdout, o, rep)
	}
	if err != nil {
		fmt.Fprintf(stderr, "policyctl: %v\n", err)
		return ExitError
	}
	if len(rep.Results) == 0 {
		total := 0
		for _, f := range files {
			total += len(f.Cases)
		}
		if o.filter != nil {
			fmt.Fprintf(stderr, "policyctl test: -run %q matches none of the %d case(s) in %d file(s); no test cases ran\n", o.run, total, len(files))
		} else {
			fmt.Fprintf(stderr, "policyctl test: no test cases ran: no case in %s\n", strings.Join(o.paths, ", "))
		}
	}
	return code
}

// testStatus is the exit status of a run: errors before failures before coverage.
func testStatus(o *testOptions, rep *policytest.Report) int {
	switch {
	case len(rep.Results) == 0:
		return ExitError
	case rep.Failed > 0:
		return ExitFailed
	case o.coverage && len(rep.UncoveredUnderTest()) > 0:
		return ExitLint
	}
	return ExitOK
}

// testJSON is the JSON of `test -o json`: the report and the exit status it leads to.
type testJSON struct {
	*policytest.Report
	Exit int `json:"exit"`
}

func printText(w io.Writer, o *testOptions, rep *policytest.Report) {
	for _, r := range rep.Results {
		status := "PASS"
		if !r.Passed {
			status = "FAIL"
		}
		fmt.Fprintf(w, "--- %s: %s (%s)\n", status, r.Name(), r.Duration.Round(time.Microsecond))
		if o.verbose || !r.Passed {
			fmt.Fprintf(w, "    fired: %s\n", strings.Join(r.Fired, ", "))
		}
		for _, f := range r.Details {
			fmt.Fprintf(w, "    %s:%d: %s\n", f.File, f.Line, f.Message)
		}
	}
	if o.coverage {
		printCoverage(w, rep)
	} else if n := len(rep.UncoveredUnderTest()); n > 0 && o.filter == nil && rep.Failed == 0 {
		fmt.Fprintf(w, "%d rule(s) of the policy files under test fired in no case (--coverage lists them)\n", n)
	}
	if rep.Failed > 0 {
		fmt.Fprintln(w, "FAIL")
	} else {
		fmt.Fprintln(w, "PASS")
	}
	fmt.Fprintf(w, "%d passed, %d failed\n", rep.Passed, rep.Failed)
}

func printCoverage(w io.Writer, rep *policytest.Report) {
	fmt.Fprintln(w, "coverage (rules some case fired, per policy file):")
	for _, c := range rep.Coverage {
		pct := 100.0
		if c.Rules > 0 {
			pct = 100 * float64(c.Fired) / float64(c.Rules)
		}
		scope := "under test"
		if !c.UnderTest {
			scope = "not under test: no case names its rules"
		}
		fmt.Fprintf(w, "  %s (%s): %d of %d rules, %.0f%% (%s)\n", c.File, c.Policy, c.Fired, c.Rules, pct, scope)
		if c.UnderTest && len(c.Unfired) > 0 {
			fmt.Fprintf(w, "    rules no case fired: %s\n", strings.Join(c.Unfired, ", "))
		}
	}
}

// JUnit XML, the subset CI systems read.
type junitSuites struct {
	XMLName  xml.Name     `xml:"testsuites"`
	Name     string       `xml:"name,attr"`
	Tests    int          `xml:"tests,attr"`
	Failures int          `xml:"failures,attr"`
	Time     string       `xml:"time,attr"`
	Suites   []junitSuite `xml:"testsuite"`
}

type junitSuite struct {
	Name     string      `xml:"name,attr"`
	File     string      `xml:"file,attr"`
	Tests    int         `xml:"tests,attr"`
	Failures int         `xml:"failures,attr"`
	Time     string      `xml:"time,attr"`
	Cases    []junitCase `xml:"testcase"`
}

type junitCase struct {
	Name      string         `xml:"name,attr"`
	Classname string         `xml:"classname,attr"`
	File      string         `xml:"file,attr"`
	Line      int            `xml:"line,attr"`
	Time      string         `xml:"time,attr"`
	Failures  []junitFailure `xml:"failure"`
}

type junitFailure struct {
	Message string `xml:"message,attr"`
	Type    string `xml:"type,attr"`
	Text    string `xml:",chardata"`
}

func seconds(d time.Duration) string { return fmt.Sprintf("%.6f", d.Seconds()) }

func writeJUnit(w io.Writer, rep *policytest.Report) error {
	out := junitSuites{Name: "policyctl test", Tests: len(rep.Results), Failures: rep.Failed}
	var total time.Duration
	index := map[string]int{}
	for _, r := range rep.Results {
		i, ok := index[r.File]
		if !ok {
			out.Suites = append(out.Suites, junitSuite{Name: r.Fixture, File: r.File})
			i = len(out.Suites) - 1
			index[r.File] = i
		}
		s := &out.Suites[i]
		jc := junitCase{Name: r.Case, Classname: r.Fixture, File: r.File, Line: r.Line, Time: seconds(r.Duration)}
		for _, f := range r.Details {
			jc.Failures = append(jc.Failures, junitFailure{
				Message: strings.Join(strings.Fields(f.Message), " "),
				Type:    f.Field,
				Text:    fmt.Sprintf("%s:%d: %s", f.File, f.Line, f.Message),
			})
		}
		s.Tests++
		if !r.Passed {
			s.Failures++
		}
		d, _ := time.ParseDuration(s.Time + "s")
		s.Time = seconds(d + r.Duration)
		total += r.Duration
		s.Cases = append(s.Cases, jc)
	}
	out.Time = seconds(total)
	if _, err := io.WriteString(w, xml.Header); err != nil {
		return err
	}
	enc := xml.NewEncoder(w)
	enc.Indent("", "  ")
	if err := enc.Encode(out); err != nil {
		return err
	}
	_, err := io.WriteString(w, "\n")
	return err
}

// watchInterval is how often --watch looks at the files. Polling sees editors' renames and
// files that appear, which one inotify watch per directory can miss.
var watchInterval = 300 * time.Millisecond

// watchContext ends a --watch run; a test replaces it.
var watchContext = func() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt)
}

// watch runs the tests, then again after every change of a policy or fixture file, until
// interrupted. It returns the status of the last run.
func watch(o *testOptions, stdout, stderr io.Writer) int {
	ctx, stop := watchContext()
	defer stop()
	paths := append(strings.Split(o.policies, ","), o.paths...)
	seen := fingerprint(paths)
	code := runTests(o, stdout, stderr)
	fmt.Fprintf(stdout, "watching %s for changes (interrupt to stop)\n", strings.Join(paths, ", "))
	tick := time.NewTicker(watchInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return code
		case <-tick.C:
			fp := fingerprint(paths)
			if fp == seen {
				continue
			}
			seen = fp
			fmt.Fprintf(stdout, "\n=== %s: files changed, running again\n", time.Now().Format("15:04:05"))
			code = runTests(o, stdout, stderr)
		}
	}
}

// fingerprint hashes the names and contents of the YAML files at paths (files, and the
// *.yaml and *.yml files of directories). Unreadable paths count as their error, so that a
// file that comes back is a change.
func fingerprint(paths []string) string {
	h := sha256.New()
	for _, p := range paths {
		files := []string{p}
		if st, err := os.Stat(p); err == nil && st.IsDir() {
			files = nil
			for _, pat := range []string{"*.yaml", "*.yml"} {
				m, _ := filepath.Glob(filepath.Join(p, pat))
				files = append(files, m...)
			}
			sort.Strings(files)
		}
		for _, f := range files {
			data, err := os.ReadFile(f)
			if err != nil {
				fmt.Fprintf(h, "%s\x00%v\x00", f, err)
				continue
			}
			fmt.Fprintf(h, "%s\x00%d\x00", f, len(data))
			h.Write(data)
		}
	}
	return hex.EncodeToString(h.Sum(nil))
}
