package engine

import "regexp"

// Stage names the gateway evaluates. Other stage names are sub-stages that rules enter with
// the run_stage action.
const (
	StagePreSend         = "pre_send"
	StageOnUpstreamError = "on_upstream_error"
	StagePostResponse    = "post_response"
)

// Control values of a rule's then field.
const (
	ThenContinue = "continue"
	ThenStop     = "stop"
)

// Source is one policy file's name and bytes.
type Source struct {
	Name string
	Data []byte
}

// Expr is a CEL expression with the position of its first character in the policy file.
type Expr struct {
	Text string
	Pos  Pos
	// lineBase and colBase map CEL's expression-relative locations back into the file.
	lineBase, colBase int
	// block is true for YAML block scalars, whose lines keep their own indentation.
	block bool
	// srcMap gives the file position of each rune of Text, for flow scalars (plain and
	// quoted), whose folding and escapes move characters away from where CEL counts them.
	srcMap []Pos
}

// Limits are the CEL cost limits a policy file declares.
type Limits struct {
	// ExpressionCost caps one expression, both its static estimate and its runtime cost.
	ExpressionCost uint64
	// TurnCost caps the runtime cost of all expressions evaluated for one stage of one turn.
	TurnCost uint64
}

// Reason documents a reason label.
type Reason struct {
	Name        string
	Description string
	Pos         Pos
}

// Policy is one parsed policy file.
type Policy struct {
	Name        string
	Description string
	File        string
	Limits      Limits
	Reasons     []Reason
	Rules       []*Rule
	Pos         Pos
}

// Rule is one ordered rule.
type Rule struct {
	ID          string
	Description string
	Stage       string
	Group       string
	When        Expr
	Actions     []*Action
	Reason      string
	Then        string
	Shadow      bool
	Pos         Pos
	stagePos    Pos
	reasonPos   Pos
}

// Action is one typed action of a rule. Args holds the action's CEL arguments by name;
// Word holds a literal argument (the stage of run_stage, the placement of insert_outputs).
type Action struct {
	Kind ActionKind
	If   *Expr
	Args map[string]Expr
	Word string
	Pos  Pos
}

var (
	idPattern    = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]*$`)
	stagePattern = regexp.MustCompile(`^[a-z][a-z0-9_]*$`)
	reasonPatten = regexp.MustCompile(`^[a-z][a-z0-9_]*$`)
)

// maxPolicyBytes bounds one policy file; a larger one is refused before it is parsed.
const maxPolicyBytes = 1 << 20

// maxPolicyFiles bounds the files of one policy set: a directory filled by mistake (or on
// purpose) must not make every reload read and compile without end.
const maxPolicyFiles = 256
