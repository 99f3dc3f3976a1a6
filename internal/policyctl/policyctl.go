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
	"slices"
	"strings"
	"text/tabwriter"

	"chainmend/engine"
)

// Exit codes, after promtool and opa. Every command uses the same four.
const (
	// ExitOK: the command did what was asked and found nothing.
	ExitOK = 0
	// ExitError: the policies do not compile, a fixture or an argument is wrong, a file is
	// missing, or a test run found no case to run.
	ExitError = 1
	// ExitFailed: a test case failed, or a replayed decision log has turns that would change.
	ExitFailed = 2
	// ExitLint: lint findings (validate), or rules of the policy files under test that no
	// case fired (test --coverage).
	ExitLint = 3

	exitUsage   = ExitError
	defaultDir  = "policies"
	defaultTest = "policytests"
)

const exitCodes = `Exit status:
  0  ok
  1  errors: the policies do not compile, a fixture or an argument is wrong, no case ran
  2  a test case failed; replay: a logged turn would change
  3  lint findings (validate), rules of the files under test no case fired (test --coverage)
`

const usage = `policyctl checks chainmend policies: ordered CEL rules in YAML.

Usage:
  policyctl validate [-o text|json] [DIR|FILE…]
  policyctl test [--policies DIR] [-run RE] [-o text|json|junit] [--coverage] [--watch] [DIR|FILE…]
  policyctl explain --request FILE [--state FILE] [--policies DIR] [--stage S] [--enforce RULE,…]
  policyctl vars [--stage S] [-o text|json|markdown]
  policyctl replay --decisions FILE[,FILE…] [--policies DIR] [--enforce RULE,…] [-o text|json]
  policyctl help COMMAND

Commands:
  validate   compile and lint a policy set (default: policies)
  test       run fixtures against a policy set (default: policytests)
  explain    evaluate one turn and show every rule, its when and what it changed
  vars       list the turn context's variables
  replay     re-evaluate a gateway's decision log against a policy set: what would change

Run 'policyctl COMMAND --help' for a command's flags and examples. The language and the
fixture format: docs/policies.md.

` + exitCodes

// command is one subcommand: its help and its body.
type command struct {
	name     string
	synopsis string
	about    string
	examples string
	// setup declares the command's flags on fs and returns its body, which runs once
	// they are parsed with the remaining arguments.
	setup func(fs *flag.FlagSet) func(args []string, stdout, stderr io.Writer) int
}

var commands = []command{validateCmd, testCmd, explainCmd, varsCmd, replayCmd}

func lookup(name string) (command, bool) {
	i := slices.IndexFunc(commands, func(c command) bool { return c.name == name })
	if i < 0 {
		return command{}, false
	}
	return commands[i], true
}

// Main runs policyctl with args (without the program name) and returns the exit status.
func Main(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	switch args[0] {
	case "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return ExitOK
	case "help":
		if len(args) == 1 {
			fmt.Fprint(stdout, usage)
			return ExitOK
		}
		c, ok := lookup(args[1])
		if !ok {
			fmt.Fprintf(stderr, "policyctl help: unknown command %q (commands: validate, test, explain, vars, replay)\n", args[1])
			return exitUsage
		}
		printHelp(stdout, c)
		return ExitOK
	}
	c, ok := lookup(args[0])
	if !ok {
		fmt.Fprintf(stderr, "policyctl: unknown command %q%s\n\n%s", args[0], didYouMean(args[0], []string{"validate", "test", "explain", "vars", "replay"}), usage)
		return exitUsage
	}
	return runCommand(c, args[1:], stdout, stderr)
}

// runCommand parses a command's flags. Help goes to stdout with status 0; a flag error to
// stderr with the command's usage line and status 1.
func runCommand(c command, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("policyctl "+c.name, flag.ContinueOnError)
	// The flag package prints errors and usage itself; this prints them where they belong.
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	body := c.setup(fs)
	// Flags may follow the paths (policyctl validate policies/ -o json): parse, set the
	// next positional argument aside, parse again. Everything after "--" is positional.
	var rest, after []string
	if i := slices.Index(args, "--"); i >= 0 {
		args, after = args[:i], args[i+1:]
	}
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				printHelp(stdout, c)
				return ExitOK
			}
			fmt.Fprintf(stderr, "policyctl %s: %v\nusage: %s\nRun 'policyctl %s --help' for more.\n", c.name, err, c.synopsis, c.name)
			return exitUsage
		}
		if fs.NArg() == 0 {
			break
		}
		rest = append(rest, fs.Arg(0))
		args = fs.Args()[1:]
	}
	return body(append(rest, after...), stdout, stderr)
}

