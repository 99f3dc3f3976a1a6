package engine

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// LoadDir reads every *.yaml and *.yml file of dir (sorted by name, hidden entries skipped)
// and compiles them as one policy set.
func LoadDir(dir string, opts ...CompileOption) (*Snapshot, Diagnostics, error) {
	srcs, err := ReadSources(dir)
	if err != nil {
		return nil, nil, err
	}
	snap, diags := Compile(srcs, opts...)
	return snap, diags, nil
}

// ReadSources reads policy files: each argument is a file or a directory whose *.yaml and
// *.yml files (hidden ones skipped) are read in name order.
func ReadSources(paths ...string) ([]Source, error) {
	var srcs []Source
	for _, p := range paths {
		st, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("read policies: %w", err)
		}
		if !st.IsDir() {
			data, err := readBounded(p)
			if err != nil {
				return nil, err
			}
			srcs = append(srcs, Source{Name: p, Data: data})
			continue
		}
		entries, err := os.ReadDir(p)
		if err != nil {
			return nil, fmt.Errorf("read policies: %w", err)
		}
		root, err := filepath.EvalSymlinks(p)
		if err != nil {
			return nil, fmt.Errorf("read policies: %w", err)
		}
		for _, e := range entries {
			name := e.Name()
			if strings.HasPrefix(name, ".") || e.IsDir() {
				continue
			}
			if ext := filepath.Ext(name); ext != ".yaml" && ext != ".yml" {
				continue
			}
			// Links may point inside the directory (a ConfigMap's ..data layout) but not out
			// of it: a policy directory is a trust boundary.
			real, err := filepath.EvalSymlinks(filepath.Join(p, name))
			if err != nil {
				return nil, fmt.Errorf("read policies: %w", err)
			}
			if rel, err := filepath.Rel(root, real); err != nil || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
				return nil, fmt.Errorf("read policies: %s resolves to %s, outside %s", filepath.Join(p, name), real, p)
			}
			data, err := readBounded(filepath.Join(p, name))
			if err != nil {
				return nil, err
			}
			srcs = append(srcs, Source{Name: filepath.Join(p, name), Data: data})
			if len(srcs) > maxPolicyFiles {
				return nil, fmt.Errorf("read policies: more than %d policy files in %s", maxPolicyFiles, p)
			}
		}
	}
	if len(srcs) == 0 {
		return nil, fmt.Errorf("read policies: no *.yaml files in %s", strings.Join(paths, ", "))
	}
	return srcs, nil
}

// readBounded reads one policy file, refusing one over maxPolicyBytes before reading it.
func readBounded(path string) ([]byte, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("read policies: %w", err)
	}
	if !st.Mode().IsRegular() {
		// A FIFO or a device would block the read (and with it every reload) forever.
		return nil, fmt.Errorf("read policies: %s is not a regular file (%s)", path, st.Mode().Type())
	}
	if st.Size() > maxPolicyBytes {
		return nil, fmt.Errorf("read policies: %s is %d bytes, over the limit of %d", path, st.Size(), maxPolicyBytes)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read policies: %w", err)
	}
	return data, nil
}
