package engine

// TranscriptOp is what the gateway does with the session's replay transcript after a stage.
type TranscriptOp uint8

// Transcript operations; the last action of a stage wins.
const (
	// TranscriptKeep leaves the transcript as it is.
	TranscriptKeep TranscriptOp = iota
	// TranscriptAppend appends this turn's input as sent and the response's output items.
	TranscriptAppend
	// TranscriptReset replaces the transcript with this turn's input as sent and the
	// response's output items.
	TranscriptReset
	// TranscriptClear deletes the transcript.
	TranscriptClear
)

// String returns the operation's name as fixtures write it.
func (op TranscriptOp) String() string {
	switch op {
	case TranscriptKeep:
		return "keep"
	case TranscriptAppend:
		return "append"
	case TranscriptReset:
		return "reset"
	case TranscriptClear:
		return "clear"
	}
	return "unknown"
}

// PendingPut records the unanswered calls of a response.
type PendingPut struct {
	ResponseID string
	// Calls may be empty: the response is then known to leave nothing pending.
	Calls []PendingCall
}

// Effects are the state changes the actions of a stage asked for. The gateway applies them
// after the stage; the engine itself only updates the Turn so that later rules see them.
type Effects struct {
	// Anchor is the new session anchor ("" clears it); nil leaves it. Last write wins.
	Anchor *string
	// PutPending records a response's pending calls (record_pending).
	PutPending *PendingPut
	// DeletePending lists response ids whose pending entries go away, without duplicates.
	DeletePending []string
	// Transcript is what happens to the replay transcript. Last write wins.
	Transcript TranscriptOp
	// UpstreamCached is what the upstream connection now holds ("" nothing); nil leaves it.
	UpstreamCached *string
}