func printHelp(w io.Writer, c command) {
	fmt.Fprintf(w, "usage: %s\n\n%s\n\nFlags:\n", c.synopsis, strings.TrimSpace(c.about))
	fs := flag.NewFlagSet(c.name, flag.ContinueOnError)
	c.setup(fs)
	fs.SetOutput(w)
	fs.PrintDefaults()
	fmt.Fprintf(w, "\nExamples:\n%s\n%s", strings.TrimRight(c.examples, "\n"), "\n"+exitCodes)
}

// load compiles the policies at paths. Unless quiet, it prints every finding to stderr. It
// returns nil and an exit status when the set does not compile.
func load(paths []string, stderr io.Writer, quiet bool) (*engine.Snapshot, engine.Diagnostics, int) {
	srcs, err := engine.ReadSources(paths...)
	if err != nil {
		fmt.Fprintf(stderr, "policyctl: %v\n", err)
		return nil, nil, ExitError
	}
	snap, diags := engine.Compile(srcs)
	if !quiet {
		for _, d := range diags {
			fmt.Fprintln(stderr, d)
		}
	}
	if snap == nil {
		if !quiet {
			fmt.Fprintf(stderr, "policyctl: %d error(s); the policy set is not valid\n", len(diags.Errors()))
		}
		return nil, diags, ExitError
	}
	return snap, diags, ExitOK
}

// outputFlag declares -o with its allowed formats.
func outputFlag(fs *flag.FlagSet, formats ...string) *string {
	return fs.String("o", formats[0], "output format: "+strings.Join(formats, ", "))
}

func checkFormat(got string, formats ...string) error {
	if !slices.Contains(formats, got) {
		return fmt.Errorf("-o %q: want one of %s", got, strings.Join(formats, ", "))
	}
	return nil
}

var validateCmd = command{
	name:     "validate",
	synopsis: "policyctl validate [-o text|json] [DIR|FILE…]",
	about: `Compiles a policy set the way the gateway does (parse, type-check every expression
against its stage's variables, estimate costs) and lints it (duplicate ids, rules that
can never fire, undeclared or unused reasons). Files of a directory are read in name order
(*.yaml, *.yml; hidden files skipped) and run as one list. Every finding is printed as
file:line:col: message.`,
	examples: `  policyctl validate                       # the default directory, policies/
  policyctl validate my-policies/ extra.yaml
  policyctl validate -o json policies/ | jq '.diagnostics[]'`,
	setup: func(fs *flag.FlagSet) func([]string, io.Writer, io.Writer) int {
		format := outputFlag(fs, "text", "json")
		return func(args []string, stdout, stderr io.Writer) int {
			if err := checkFormat(*format, "text", "json"); err != nil {
				fmt.Fprintf(stderr, "policyctl validate: %v\n", err)
				return exitUsage
			}
			return validate(args, *format, stdout, stderr)
		}
	},
}

// validateReport is the JSON of `validate -o json`.
type validateReport struct {
	Valid       bool               `json:"valid"`
	Set         string             `json:"set,omitempty"`
	Policies    int                `json:"policies"`
	Rules       int                `json:"rules"`
	Errors      int                `json:"errors"`
	Lints       int                `json:"lints"`
	Diagnostics engine.Diagnostics `json:"diagnostics"`
	// Error is a failure to read the files, which has no position.
	Error string `json:"error,omitempty"`
	Exit  int    `json:"exit"`
}

