package responses

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseReadsWhatRulesNeed(t *testing.T) {
	raw := []byte(`{"type":"response.create","model":"gpt-5","store":false,"generate":false,
	 "previous_response_id":"resp_1","x_unknown":{"deep":[1,2,{"a":null}]},
	 "input":[
	  {"type":"message","id":"msg_1","role":"developer","content":[{"type":"input_text","text":"be brief"}]},
	  {"type":"reasoning","id":"rs_1","encrypted_content":"gAAAA\u00e9\\\"x","summary":[]},
	  {"type":"function_call","id":"fc_1","call_id":"call_A","name":"exec","arguments":"{}"},
	  {"type":"custom_tool_call","call_id":"call_B","name":"apply_patch","input":"*** Begin"},
	  {"type":"local_shell_call","call_id":"call_C","action":{}},
	  {"type":"function_call_output","call_id":"call_A","output":"ok"},
	  {"type":"function_call_output","call_id":"call_Z","output":"orphan"},
	  {"type":"function_call_output","call_id":"call_A","output":"twice"},
	  {"role":"user","content":"easy message"},
	  {"type":"future_item_kind","call_id":"call_F"},
	  "not an object"
	 ]}`)
	r, err := Parse(raw)
	require.NoError(t, err)
	assert.Equal(t, "response.create", r.Type())
	assert.Equal(t, "resp_1", r.PreviousResponseID())
	assert.True(t, r.StoreDisabled())
	assert.False(t, r.Generate())
	require.Len(t, r.Items(), 11)
	assert.Equal(t, TypeReasoning, r.Items()[1].Type)
	assert.True(t, r.Items()[1].EncryptedContent)
	assert.Equal(t, TypeMessage, r.Items()[8].Type, "an easy input message is a message")
	assert.Equal(t, "", r.Items()[10].Type)
	f := r.Facts()
	assert.Equal(t, []string{"call_A", "call_B", "call_C"}, f.Calls)
	assert.Equal(t, []string{"call_A", "call_Z"}, f.Outputs)
	assert.Equal(t, []string{"call_B", "call_C"}, f.Unanswered)
	assert.Equal(t, []string{"call_Z"}, f.Orphans)
	assert.Equal(t, []string{"call_A"}, f.Duplicates)
	assert.Equal(t, []string{"developer", "user"}, f.Roles)
	assert.Equal(t, string(raw), string(r.Bytes()), "an unmodified request is its bytes")
}

func TestParseRejectsBadInput(t *testing.T) {
	cases := map[string]string{
		"empty":            ``,
		"not an object":    `[1,2]`,
		"string":           `"response.create"`,
		"truncated":        `{"type":"response.create","input":[{"type":"message"`,
		"trailing garbage": `{"type":"x"} {}`,
		"bad escape":       `{"type":"\q"}`,
		"control char":     "{\"type\":\"a\x01b\"}",
		"bad number":       `{"n":01}`,
		"missing colon":    `{"type" "x"}`,
		"trailing comma":   `{"type":"x",}`,
		"bad literal":      `{"store":fals}`,
		"deep nesting":     `{"a":` + strings.Repeat("[", 1000) + strings.Repeat("]", 1000) + `}`,
		"unterminated str": `{"type":"x`,
	}
	for name, in := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := Parse([]byte(in))
			require.Error(t, err)
			assert.False(t, json.Valid([]byte(in)) && in != "" && in[0] == '{' && name != "deep nesting",
				"the standard library accepts %q, so must we", in)
		})
	}
	_, err := Parse([]byte(`[1]`))
	assert.True(t, errors.Is(err, ErrNotObject))
}

