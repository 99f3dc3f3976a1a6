package responses

// Facts are the pairing facts of a request's input, derived once per request version.
// Every list keeps input order and holds each call id once.
type Facts struct {
	// Calls are the call ids of call items (function_call, custom_tool_call, local_shell_call).
	Calls []string
	// Outputs are the call ids of output items.
	Outputs []string
	// Unanswered are calls of the input without an output in the input.
	Unanswered []string
	// Orphans are outputs whose call is not in the input.
	Orphans []string
	// Duplicates are call ids answered more than once.
	Duplicates []string
	// Roles are the roles of message items, in order, repeated as they occur.
	Roles []string
	// Types are the item types, in order, repeated as they occur.
	Types []string
}

// Facts returns the pairing facts of the current input.
func (r *Request) Facts() *Facts {
	if r.facts != nil {
		return r.facts
	}
	f := &Facts{}
	n := len(r.items)
	f.Types = make([]string, 0, n)
	for i := range r.items {
		it := &r.items[i]
		f.Types = append(f.Types, it.Type)
		switch {
		case it.IsCall():
			if it.CallID != "" && !contains(f.Calls, it.CallID) {
				f.Calls = append(f.Calls, it.CallID)
			}
		case it.IsOutput():
			if contains(f.Outputs, it.CallID) {
				if !contains(f.Duplicates, it.CallID) {
					f.Duplicates = append(f.Duplicates, it.CallID)
				}
				continue
			}
			f.Outputs = append(f.Outputs, it.CallID)
		case it.Type == TypeMessage && it.Role != "":
			f.Roles = append(f.Roles, it.Role)
		}
	}
	for _, c := range f.Calls {
		if !contains(f.Outputs, c) {
			f.Unanswered = append(f.Unanswered, c)
		}
	}
	for _, o := range f.Outputs {
		if !contains(f.Calls, o) {
			f.Orphans = append(f.Orphans, o)
		}
	}
	r.facts = f
	return f
}

// CallType returns the type of the call item with the given call id in the input, or "".
func (r *Request) CallType(callID string) string {
	for i := range r.items {
		if r.items[i].IsCall() && r.items[i].CallID == callID {
			return r.items[i].Type
		}
	}
	return ""
}

// CallIndex returns the index of the call item with the given call id, or -1.
func (r *Request) CallIndex(callID string) int {
	for i := range r.items {
		if r.items[i].IsCall() && r.items[i].CallID == callID {
			return i
		}
	}
	return -1
}

// FirstNewItem returns the index of the first item that is not a tool output, which is where
// outputs for calls outside the input belong (SPEC §4), or len(items) when there is none.
func (r *Request) FirstNewItem() int {
	for i := range r.items {
		if !r.items[i].IsOutput() {
			return i
		}
	}
	return len(r.items)
}

// contains is a linear search: inputs hold tens of calls, where a map costs more than it saves.
func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