func validate(paths []string, format string, stdout, stderr io.Writer) int {
	if len(paths) == 0 {
		paths = []string{defaultDir}
	}
	if format == "text" {
		snap, diags, code := load(paths, stderr, false)
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
	rep := validateReport{Diagnostics: engine.Diagnostics{}}
	srcs, err := engine.ReadSources(paths...)
	if err != nil {
		rep.Error, rep.Exit = err.Error(), ExitError
	} else {
		snap, diags := engine.Compile(srcs)
		rep.Diagnostics = append(rep.Diagnostics, diags...)
		rep.Errors, rep.Lints = len(diags.Errors()), len(diags.Lints())
		switch {
		case snap == nil:
			rep.Exit = ExitError
		default:
			rep.Valid, rep.Set, rep.Policies, rep.Rules = true, snap.Hash, len(snap.Policies), len(snap.Rules())
			if rep.Lints > 0 {
				rep.Exit = ExitLint
			}
		}
	}
	if err := writeJSON(stdout, rep); err != nil {
		fmt.Fprintf(stderr, "policyctl: %v\n", err)
		return ExitError
	}
	return rep.Exit
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

var varsCmd = command{
	name:     "vars",
	synopsis: "policyctl vars [--stage S] [-o text|json|markdown]",
	about: `Lists the turn context: every variable a when or an action argument can read, its CEL
type, the entry stages where it exists ("all" for every stage) and its meaning. A sub-stage
sees the variables common to the entry stages that enter it.`,
	examples: `  policyctl vars
  policyctl vars --stage on_upstream_error      # error.* and recovery.* exist only here
  policyctl vars -o markdown                    # the table of docs/policies.md`,
	setup: func(fs *flag.FlagSet) func([]string, io.Writer, io.Writer) int {
		stage := fs.String("stage", "", "list only the variables of this entry stage (pre_send, on_upstream_error, post_response)")
		format := outputFlag(fs, "text", "json", "markdown")
		return func(args []string, stdout, stderr io.Writer) int {
			if err := checkFormat(*format, "text", "json", "markdown"); err != nil {
				fmt.Fprintf(stderr, "policyctl vars: %v\n", err)
				return exitUsage
			}
			if len(args) > 0 {
				fmt.Fprintf(stderr, "policyctl vars: unexpected argument %q\n", args[0])
				return exitUsage
			}
			return vars(*stage, *format, stdout, stderr)
		}
	},
}

// Variable is one variable of the turn context as vars -o json prints it.
type Variable struct {
	Name string `json:"name"`
	Type string `json:"type"`
	// Stages are the entry stages where it exists; empty means every stage.
	Stages  []string `json:"stages"`
	Meaning string   `json:"meaning"`
}

// Variables lists the engine's turn context, filtered to one entry stage unless stage is "".
func Variables(stage string) []Variable {
	var out []Variable
	for _, v := range engine.Variables() {
		stages, _ := engine.VariableStages(v[0])
		if stage != "" && stages != nil && !slices.Contains(stages, stage) {
			continue
		}
		if stages == nil {
			stages = []string{}
		}
		out = append(out, Variable{Name: v[0], Type: v[1], Stages: stages, Meaning: v[2]})
	}
	return out
}

// VariablesMarkdown is the variable table of docs/policies.md, generated so that the
// reference cannot drift from the engine.
func VariablesMarkdown() string {
	var b strings.Builder
	b.WriteString("| variable | type | stages | meaning |\n|---|---|---|---|\n")
	for _, v := range Variables("") {
		where := "all"
		if len(v.Stages) > 0 {
			where = strings.Join(v.Stages, ", ")
		}
		fmt.Fprintf(&b, "| `%s` | `%s` | %s | %s |\n", v.Name, v.Type, where, strings.ReplaceAll(v.Meaning, "|", `\|`))
	}
	return b.String()
}

func vars(stage, format string, stdout, stderr io.Writer) int {
	switch stage {
	case "", engine.StagePreSend, engine.StageOnUpstreamError, engine.StagePostResponse:
	default:
		fmt.Fprintf(stderr, "policyctl vars: unknown entry stage %q%s (entry stages: %s, %s, %s; a sub-stage sees what its entry stages share)\n",
			stage, didYouMean(stage, []string{engine.StagePreSend, engine.StageOnUpstreamError, engine.StagePostResponse}),
			engine.StagePreSend, engine.StageOnUpstreamError, engine.StagePostResponse)
		return exitUsage
	}
	switch format {
	case "json":
		if err := writeJSON(stdout, Variables(stage)); err != nil {
			fmt.Fprintf(stderr, "policyctl: %v\n", err)
			return ExitError
		}
		return ExitOK
	case "markdown":
		if stage != "" {
			fmt.Fprintln(stderr, "policyctl vars: -o markdown prints the whole table; drop --stage")
			return exitUsage
		}
		fmt.Fprint(stdout, VariablesMarkdown())
		return ExitOK
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tTYPE\tSTAGES\tMEANING")
	for _, v := range Variables(stage) {
		where := "all"
		if len(v.Stages) > 0 {
			where = strings.Join(v.Stages, ",")
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", v.Name, v.Type, where, v.Meaning)
	}
	tw.Flush()
	return ExitOK
}

// didYouMean returns " (did you mean X?)" for the closest candidate within a small edit
// distance, else "".
func didYouMean(got string, candidates []string) string {
	if s := engine.Suggest(got, candidates); s != "" {
		return fmt.Sprintf(" (did you mean %s?)", s)
	}
	return ""
}

func readFile(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return data, nil
}