func TestMutationsPatchBytes(t *testing.T) {
	raw := `{"type":"response.create",  "previous_response_id" : "resp_old", "z":{"keep":  "as is"},` +
		`"previous_response_id":"resp_dup","input":[ {"type":"function_call_output","call_id":"call_A","output":"x"} ,` +
		` {"type":"message","role":"user","content":"hi"}],"tail":[1, 2]}`
	t.Run("drop removes every duplicate", func(t *testing.T) {
		r, err := Parse([]byte(raw))
		require.NoError(t, err)
		assert.Equal(t, "resp_dup", r.PreviousResponseID(), "the last duplicate wins, as in a JSON decoder")
		require.True(t, r.Delete("previous_response_id"))
		out := string(r.Bytes())
		assert.NotContains(t, out, "previous_response_id")
		assert.Contains(t, out, `"z":{"keep":  "as is"}`, "untouched members keep their bytes")
		assert.Contains(t, out, `"tail":[1, 2]`)
		assert.True(t, json.Valid([]byte(out)), out)
	})
	t.Run("set collapses duplicates", func(t *testing.T) {
		r, _ := Parse([]byte(raw))
		r.SetString("previous_response_id", "resp_new")
		out := string(r.Bytes())
		assert.Equal(t, 1, strings.Count(out, "previous_response_id"))
		r2, err := Parse([]byte(out))
		require.NoError(t, err)
		assert.Equal(t, "resp_new", r2.PreviousResponseID())
	})
	t.Run("insert and remove items keep item bytes", func(t *testing.T) {
		r, _ := Parse([]byte(raw))
		r.InsertItems(r.FirstNewItem(), NewOutputItem(TypeCustomToolCall, "call_B", "aborted"))
		n := r.RemoveItems(func(it *Item) bool { return it.CallID == "call_A" })
		assert.Equal(t, 1, n)
		out := r.Bytes()
		require.True(t, json.Valid(out), string(out))
		r2, err := Parse(out)
		require.NoError(t, err)
		require.Len(t, r2.Items(), 2)
		assert.Equal(t, TypeCustomToolCallOutput, r2.Items()[0].Type)
		assert.Equal(t, `{"type":"message","role":"user","content":"hi"}`, string(r2.Items()[1].Raw))
		assert.Contains(t, string(out), `"z":{"keep":  "as is"}`)
	})
	t.Run("set adds a missing field", func(t *testing.T) {
		r, _ := Parse([]byte(`{"type":"response.create"}`))
		r.SetString("previous_response_id", "resp_\"q\"\n")
		var m map[string]any
		require.NoError(t, json.Unmarshal(r.Bytes(), &m))
		assert.Equal(t, "resp_\"q\"\n", m["previous_response_id"])
	})
	t.Run("insert into a request without input creates it", func(t *testing.T) {
		r, _ := Parse([]byte(`{"type":"response.create"}`))
		r.InsertItems(0, NewOutputItem(TypeLocalShellCall, "call_L", "aborted"))
		var m map[string]any
		require.NoError(t, json.Unmarshal(r.Bytes(), &m))
		item := m["input"].([]any)[0].(map[string]any)
		assert.Equal(t, TypeFunctionCallOutput, item["type"], "local shell calls are answered with function_call_output")
	})
	t.Run("replace input", func(t *testing.T) {
		r, _ := Parse([]byte(raw))
		it, err := ParseItem([]byte(`{"type":"message","role":"user","content":"replayed"}`))
		require.NoError(t, err)
		r.ReplaceInput([]Item{it})
		r2, err := Parse(r.Bytes())
		require.NoError(t, err)
		require.Len(t, r2.Items(), 1)
		assert.Equal(t, TypeMessage, r2.Items()[0].Type)
	})
	t.Run("clone is independent", func(t *testing.T) {
		r, _ := Parse([]byte(raw))
		c := r.Clone()
		c.Delete("previous_response_id")
		assert.Equal(t, "resp_dup", r.PreviousResponseID())
		assert.Equal(t, raw, string(r.Bytes()))
	})
}

func TestCodexCaptures(t *testing.T) {
	dir := filepath.Join("..", "..", "shared", "codex-captures")
	paths, _ := filepath.Glob(filepath.Join(dir, "codex-0.169.0-*create*.json"))
	if len(paths) == 0 {
		paths, _ = filepath.Glob(filepath.Join("..", "testdata", "codex", "codex-0.169.0-*create*.json"))
	}
	require.NotEmpty(t, paths, "no Codex captures found")
	for _, p := range paths {
		t.Run(filepath.Base(p), func(t *testing.T) {
			data, err := os.ReadFile(p)
			require.NoError(t, err)
			var capture struct {
				Frame json.RawMessage `json:"frame"`
				Body  json.RawMessage `json:"body"`
			}
			require.NoError(t, json.Unmarshal(data, &capture))
			frame := capture.Frame
			if frame == nil {
				frame = capture.Body
			}
			require.NotNil(t, frame)
			r, err := Parse(frame)
			require.NoError(t, err)
			assert.Equal(t, string(frame), string(r.Bytes()))
			f := r.Facts()
			assert.Empty(t, f.Unanswered, "Codex answers every call in a full create")
			assert.Empty(t, f.Duplicates)
			for _, it := range r.Items() {
				assert.NotEmpty(t, it.Type)
				if it.Type == TypeReasoning {
					assert.True(t, it.EncryptedContent, "Codex echoes encrypted reasoning")
				}
			}
		})
	}
}
