package settings

import (
	"flag"
	"fmt"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"chainmend/gateway"
	"chainmend/internal/decisionlog"
)

// DecisionLog holds the decision log's settings: off by default (no hook, no cost), on with
// --decision-log FILE.
type DecisionLog struct {
	// DecisionLogPath is the JSONL file of one record per turn; empty: no decision log.
	DecisionLogPath string
	// DecisionLogMaxBytes is the size at which the file is rotated.
	DecisionLogMaxBytes int64
	// DecisionLogKeep is how many rotated files are kept.
	DecisionLogKeep int

	// writer is the log NewGateway opened, for CloseDecisionLog.
	writer *decisionlog.Writer
}

// decisionLogFlags defines the decision log's flags.
func (dl *DecisionLog) decisionLogFlags(fs *flag.FlagSet) {
	if dl.DecisionLogMaxBytes == 0 {
		dl.DecisionLogMaxBytes = decisionlog.DefaultMaxBytes
	}
	if dl.DecisionLogKeep == 0 {
		dl.DecisionLogKeep = decisionlog.DefaultKeep
	}
	fs.StringVar(&dl.DecisionLogPath, "decision-log", dl.DecisionLogPath, "append a decision record per turn (the facts each stage saw, never content; what the rules decided) "+
		"to this JSONL file, for policyctl replay (empty: off)")
	fs.Int64Var(&dl.DecisionLogMaxBytes, "decision-log-max-bytes", dl.DecisionLogMaxBytes, "rotate the decision log at this size (FILE becomes FILE.1, …)")
	fs.IntVar(&dl.DecisionLogKeep, "decision-log-keep", dl.DecisionLogKeep, "rotated decision log files kept")
}

// openDecisionLog opens the decision log when it is on and returns the gateway option that
// installs its hook; off, it returns none.
func (dl *DecisionLog) openDecisionLog(log *slog.Logger, reg prometheus.Registerer) ([]gateway.Option, error) {
	if dl.DecisionLogPath == "" {
		return nil, nil
	}
	w, err := decisionlog.Open(dl.DecisionLogPath, decisionlog.WithMaxBytes(dl.DecisionLogMaxBytes),
		decisionlog.WithKeep(dl.DecisionLogKeep), decisionlog.WithLogger(log))
	if err != nil {
		return nil, err
	}
	hook, err := gateway.NewDecisionLog(w, gateway.WithDecisionRegisterer(reg))
	if err != nil {
		_ = w.Close()
		return nil, fmt.Errorf("decision log: %w", err)
	}
	dl.writer = w
	log.Info("decision log on", "file", dl.DecisionLogPath, "max_bytes", dl.DecisionLogMaxBytes, "keep", dl.DecisionLogKeep)
	return []gateway.Option{gateway.WithTurnHook(hook)}, nil
}

// CloseDecisionLog writes the records still queued and closes the file; a no-op when the
// decision log is off. Call it after the server's shutdown, when no turn is left to log.
func (dl *DecisionLog) CloseDecisionLog() error {
	if dl.writer == nil {
		return nil
	}
	return dl.writer.Close()
}
