// Package decisionlog is the gateway's decision log: one JSON line per turn with the facts
// its policies saw at each stage and what they decided, written off the turn's path to a
// size-rotated file (Writer) and read back (Read, ReadFiles) by policyctl replay, which
// re-evaluates every logged stage against another policy set.
//
// A record holds facts, never content: ids, item kinds and keys, call ids, roles, the
// top-level scalar fields that carry no text, pending calls, the anchor, the lane, what the
// upstream connection held, the replay transcript's state, the upstream error and the
// response's structure (engine.TurnFacts), plus the policy set's hash, the rules that fired,
// the verdict, the effects and the request's structure after the stage. Message text, tool
// output, call arguments, encrypted content and credentials are not in it.
package decisionlog

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"chainmend/engine"
)

// Version is the record format's version. Readers refuse records of a later version.
const Version = 1

// Record is one turn: who it was, the policy set, and each stage it went through.
type Record struct {
	// V is the format's Version.
	V    int       `json:"v"`
	Time time.Time `json:"time"`
	// ID names the turn: the client connection, the lane when it is not the default one,
	// and the turn's number on that lane ("conn#3", "conn/lane#3").
	ID        string `json:"id"`
	Transport string `json:"transport"`
	// Tenant is the hash the gateway scopes state by, never a credential.
	Tenant        string `json:"tenant"`
	Session       string `json:"session"`
	Lane          string `json:"lane,omitempty"`
	Conn          string `json:"conn"`
	Number        int    `json:"number"`
	ServerStarted bool   `json:"server_started,omitempty"`
	// PolicySet is the hash of the policy set every stage of the turn was evaluated against.
	PolicySet string `json:"policy_set"`
	// Store is the state store's tier ("local", "redis").
	Store string `json:"store,omitempty"`
	// Outcome is the turn's outcome label (completed, rejected, error_forwarded, …).
	Outcome string  `json:"outcome"`
	Millis  float64 `json:"ms"`
	// Previous are the previous turn's facts, the same for every stage of the turn; the
	// stages' inputs leave them out (Input restores them).
	Previous *engine.PreviousFacts `json:"previous,omitempty"`
	Stages   []Stage               `json:"stages"`
}

// Stage is one stage evaluation: the facts it began with and what it decided.
type Stage struct {
	Stage string           `json:"stage"`
	Input engine.TurnFacts `json:"input"`
	// Inferred names the input facts that no stage of the turn showed and that the
	// gateway's memory of the lane supplied ("session.anchor", "pending", "upstream.cached");
	// a replay of the stage is as good as that memory.
	Inferred []string `json:"inferred,omitempty"`
	// Unknown names the input facts nobody knew; the replay evaluates them as empty.
	Unknown []string            `json:"unknown,omitempty"`
	Verdict string              `json:"verdict"`
	Reject  *Reject             `json:"reject,omitempty"`
	Fired   []engine.Fired      `json:"fired,omitempty"`
	Effects engine.EffectsFacts `json:"effects"`
	// After is the request's structure as the stage left it, when the stage changed it.
	After *engine.RequestFacts `json:"after,omitempty"`
	// Error is set when evaluation stopped early (the turn's cost limit).
	Error  string `json:"error,omitempty"`
	Micros int64  `json:"us"`
}

// Reject is a reject verdict's error, without its message (a rule may build the message
// from anything it reads).
type Reject struct {
	Status int    `json:"status"`
	Type   string `json:"type,omitempty"`
	Code   string `json:"code,omitempty"`
	Param  string `json:"param,omitempty"`
}

// RejectOf returns r's loggable part; nil for nil.
func RejectOf(r *engine.Rejection) *Reject {
	if r == nil {
		return nil
	}
	return &Reject{Status: r.Status, Type: r.Type, Code: r.Code, Param: r.Param}
}

// Input returns the facts stage i began with, the record's previous-turn facts included.
func (r *Record) Input(i int) engine.TurnFacts {
	f := r.Stages[i].Input
	if f.Previous == nil {
		f.Previous = r.Previous
	}
	return f
}

// ErrVersion is wrapped by Read errors for records of a later format version.
var ErrVersion = errors.New("record of a later format version")

// Read reads records from r, one JSON object per line, and hands each to fn with its line
// number; blank lines are skipped. It stops at the first error, fn's included.
func Read(r io.Reader, fn func(line int, rec *Record) error) error {
	br := bufio.NewReaderSize(r, 64<<10)
	for line := 1; ; line++ {
		// ReadBytes, not a Scanner: a record with a long previous-turn key list can exceed
		// any fixed line limit.
		b, err := br.ReadBytes('\n')
		if len(bytes.TrimSpace(b)) > 0 {
			var rec Record
			if jerr := json.Unmarshal(b, &rec); jerr != nil {
				return fmt.Errorf("line %d: %w", line, jerr)
			}
			if rec.V > Version {
				return fmt.Errorf("line %d: version %d: %w", line, rec.V, ErrVersion)
			}
			if ferr := fn(line, &rec); ferr != nil {
				return ferr
			}
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("line %d: %w", line, err)
		}
	}
}

// ReadFiles reads the records of every file in order; errors name the file and the line.
func ReadFiles(paths []string, fn func(path string, line int, rec *Record) error) error {
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			return fmt.Errorf("decision log: %w", err)
		}
		err = Read(f, func(line int, rec *Record) error { return fn(p, line, rec) })
		_ = f.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
	}
	return nil
}
