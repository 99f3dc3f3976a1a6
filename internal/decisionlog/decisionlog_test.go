package decisionlog

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"chainmend/engine"
)

// record is a record numbered n of size bytes once encoded with its newline (at least its
// bare size).
func record(n, size int) *Record {
	r := &Record{V: Version, Time: time.Unix(1700000000, 0).UTC(), ID: fmt.Sprintf("c#%d", n), Conn: "c", Number: n,
		PolicySet: "abc", Outcome: "completed"}
	data, _ := json.Marshal(r)
	if pad := size - len(data) - 1; pad > 0 {
		r.Session = strings.Repeat("s", pad)
	}
	return r
}

// linesOf returns the ids of the records in a file.
func linesOf(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	var ids []string
	require.NoError(t, Read(f, func(_ int, r *Record) error {
		ids = append(ids, r.ID)
		return nil
	}))
	return ids
}

// TestRotation: the file rotates before a record would take it past the limit, rotated
// files shift up and only the kept ones stay.
func TestRotation(t *testing.T) {
	tests := []struct {
		name      string
		maxBytes  int64
		keep      int
		records   int
		wantFiles map[string][]string
	}{
		{"no rotation under the limit", 1000, 2, 3, map[string][]string{"d.jsonl": {"c#0", "c#1", "c#2"}}},
		{"two records a file, keep two", 450, 2, 7, map[string][]string{
			"d.jsonl": {"c#6"}, "d.jsonl.1": {"c#4", "c#5"}, "d.jsonl.2": {"c#2", "c#3"}}},
		{"keep one", 450, 1, 5, map[string][]string{"d.jsonl": {"c#4"}, "d.jsonl.1": {"c#2", "c#3"}}},
		{"keep none", 450, 0, 5, map[string][]string{"d.jsonl": {"c#4"}}},
		{"a record over the limit gets a file of its own", 100, 1, 2, map[string][]string{"d.jsonl": {"c#1"}, "d.jsonl.1": {"c#0"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "d.jsonl")
			w, err := Open(path, WithMaxBytes(tc.maxBytes), WithKeep(tc.keep))
			require.NoError(t, err)
			for i := range tc.records {
				// One at a time, so that a full queue cannot drop any.
				require.True(t, w.Write(record(i, 200)))
				require.Eventually(t, func() bool { return w.Stats().Written == uint64(i+1) }, 5*time.Second, time.Millisecond)
			}
			require.NoError(t, w.Close())
			entries, err := os.ReadDir(dir)
			require.NoError(t, err)
			got := map[string][]string{}
			for _, e := range entries {
				got[e.Name()] = linesOf(t, filepath.Join(dir, e.Name()))
			}
			assert.Equal(t, tc.wantFiles, got)
			assert.Equal(t, Stats{Written: uint64(tc.records)}, w.Stats())
		})
	}
}

// TestAppendsAcrossOpens: a reopened log continues the file and counts its size.
func TestAppendsAcrossOpens(t *testing.T) {
	path := filepath.Join(t.TempDir(), "d.jsonl")
	for i := range 2 {
		w, err := Open(path, WithMaxBytes(450), WithKeep(3))
		require.NoError(t, err)
		require.True(t, w.Write(record(i, 200)))
		require.NoError(t, w.Close())
	}
	assert.Equal(t, []string{"c#0", "c#1"}, linesOf(t, path))
	w, err := Open(path, WithMaxBytes(450), WithKeep(3))
	require.NoError(t, err)
	require.True(t, w.Write(record(2, 200)))
	require.NoError(t, w.Close())
	assert.Equal(t, []string{path + ".1", path}, Files(path))
	assert.Equal(t, []string{"c#2"}, linesOf(t, path))
}

// TestDropsWhenFull: a full queue drops and counts instead of blocking; so does a closed
// writer.
func TestDropsWhenFull(t *testing.T) {
	// A writer whose loop has not started: nothing drains the queue.
	w := &Writer{queue: make(chan *Record, 2), done: make(chan struct{})}
	assert.True(t, w.Write(record(0, 0)))
	assert.True(t, w.Write(record(1, 0)))
	start := time.Now()
	assert.False(t, w.Write(record(2, 0)))
	assert.Less(t, time.Since(start), time.Second, "a full queue must not block")
	assert.Equal(t, uint64(1), w.Stats().Dropped)

	path := filepath.Join(t.TempDir(), "d.jsonl")
	w2, err := Open(path)
	require.NoError(t, err)
	require.NoError(t, w2.Close())
	assert.False(t, w2.Write(record(0, 0)))
	assert.Equal(t, uint64(1), w2.Stats().Dropped)
	require.NoError(t, w2.Close(), "a second Close is harmless")
}

func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		path string
		opts []Option
		want string
	}{
		{"missing directory", filepath.Join(dir, "no", "d.jsonl"), nil, "no such file or directory"},
		{"zero max bytes", filepath.Join(dir, "d.jsonl"), []Option{WithMaxBytes(0)}, "max bytes must be positive"},
		{"negative keep", filepath.Join(dir, "d.jsonl"), []Option{WithKeep(-1)}, "kept files must be 0 or more"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Open(tc.path, tc.opts...)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
			assert.True(t, strings.HasPrefix(err.Error(), "decision log: "), err.Error())
		})
	}
}

// TestRead: records round-trip with their stages; bad lines and later versions are errors
// with the line number.
func TestRead(t *testing.T) {
	anchor := "resp_2"
	rec := &Record{V: Version, ID: "c#1", Previous: &engine.PreviousFacts{ItemKeys: []string{"message#0000000000000001"}},
		Stages: []Stage{{Stage: engine.StagePreSend, Verdict: "send", Input: engine.TurnFacts{Mode: "repair", Number: 1},
			Fired:   []engine.Fired{{Policy: "p", Rule: "r", Reason: "x", Stage: engine.StagePreSend}},
			Effects: engine.EffectsFacts{Anchor: &anchor}}}}
	line, err := json.Marshal(rec)
	require.NoError(t, err)

	tests := []struct {
		name  string
		input string
		ids   []string
		err   string
	}{
		{"records and blank lines", string(line) + "\n\n" + string(line), []string{"c#1", "c#1"}, ""},
		{"not JSON", string(line) + "\n{nope\n", []string{"c#1"}, "line 2: invalid character"},
		{"later version", `{"v":99,"id":"x"}` + "\n", nil, "line 1: version 99: record of a later format version"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var ids []string
			err := Read(strings.NewReader(tc.input), func(_ int, r *Record) error {
				ids = append(ids, r.ID)
				assert.Equal(t, rec.Previous, r.Input(0).Previous, "Input restores the previous turn's facts")
				assert.Equal(t, anchor, *r.Stages[0].Effects.Anchor)
				return nil
			})
			assert.Equal(t, tc.ids, ids)
			if tc.err == "" {
				assert.NoError(t, err)
				return
			}
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.err)
		})
	}
	err = Read(bytes.NewReader(line), func(int, *Record) error { return errors.New("stop") })
	assert.EqualError(t, err, "stop")
}
