// Package policyctl implements the policyctl command: validate, test and explain policies
// without a gateway, Redis or sockets.
package policyctl

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strings"
	"text/tabwriter"

	"chainmend/engine"
	"chainmend/internal/policytest"
)

// Exit codes, after promtool and opa.
const (
	ExitOK      = 0
	ExitError   = 1
	ExitFailed  = 2
	ExitLint    = 3
	exitUsage   = ExitError
	defaultDir  = "policies"
	defaultTest = "policytests"
)

const usage = `policyctl checks chainmend policies.

Usage:
  policyctl validate [DIR|FILE…]                     compile and lint (default: policies)
  policyctl test [--policies DIR] [-run RE] [--json] [DIR|FILE…]
                                                     run fixtures (default: policytests)
  policyctl explain --request FILE [--state FILE] [--policies DIR] [--stage S]
                    [--enforce RULE,…]               show each rule's value, its diff and
                                                     the effects (post_response: the state
                                                     file's response: {id, status, event,
                                                     output, …} as in fixtures); --enforce
                                                     evaluates shadow rules as enforced
  policyctl vars [--stage S]                         list the turn context variables
                                                     (of one entry stage)

Exit status: 0 ok, 1 errors, 2 test failures, 3 lint findings.
`

// Main runs policyctl with args (without the program name) and returns the exit status.
func Main(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	switch args[0] {
	case "validate":
		return validate(args[1:], stdout, stderr)
	case "test":
		return test(args[1:], stdout, stderr)
	case "explain":
		return explain(args[1:], stdout, stderr)
	case "vars":
		return vars(args[1:], stdout, stderr)
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
		return ExitOK
	}
	fmt.Fprintf(stderr, "policyctl: unknown command %q\n\n%s", args[0], usage)
	return exitUsage
}

func newFlags(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("policyctl "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// load compiles the policies at paths and prints every finding. It returns nil and an exit
// status when the set does not compile.
func load(paths []string, stderr io.Writer) (*engine.Snapshot, engine.Diagnostics, int) {
	srcs, err := engine.ReadSources(paths...)
	if err != nil {
		fmt.Fprintf(stderr, "policyctl: %v\n", err)
		return nil, nil, ExitError
	}
	snap, diags := engine.Compile(srcs)
	for _, d := range diags {
		fmt.Fprintln(stderr, d)
	}
	if snap == nil {
		fmt.Fprintf(stderr, "policyctl: %d error(s); the policy set is not valid\n", len(diags.Errors()))
		return nil, diags, ExitError
	}
	return snap, diags, ExitOK
}

func validate(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("validate", stderr)
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	paths := fs.Args()
	if len(paths) == 0 {
		paths = []string{defaultDir}
	}
	snap, diags, code := load(paths, stderr)
	if snap == nil {
		return code
	}
	fmt.Fprintf(stdout, "ok: %d rules in %d policies (set %s)\n", len(snap.Rules()), len(snap.Policies), snap.Hash)
	if n := len(diags.Lints()); n > 0 {
		fmt.Fprintf(stderr, "policyctl: %d lint finding(s)\n", n)
		return ExitLint
	}
	return ExitOK
}

func test(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("test", stderr)
	policies := fs.String("policies", defaultDir, "policy directory or file")
	run := fs.String("run", "", "run only cases whose file/case name matches this regular expression")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	verbose := fs.Bool("v", false, "print the fired rules of every case")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	var filter *regexp.Regexp
	if *run != "" {
		re, err := regexp.Compile(*run)
		if err != nil {
			fmt.Fprintf(stderr, "policyctl: -run: %v\n", err)
			return exitUsage
		}
		filter = re
	}
	snap, _, code := load(strings.Split(*policies, ","), stderr)
	if snap == nil {
		return code
	}
	paths := fs.Args()
	if len(paths) == 0 {
		paths = []string{defaultTest}
	}
	files, err := policytest.LoadFiles(paths...)
	if err != nil {
		fmt.Fprintf(stderr, "policyctl: %v\n", err)
		return ExitError
	}
	rep, err := policytest.Run(snap, files, filter)
	if err != nil {
		fmt.Fprintf(stderr, "policyctl: %v\n", err)
		return ExitError
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			fmt.Fprintf(stderr, "policyctl: %v\n", err)
			return ExitError
		}
	} else {
		for _, r := range rep.Results {
			status := "PASS"
			if !r.Passed {
				status = "FAIL"
			}
			fmt.Fprintf(stdout, "--- %s: %s (%s)\n", status, r.Name(), r.Duration.Round(1000))
			if *verbose || !r.Passed {
				fmt.Fprintf(stdout, "    fired: %s\n", strings.Join(r.Fired, ", "))
			}
			for _, f := range r.Failures {
				fmt.Fprintf(stdout, "    %s:%d: %s\n", r.File, r.Line, f)
			}
		}
		if len(rep.Unfired) > 0 && filter == nil {
			fmt.Fprintf(stdout, "rules no case fired: %s\n", strings.Join(rep.Unfired, ", "))
		}
		if rep.Failed > 0 {
			fmt.Fprintln(stdout, "FAIL")
		} else {
			fmt.Fprintln(stdout, "PASS")
		}
		fmt.Fprintf(stdout, "%d passed, %d failed\n", rep.Passed, rep.Failed)
	}
	switch {
	case len(rep.Results) == 0:
		fmt.Fprintln(stderr, "policyctl: no test cases ran")
		return ExitError
	case rep.Failed > 0:
		return ExitFailed
	case len(rep.Unfired) > 0 && filter == nil:
		return ExitLint
	}
	return ExitOK
}

func vars(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("vars", stderr)
	stage := fs.String("stage", "", "list only the variables of this entry stage (pre_send, on_upstream_error, post_response)")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	switch *stage {
	case "", engine.StagePreSend, engine.StageOnUpstreamError, engine.StagePostResponse:
	default:
		fmt.Fprintf(stderr, "policyctl vars: unknown entry stage %q\n", *stage)
		return exitUsage
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tTYPE\tSTAGES\tMEANING")
	for _, v := range engine.Variables() {
		stages, _ := engine.VariableStages(v[0])
		if *stage != "" && stages != nil && !slices.Contains(stages, *stage) {
			continue
		}
		where := "all"
		if stages != nil {
			where = strings.Join(stages, ",")
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", v[0], v[1], where, v[2])
	}
	tw.Flush()
	return ExitOK
}

// errUsage marks a usage error already reported.
var errUsage = errors.New("usage")

func readFile(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return data, nil
}
