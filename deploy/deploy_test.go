package deploy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"

	"chainmend/internal/e2etest"
	"chainmend/internal/redistest"
)

// bins are the binaries the recipes ship, built once by TestMain the way the Dockerfile
// builds them (CGO_ENABLED=0, -trimpath).
var bins struct {
	gateway, emulator, probe string
}

// TestMain builds the binaries once for every test.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "chainmend-deploy-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := func() int {
		defer os.RemoveAll(dir)
		for _, b := range []struct {
			out *string
			pkg string
		}{{&bins.gateway, "./cmd/gateway"}, {&bins.emulator, "./cmd/emulator"}, {&bins.probe, "./deploy/probe"}} {
			*b.out = filepath.Join(dir, filepath.Base(b.pkg))
			cmd := exec.Command("go", "build", "-trimpath", "-o", *b.out, b.pkg)
			cmd.Dir = ".."
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
			if out, err := cmd.CombinedOutput(); err != nil {
				fmt.Fprintf(os.Stderr, "go build %s: %v\n%s", b.pkg, err, out)
				return 1
			}
		}
		return m.Run()
	}()
	os.Exit(code)
}

// flagsOf returns the flags a binary's --help lists, as an operator reads them.
func flagsOf(t *testing.T, bin string) map[string]bool {
	t.Helper()
	out, _ := exec.Command(bin, "--help").CombinedOutput() // exits non-zero after the usage
	flags := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^  -([a-z0-9-]+)`).FindAllStringSubmatch(string(out), -1) {
		flags[m[1]] = true
	}
	require.NotEmpty(t, flags, "%s --help:\n%s", bin, out)
	return flags
}

// checkArgs checks that every --flag of args is one of flags and returns the values by flag
// (the last one wins, as with the flag package).
func checkArgs(t *testing.T, where string, args []string, flags map[string]bool) map[string]string {
	t.Helper()
	vals := map[string]string{}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "-") {
			t.Errorf("%s: %q is not a flag", where, a)
			continue
		}
		name, val, hasVal := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !flags[name] {
			t.Errorf("%s: flag --%s does not exist in --help", where, name)
		}
		if !hasVal && i+1 < len(args) && !strings.HasPrefix(args[i+1], "-") {
			i++
			val = args[i]
		}
		vals[name] = val
	}
	return vals
}

// envFlag maps a GATEWAY_ environment variable to its flag, as internal/settings does.
func envFlag(name string) string {
	return strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(name, "GATEWAY_")), "_", "-")
}

// checkEnv checks that every GATEWAY_ variable names a flag, and returns the values by flag.
func checkEnv(t *testing.T, where string, env map[string]string, flags map[string]bool) map[string]string {
	t.Helper()
	vals := map[string]string{}
	for k, v := range env {
		if !strings.HasPrefix(k, "GATEWAY_") {
			continue
		}
		f := envFlag(k)
		if f == "config" {
			vals[f] = v
			continue
		}
		assert.True(t, flags[f], "%s: %s names no flag (--%s)", where, k, f)
		vals[f] = v
	}
	return vals
}

// portOf returns the port of a host:port address.
func portOf(t *testing.T, addr string) string {
	t.Helper()
	_, port, err := net.SplitHostPort(addr)
	require.NoError(t, err, "address %q", addr)
	return port
}

// duration parses a Go duration.
func duration(t *testing.T, s string) time.Duration {
	t.Helper()
	d, err := time.ParseDuration(s)
	require.NoError(t, err)
	return d
}

// ---------------------------------------------------------------------------------------
// Dockerfile

// instruction is one Dockerfile instruction, continuation lines joined.
type instruction struct {
	cmd  string
	args string
	line int
}

// stage is the instructions of one FROM.
type stage struct {
	from, name string
	ins        []instruction
}

// parseDockerfile reads a Dockerfile into its stages.
func parseDockerfile(t *testing.T, path string) []stage {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	var stages []stage
	var cur strings.Builder
	start, n := 0, 0
	flush := func() {
		text := strings.TrimSpace(cur.String())
		cur.Reset()
		if text == "" {
			return
		}
		cmd, args, _ := strings.Cut(text, " ")
		in := instruction{cmd: strings.ToUpper(cmd), args: strings.TrimSpace(args), line: start}
		if in.cmd == "FROM" {
			from, name, _ := strings.Cut(in.args, " AS ")
			stages = append(stages, stage{from: strings.TrimSpace(from), name: strings.TrimSpace(name)})
		}
		if len(stages) > 0 {
			stages[len(stages)-1].ins = append(stages[len(stages)-1].ins, in)
		}
	}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "#") || (line == "" && cur.Len() == 0) {
			continue
		}
		if cur.Len() == 0 {
			start = n
		}
		if strings.HasSuffix(line, "\\") {
			cur.WriteString(strings.TrimSuffix(line, "\\") + " ")
			continue
		}
		cur.WriteString(line)
		flush()
	}
	require.NoError(t, sc.Err())
	flush()
	require.NotEmpty(t, stages)
	return stages
}

// all returns the stage's instructions of one kind.
func (s stage) all(cmd string) []instruction {
	var out []instruction
	for _, in := range s.ins {
		if in.cmd == cmd {
			out = append(out, in)
		}
	}
	return out
}

// execForm reads a JSON-array (exec form) argument list.
func execForm(t *testing.T, in instruction) []string {
	t.Helper()
	var args []string
	require.NoError(t, json.Unmarshal([]byte(in.args), &args), "line %d: %s must use the exec form", in.line, in.cmd)
	return args
}

// env reads the ENV K=V pairs of a stage.
func (s stage) env(t *testing.T) map[string]string {
	t.Helper()
	env := map[string]string{}
	for _, in := range s.all("ENV") {
		for _, kv := range strings.Fields(in.args) {
			k, v, ok := strings.Cut(kv, "=")
			require.True(t, ok, "line %d: ENV %s: write K=V", in.line, kv)
			env[k] = v
		}
	}
	return env
}

// copies returns the destination of every file a stage copies, by source base name.
func (s stage) copies(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, in := range s.all("COPY") {
		var parts []string
		for _, p := range strings.Fields(in.args) {
			if !strings.HasPrefix(p, "--") {
				parts = append(parts, p)
			}
		}
		require.GreaterOrEqual(t, len(parts), 2, "line %d: COPY", in.line)
		dest := parts[len(parts)-1]
		for _, src := range parts[:len(parts)-1] {
			base := filepath.Base(strings.TrimSuffix(src, "/"))
			if strings.HasSuffix(dest, "/") && !strings.HasSuffix(src, "/") {
				out[base] = dest + base
			} else {
				out[base] = strings.TrimSuffix(dest, "/")
			}
		}
	}
	return out
}

// TestStaticBinaries: the binaries the image ships are static (CGO_ENABLED=0), so a
// distroless static base can run them.
func TestStaticBinaries(t *testing.T) {
	for _, bin := range []string{bins.gateway, bins.emulator, bins.probe} {
		f, err := elf.Open(bin)
		require.NoError(t, err)
		for _, p := range f.Progs {
			assert.NotEqual(t, elf.PT_INTERP, p.Type, "%s is dynamically linked", filepath.Base(bin))
		}
		libs, _ := f.ImportedLibraries()
		assert.Empty(t, libs, "%s needs shared libraries", filepath.Base(bin))
		_ = f.Close()
	}
}

// TestDockerfile: a multi-stage build of static binaries into a distroless image run as
// non-root, with the policies baked in where the gateway reads them, a health check that
// needs no shell, and nothing the binary does not know.
func TestDockerfile(t *testing.T) {
	stages := parseDockerfile(t, "Dockerfile")
	flags := flagsOf(t, bins.gateway)
	require.GreaterOrEqual(t, len(stages), 2, "multi-stage")
	build := stages[0]
	assert.True(t, strings.HasPrefix(build.from, "golang:"), "built with the Go image: %s", build.from)
	var buildCmds strings.Builder
	for _, in := range build.all("RUN") {
		buildCmds.WriteString(in.args + "\n")
	}
	for _, pkg := range []string{"./cmd/gateway", "./deploy/probe", "./cmd/emulator"} {
		assert.Regexp(t, `CGO_ENABLED=0 GOOS=linux go build [^\n&]*`+regexp.QuoteMeta(pkg), buildCmds.String(), "%s built static", pkg)
		_, err := os.Stat(filepath.Join("..", pkg))
		assert.NoError(t, err, "%s exists", pkg)
	}

	gw := stages[len(stages)-1]
	assert.Equal(t, "gateway", gw.name, "a plain docker build builds the gateway")
	for _, s := range stages[1:] {
		assert.Regexp(t, `^gcr\.io/distroless/static`, s.from, "stage %s: distroless, no shell", s.name)
		users := s.all("USER")
		require.NotEmpty(t, users, "stage %s sets USER", s.name)
		user := users[len(users)-1].args
		assert.NotContains(t, []string{"root", "0", "root:root", "0:0"}, user, "stage %s runs as non-root", s.name)
	}

	env := gw.env(t)
	vals := checkEnv(t, "Dockerfile ENV", env, flags)
	listenPort := portOf(t, vals["listen"])
	exposed := gw.all("EXPOSE")
	require.Len(t, exposed, 1)
	assert.Equal(t, listenPort, exposed[0].args, "EXPOSE is the --listen port")

	copies := gw.copies(t)
	assert.Equal(t, vals["policies"], copies["policies"], "the policies are baked in where GATEWAY_POLICIES points")
	entries, err := os.ReadDir("../policies")
	require.NoError(t, err)
	assert.NotEmpty(t, entries)

	ep := gw.all("ENTRYPOINT")
	require.Len(t, ep, 1)
	entry := execForm(t, ep[0])
	assert.Equal(t, copies["gateway"], entry[0], "ENTRYPOINT runs the copied gateway")
	checkArgs(t, "ENTRYPOINT", entry[1:], flags)

	hc := gw.all("HEALTHCHECK")
	require.Len(t, hc, 1)
	_, cmd, ok := strings.Cut(hc[0].args, "CMD ")
	require.True(t, ok)
	probe := execForm(t, instruction{cmd: "HEALTHCHECK", args: strings.TrimSpace(cmd), line: hc[0].line})
	assert.Equal(t, copies["chainmend-probe"], probe[0], "HEALTHCHECK runs the copied probe, no curl")
	probeFlags := flagsOf(t, bins.probe)
	for _, a := range probe[1:] {
		if strings.HasPrefix(a, "-") {
			checkArgs(t, "HEALTHCHECK", []string{a}, probeFlags)
		} else {
			assert.Contains(t, []string{"/healthz", "/readyz"}, a, "a probe path the gateway serves")
		}
	}

	em := stages[1]
	require.Equal(t, "emulator", em.name)
	emEntry := execForm(t, em.all("ENTRYPOINT")[0])
	assert.Equal(t, em.copies(t)["emulator"], emEntry[0])
	emArgs := checkArgs(t, "emulator CMD", execForm(t, em.all("CMD")[0]), flagsOf(t, bins.emulator))
	assert.Equal(t, portOf(t, emArgs["listen"]), em.all("EXPOSE")[0].args)

	// The build context's ignore file keeps what the build needs.
	ignore, err := os.ReadFile("Dockerfile.dockerignore")
	require.NoError(t, err)
	for _, line := range strings.Split(string(ignore), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		for _, needed := range []string{"go.mod", "go.sum", "policies", "cmd", "deploy/probe", "gateway", "statestore", "engine", "responses", "emulator", "internal"} {
			matched, err := filepath.Match(line, needed)
			require.NoError(t, err)
			assert.False(t, matched || line == needed, "Dockerfile.dockerignore excludes %s", needed)
		}
	}
}

// TestProbe: the health check answers for the gateway in its container (the port of
// GATEWAY_LISTEN on loopback) and fails on anything but 200.
func TestProbe(t *testing.T) {
	var status = http.StatusOK
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/healthz":
			w.WriteHeader(status)
		case "/readyz":
			w.WriteHeader(http.StatusServiceUnavailable)
		default:
			w.WriteHeader(http.StatusNotFound)
		}
	}))
	defer srv.Close()
	port := portOf(t, srv.Listener.Addr().String())
	closed := freeAddr(t)
	for _, tc := range []struct {
		name   string
		listen string
		args   []string
		want   int
	}{
		{"unspecified host", "0.0.0.0:" + port, nil, 0},
		{"IPv6 unspecified host", "[::]:" + port, nil, 0},
		{"no host", ":" + port, nil, 0},
		{"path", "127.0.0.1:" + port, []string{"/healthz"}, 0},
		{"not ready", "0.0.0.0:" + port, []string{"/readyz"}, 1},
		{"nobody listening", closed, nil, 1},
		{"-addr", "", []string{"-addr", "127.0.0.1:" + port, "/healthz"}, 0},
		{"bad GATEWAY_LISTEN", "nonsense", nil, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(bins.probe, tc.args...)
			cmd.Env = append(os.Environ(), "GATEWAY_LISTEN="+tc.listen)
			out, err := cmd.CombinedOutput()
			code := 0
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				code = ee.ExitCode()
			} else {
				require.NoError(t, err)
			}
			assert.Equal(t, tc.want, code, "%s", out)
		})
	}
}

// ---------------------------------------------------------------------------------------
// Kubernetes

type meta struct {
	Name   string            `yaml:"name"`
	Labels map[string]string `yaml:"labels"`
}

type object struct {
	APIVersion string            `yaml:"apiVersion"`
	Kind       string            `yaml:"kind"`
	Metadata   meta              `yaml:"metadata"`
	Spec       yaml.Node         `yaml:"spec"`
	Data       map[string]string `yaml:"data"`
}

type selector struct {
	MatchLabels map[string]string `yaml:"matchLabels"`
}

type probe struct {
	HTTPGet *struct {
		Path string `yaml:"path"`
		Port any    `yaml:"port"`
	} `yaml:"httpGet"`
	Exec *struct {
		Command []string `yaml:"command"`
	} `yaml:"exec"`
	TCPSocket *struct {
		Port any `yaml:"port"`
	} `yaml:"tcpSocket"`
}

type container struct {
	Name  string   `yaml:"name"`
	Image string   `yaml:"image"`
	Args  []string `yaml:"args"`
	Env   []struct {
		Name  string `yaml:"name"`
		Value string `yaml:"value"`
	} `yaml:"env"`
	Ports []struct {
		Name          string `yaml:"name"`
		ContainerPort int    `yaml:"containerPort"`
	} `yaml:"ports"`
	ReadinessProbe *probe `yaml:"readinessProbe"`
	LivenessProbe  *probe `yaml:"livenessProbe"`
	Lifecycle      struct {
		PreStop struct {
			Sleep struct {
				Seconds int `yaml:"seconds"`
			} `yaml:"sleep"`
		} `yaml:"preStop"`
	} `yaml:"lifecycle"`
	Resources struct {
		Requests map[string]string `yaml:"requests"`
		Limits   map[string]string `yaml:"limits"`
	} `yaml:"resources"`
	SecurityContext struct {
		AllowPrivilegeEscalation *bool `yaml:"allowPrivilegeEscalation"`
		ReadOnlyRootFilesystem   *bool `yaml:"readOnlyRootFilesystem"`
	} `yaml:"securityContext"`
	VolumeMounts []struct {
		Name      string `yaml:"name"`
		MountPath string `yaml:"mountPath"`
		SubPath   string `yaml:"subPath"`
		ReadOnly  bool   `yaml:"readOnly"`
	} `yaml:"volumeMounts"`
}

type podSpec struct {
	TerminationGracePeriodSeconds *int `yaml:"terminationGracePeriodSeconds"`
	SecurityContext               struct {
		RunAsNonRoot *bool `yaml:"runAsNonRoot"`
	} `yaml:"securityContext"`
	Containers []container `yaml:"containers"`
	Volumes    []struct {
		Name      string `yaml:"name"`
		ConfigMap *struct {
			Name string `yaml:"name"`
		} `yaml:"configMap"`
	} `yaml:"volumes"`
}

type workloadSpec struct {
	Replicas    *int     `yaml:"replicas"`
	ServiceName string   `yaml:"serviceName"`
	Selector    selector `yaml:"selector"`
	Template    struct {
		Metadata meta    `yaml:"metadata"`
		Spec     podSpec `yaml:"spec"`
	} `yaml:"template"`
}

type serviceSpec struct {
	ClusterIP string            `yaml:"clusterIP"`
	Selector  map[string]string `yaml:"selector"`
	Ports     []struct {
		Name       string `yaml:"name"`
		Port       int    `yaml:"port"`
		TargetPort any    `yaml:"targetPort"`
	} `yaml:"ports"`
}

// manifests is the rendered kustomization, by kind and name.
type manifests map[string]object

// get returns a rendered object and decodes its spec into spec (when not nil).
func (m manifests) get(t *testing.T, kind, name string, spec any) object {
	t.Helper()
	o, ok := m[kind+"/"+name]
	require.True(t, ok, "the kustomization renders %s %s", kind, name)
	if spec != nil {
		require.NoError(t, o.Spec.Decode(spec), "%s %s spec", kind, name)
	}
	return o
}

// kubectl returns the kubectl binary, or skips the test (fails it under CI=true, where a
// missing dependency must never pass as a skip).
func kubectl(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("kubectl")
	if err == nil {
		return bin
	}
	msg := "kubectl not found in PATH: cannot render deploy/kubernetes with `kubectl kustomize`"
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip("!!!!!!!! SKIPPING: " + msg + " !!!!!!!!")
	return ""
}

// render runs `kubectl kustomize kubernetes` and decodes every object.
func render(t *testing.T) manifests {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, kubectl(t), "kustomize", "kubernetes")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	require.NoError(t, err, "kubectl kustomize kubernetes: %s", stderr.String())
	m := manifests{}
	dec := yaml.NewDecoder(bytes.NewReader(out))
	for {
		var o object
		err := dec.Decode(&o)
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err)
		key := o.Kind + "/" + o.Metadata.Name
		require.NotContains(t, m, key, "rendered twice")
		m[key] = o
	}
	return m
}

// envMap returns a container's environment by name.
func (c container) envMap() map[string]string {
	env := map[string]string{}
	for _, e := range c.Env {
		env[e.Name] = e.Value
	}
	return env
}

// portNamed resolves a port given by number or by name to the container port.
func (c container) portNamed(t *testing.T, port any) int {
	t.Helper()
	switch p := port.(type) {
	case int:
		return p
	case string:
		for _, cp := range c.Ports {
			if cp.Name == p {
				return cp.ContainerPort
			}
		}
	}
	t.Fatalf("container %s has no port %v", c.Name, port)
	return 0
}

// subset reports whether a non-empty selector selects labels.
func subset(sel, labels map[string]string) bool {
	if len(sel) == 0 {
		return false
	}
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// TestKubernetes: the kustomization renders, and what it renders fits the binary and
// itself: flags and variables exist, ports and probe paths match, the policies ConfigMap is
// mounted as a directory where --policies points (so ConfigMap swaps reload), the grace
// period covers the drain, selectors select, and the Redis URL names the Redis Service.
func TestKubernetes(t *testing.T) {
	m := render(t)
	flags := flagsOf(t, bins.gateway)
	var dep workloadSpec
	m.get(t, "Deployment", "chainmend-gateway", &dep)
	require.NotNil(t, dep.Replicas)
	assert.GreaterOrEqual(t, *dep.Replicas, 2, "at least two gateways")
	podLabels := dep.Template.Metadata.Labels
	assert.True(t, subset(dep.Selector.MatchLabels, podLabels), "the Deployment selects its pods")
	pod := dep.Template.Spec
	require.Len(t, pod.Containers, 1)
	c := pod.Containers[0]
	assert.Equal(t, "chainmend/gateway:latest", c.Image)

	vals := checkEnv(t, "Deployment env", c.envMap(), flags)
	for k, v := range checkArgs(t, "Deployment args", c.Args, flags) {
		vals[k] = v // flags override the environment
	}
	require.Len(t, c.Ports, 1)
	assert.Equal(t, "http", c.Ports[0].Name)
	assert.Equal(t, portOf(t, vals["listen"]), strconv.Itoa(c.Ports[0].ContainerPort), "containerPort is the --listen port")

	require.NotNil(t, c.ReadinessProbe)
	require.NotNil(t, c.ReadinessProbe.HTTPGet)
	assert.Equal(t, "/readyz", c.ReadinessProbe.HTTPGet.Path)
	assert.Equal(t, c.Ports[0].ContainerPort, c.portNamed(t, c.ReadinessProbe.HTTPGet.Port))
	require.NotNil(t, c.LivenessProbe)
	require.NotNil(t, c.LivenessProbe.HTTPGet)
	assert.Equal(t, "/healthz", c.LivenessProbe.HTTPGet.Path)
	assert.Equal(t, c.Ports[0].ContainerPort, c.portNamed(t, c.LivenessProbe.HTTPGet.Port))

	require.NotNil(t, pod.TerminationGracePeriodSeconds)
	grace := duration(t, vals["shutdown-grace"])
	drain := grace + time.Duration(c.Lifecycle.PreStop.Sleep.Seconds)*time.Second
	assert.Greater(t, time.Duration(*pod.TerminationGracePeriodSeconds)*time.Second, drain,
		"terminationGracePeriodSeconds outlasts the preStop sleep and --shutdown-grace")

	for _, k := range []string{"cpu", "memory"} {
		assert.NotEmpty(t, c.Resources.Requests[k], "resource request %s", k)
	}
	assert.NotEmpty(t, c.Resources.Limits["memory"])
	require.NotNil(t, pod.SecurityContext.RunAsNonRoot)
	assert.True(t, *pod.SecurityContext.RunAsNonRoot)
	require.NotNil(t, c.SecurityContext.ReadOnlyRootFilesystem)
	assert.True(t, *c.SecurityContext.ReadOnlyRootFilesystem)

	// Policies: a ConfigMap volume mounted as a whole directory at --policies.
	var cmName string
	for _, vm := range c.VolumeMounts {
		if vm.MountPath != vals["policies"] {
			continue
		}
		assert.Empty(t, vm.SubPath, "a subPath mount never sees ConfigMap updates")
		for _, v := range pod.Volumes {
			if v.Name == vm.Name && v.ConfigMap != nil {
				cmName = v.ConfigMap.Name
			}
		}
	}
	require.NotEmpty(t, cmName, "a ConfigMap is mounted at --policies %s", vals["policies"])
	cm := m.get(t, "ConfigMap", cmName, nil)
	assert.Equal(t, "chainmend-policies", cm.Metadata.Name, "no hash suffix: an edit updates it in place, and the gateways reload")
	samePolicies(t, cm.Data)

	pdbObj := m.get(t, "PodDisruptionBudget", "chainmend-gateway", nil)
	var pdb struct {
		MinAvailable *int     `yaml:"minAvailable"`
		Selector     selector `yaml:"selector"`
	}
	require.NoError(t, pdbObj.Spec.Decode(&pdb))
	assert.True(t, subset(pdb.Selector.MatchLabels, podLabels), "the PodDisruptionBudget selects the gateways")
	require.NotNil(t, pdb.MinAvailable)
	assert.Positive(t, *pdb.MinAvailable)
	assert.Less(t, *pdb.MinAvailable, *dep.Replicas, "a node can still be drained")

	var svc serviceSpec
	svcObj := m.get(t, "Service", "chainmend-gateway", &svc)
	assert.True(t, subset(svc.Selector, podLabels), "the Service selects the gateways")
	require.Len(t, svc.Ports, 1)
	assert.Equal(t, c.Ports[0].ContainerPort, c.portNamed(t, svc.Ports[0].TargetPort))

	var sm struct {
		Selector  selector `yaml:"selector"`
		Endpoints []struct {
			Port string `yaml:"port"`
			Path string `yaml:"path"`
		} `yaml:"endpoints"`
	}
	m.get(t, "ServiceMonitor", "chainmend-gateway", &sm)
	assert.True(t, subset(sm.Selector.MatchLabels, svcObj.Metadata.Labels), "the ServiceMonitor selects the Service")
	require.Len(t, sm.Endpoints, 1)
	assert.Equal(t, svc.Ports[0].Name, sm.Endpoints[0].Port)
	assert.Equal(t, "/metrics", sm.Endpoints[0].Path)

	// The Redis URL names the Redis Service and its port.
	u, err := url.Parse(vals["redis"])
	require.NoError(t, err, "GATEWAY_REDIS")
	var rsvc serviceSpec
	m.get(t, "Service", u.Hostname(), &rsvc)
	require.Len(t, rsvc.Ports, 1)
	assert.Equal(t, u.Port(), strconv.Itoa(rsvc.Ports[0].Port))
	var sts workloadSpec
	m.get(t, "StatefulSet", "chainmend-redis", &sts)
	assert.Equal(t, u.Hostname(), sts.ServiceName)
	assert.True(t, subset(rsvc.Selector, sts.Template.Metadata.Labels), "the Redis Service selects the StatefulSet's pods")
	require.Len(t, sts.Template.Spec.Containers, 1)
	rc := sts.Template.Spec.Containers[0]
	assert.Equal(t, rsvc.Ports[0].Port, rc.portNamed(t, rsvc.Ports[0].TargetPort))
	assert.NotEmpty(t, rc.Resources.Requests["memory"])
	require.NotNil(t, rc.ReadinessProbe)
}

// update rewrites deploy/kubernetes/policies from policies/ (go test ./deploy/ -run
// TestKubernetes -update), the way golden files are refreshed.
var update = flag.Bool("update", false, "copy policies/ into deploy/kubernetes/policies")

// samePolicies checks that a policies ConfigMap holds exactly the repository's policies/:
// the ConfigMap replaces the set baked into the image, so a stale copy would silently roll
// the gateways back to older policies.
func samePolicies(t *testing.T, data map[string]string) {
	t.Helper()
	entries, err := os.ReadDir("../policies")
	require.NoError(t, err)
	var want []string
	for _, e := range entries {
		if e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		want = append(want, e.Name())
		b, err := os.ReadFile(filepath.Join("../policies", e.Name()))
		require.NoError(t, err)
		if *update {
			require.NoError(t, os.WriteFile(filepath.Join("kubernetes", "policies", e.Name()), b, 0o644))
			data[e.Name()] = string(b)
			continue
		}
		// Compared by hash: the files are long, and the fix is the same whatever differs.
		if sha256.Sum256(b) != sha256.Sum256([]byte(data[e.Name()])) {
			t.Errorf("deploy/kubernetes/policies/%s differs from policies/%[1]s: run "+
				"`go test ./deploy/ -run TestKubernetes -update` (a new file must also be listed in "+
				"deploy/kubernetes/kustomization.yaml)", e.Name())
		}
	}
	var got []string
	for k := range data {
		got = append(got, k)
	}
	slices.Sort(got)
	slices.Sort(want)
	assert.Equal(t, want, got, "the ConfigMap holds the files of policies/")
}

// ---------------------------------------------------------------------------------------
// Compose

type composeService struct {
	Image string `yaml:"image"`
	Build *struct {
		Context    string `yaml:"context"`
		Dockerfile string `yaml:"dockerfile"`
		Target     string `yaml:"target"`
	} `yaml:"build"`
	Command         []string          `yaml:"command"`
	Environment     map[string]string `yaml:"environment"`
	Volumes         []string          `yaml:"volumes"`
	Ports           []string          `yaml:"ports"`
	Profiles        []string          `yaml:"profiles"`
	DependsOn       yaml.Node         `yaml:"depends_on"`
	StopGracePeriod string            `yaml:"stop_grace_period"`
	Healthcheck     *struct {
		Test []string `yaml:"test"`
	} `yaml:"healthcheck"`
}

// containerPort returns the container side of a "host:container" port mapping.
func containerPort(mapping string) string {
	parts := strings.Split(mapping, ":")
	return strings.TrimSuffix(parts[len(parts)-1], "/tcp")
}

// mount splits a "source:target[:mode]" volume.
func mount(v string) (source, target string) {
	parts := strings.Split(v, ":")
	return parts[0], parts[1]
}

// TestCompose: the compose file parses, builds the image the Kubernetes recipe runs, sets
// only variables the binary knows, and wires its services to each other: Redis, the
// emulator profile, Prometheus's targets, Grafana's data source and dashboard.
func TestCompose(t *testing.T) {
	raw, err := os.ReadFile("compose.yaml")
	require.NoError(t, err)
	var doc struct {
		Name     string                    `yaml:"name"`
		Services map[string]composeService `yaml:"services"`
	}
	require.NoError(t, yaml.Unmarshal(raw, &doc))
	flags := flagsOf(t, bins.gateway)
	stages := map[string]bool{}
	for _, s := range parseDockerfile(t, "Dockerfile") {
		stages[s.name] = true
	}
	var dockerEnv map[string]string
	{
		st := parseDockerfile(t, "Dockerfile")
		dockerEnv = st[len(st)-1].env(t)
	}
	imageListen := portOf(t, dockerEnv["GATEWAY_LISTEN"])
	imagePolicies := dockerEnv["GATEWAY_POLICIES"]
	builds := func(name string, s composeService, target string) {
		require.NotNil(t, s.Build, "%s is built from the repository", name)
		assert.Equal(t, target, s.Build.Target, name)
		assert.True(t, stages[s.Build.Target], "%s: target %s is a stage of the Dockerfile", name, s.Build.Target)
		df, err := filepath.Abs(filepath.Join(s.Build.Context, s.Build.Dockerfile))
		require.NoError(t, err)
		here, _ := filepath.Abs("Dockerfile")
		assert.Equal(t, here, df, "%s builds deploy/Dockerfile", name)
	}

	var gateways []string
	for name, s := range doc.Services {
		if strings.HasPrefix(name, "gateway") {
			gateways = append(gateways, name)
		}
		for _, v := range s.Volumes {
			src, _ := mount(v)
			if strings.HasPrefix(src, ".") {
				_, err := os.Stat(src)
				assert.NoError(t, err, "%s mounts %s, which exists", name, src)
			}
		}
	}
	slices.Sort(gateways)
	require.Equal(t, []string{"gateway-a", "gateway-b"}, gateways, "two gateways")
	redis, ok := doc.Services["redis"]
	require.True(t, ok)
	require.NotNil(t, redis.Healthcheck)
	hostPorts := map[string]bool{}
	for _, name := range gateways {
		g := doc.Services[name]
		assert.Equal(t, "chainmend/gateway:latest", g.Image, "the image the Kubernetes recipe runs")
		builds(name, g, "gateway")
		vals := checkEnv(t, name, g.Environment, flags)
		u, err := url.Parse(vals["redis"])
		require.NoError(t, err)
		_, isService := doc.Services[u.Hostname()]
		assert.True(t, isService, "%s: GATEWAY_REDIS names the service %s", name, u.Hostname())
		assert.Equal(t, "6379", u.Port())
		grace := duration(t, vals["shutdown-grace"])
		assert.Greater(t, duration(t, g.StopGracePeriod), grace, "%s: stop_grace_period outlasts GATEWAY_SHUTDOWN_GRACE", name)
		upstream := regexp.MustCompile(`^\$\{CHAINMEND_UPSTREAM:-(.+)\}$`).FindStringSubmatch(vals["upstream"])
		require.Len(t, upstream, 2, "GATEWAY_UPSTREAM: ${CHAINMEND_UPSTREAM:-default}")
		_, err = url.ParseRequestURI(upstream[1])
		assert.NoError(t, err)
		require.Len(t, g.Ports, 1)
		assert.Equal(t, imageListen, containerPort(g.Ports[0]), "%s publishes the port the image listens on", name)
		hostPorts[strings.Split(g.Ports[0], ":")[0]] = true
		policiesMounted := false
		for _, v := range g.Volumes {
			if src, dst := mount(v); dst == imagePolicies {
				policiesMounted = filepath.Clean(src) == "../policies"
			}
		}
		assert.True(t, policiesMounted, "%s mounts ../policies over the baked-in set", name)
		var deps map[string]struct {
			Condition string `yaml:"condition"`
			Required  *bool  `yaml:"required"`
		}
		require.NoError(t, g.DependsOn.Decode(&deps))
		assert.Equal(t, "service_healthy", deps["redis"].Condition)
		if em, ok := deps["emulator"]; ok {
			require.NotNil(t, em.Required)
			assert.False(t, *em.Required, "the emulator is optional (a profile)")
		}
	}
	assert.Len(t, hostPorts, 2, "each gateway on its own host port")

	em, ok := doc.Services["emulator"]
	require.True(t, ok)
	assert.Equal(t, []string{"emulator"}, em.Profiles)
	builds("emulator", em, "emulator")
	emArgs := checkArgs(t, "emulator command", em.Command, flagsOf(t, bins.emulator))
	emPort := portOf(t, emArgs["listen"])
	require.Len(t, em.Ports, 1)
	assert.Equal(t, emPort, containerPort(em.Ports[0]))
	assert.Contains(t, string(raw), "CHAINMEND_UPSTREAM=http://emulator:"+emPort+"/v1", "the documented way to use the emulator")

	// Prometheus scrapes both gateways on the port they listen on.
	prom := doc.Services["prometheus"]
	var promCfg struct {
		ScrapeConfigs []struct {
			MetricsPath   string `yaml:"metrics_path"`
			StaticConfigs []struct {
				Targets []string `yaml:"targets"`
			} `yaml:"static_configs"`
		} `yaml:"scrape_configs"`
	}
	var promFile string
	for _, v := range prom.Volumes {
		if src, dst := mount(v); dst == "/etc/prometheus/prometheus.yml" {
			promFile = src
		}
	}
	require.NotEmpty(t, promFile, "prometheus.yml is mounted")
	b, err := os.ReadFile(promFile)
	require.NoError(t, err)
	require.NoError(t, yaml.Unmarshal(b, &promCfg))
	require.Len(t, promCfg.ScrapeConfigs, 1)
	assert.Equal(t, "/metrics", promCfg.ScrapeConfigs[0].MetricsPath)
	var targets []string
	for _, sc := range promCfg.ScrapeConfigs[0].StaticConfigs {
		targets = append(targets, sc.Targets...)
	}
	slices.Sort(targets)
	assert.Equal(t, []string{"gateway-a:" + imageListen, "gateway-b:" + imageListen}, targets)

	// Grafana: the dashboard lands where the provider reads, the data source is Prometheus.
	gf := doc.Services["grafana"]
	var provDir, dashTarget string
	for _, v := range gf.Volumes {
		src, dst := mount(v)
		switch {
		case dst == "/etc/grafana/provisioning":
			provDir = src
		case filepath.Base(src) == "chainmend.json":
			dashTarget = dst
		}
	}
	require.NotEmpty(t, provDir)
	require.NotEmpty(t, dashTarget, "the dashboard is mounted")
	var providers struct {
		Providers []struct {
			Options struct {
				Path string `yaml:"path"`
			} `yaml:"options"`
		} `yaml:"providers"`
	}
	b, err = os.ReadFile(filepath.Join(provDir, "dashboards", "chainmend.yaml"))
	require.NoError(t, err)
	require.NoError(t, yaml.Unmarshal(b, &providers))
	require.Len(t, providers.Providers, 1)
	assert.Equal(t, providers.Providers[0].Options.Path, filepath.Dir(dashTarget))
	var sources struct {
		Datasources []struct {
			Type      string `yaml:"type"`
			URL       string `yaml:"url"`
			IsDefault bool   `yaml:"isDefault"`
		} `yaml:"datasources"`
	}
	b, err = os.ReadFile(filepath.Join(provDir, "datasources", "prometheus.yaml"))
	require.NoError(t, err)
	require.NoError(t, yaml.Unmarshal(b, &sources))
	require.Len(t, sources.Datasources, 1)
	ds := sources.Datasources[0]
	assert.Equal(t, "prometheus", ds.Type)
	assert.True(t, ds.IsDefault, "the dashboard's ${datasource} picks the default Prometheus")
	du, err := url.Parse(ds.URL)
	require.NoError(t, err)
	_, isService := doc.Services[du.Hostname()]
	assert.True(t, isService, "the data source names the prometheus service")
	require.Len(t, prom.Ports, 1)
	assert.Equal(t, containerPort(prom.Ports[0]), du.Port())
}

// ---------------------------------------------------------------------------------------
// The recipes run

// freeAddr returns a loopback address nobody listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())
	return addr
}

// configMapDir lays files out the way the kubelet mounts a ConfigMap (its atomic writer): a
// timestamped hidden directory, a ..data symlink to it, and one symlink per key through
// ..data.
func configMapDir(t *testing.T, dir string, files map[string]string, gen int) {
	t.Helper()
	ts := filepath.Join(dir, fmt.Sprintf("..2026_01_01_00_00_%02d.%09d", gen, gen))
	require.NoError(t, os.Mkdir(ts, 0o755))
	for name, body := range files {
		require.NoError(t, os.WriteFile(filepath.Join(ts, name), []byte(body), 0o644))
		link := filepath.Join(dir, name)
		if _, err := os.Lstat(link); errors.Is(err, os.ErrNotExist) {
			require.NoError(t, os.Symlink(filepath.Join("..data", name), link))
		}
	}
	// Swap ..data in one rename, as the kubelet does.
	tmp := filepath.Join(dir, "..data_tmp")
	require.NoError(t, os.Symlink(filepath.Base(ts), tmp))
	require.NoError(t, os.Rename(tmp, filepath.Join(dir, "..data")))
}

// activeSet returns the hash of the policy set a gateway's /metrics reports active.
func activeSet(base string) string {
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	m := regexp.MustCompile(`chainmend_policy_set_active\{hash="([^"]+)"\} 1`).FindSubmatch(b)
	if m == nil {
		return ""
	}
	return string(m[1])
}

// TestKubernetesRecipeRuns runs the gateway binary with the rendered Deployment's own
// arguments and environment, its policies laid out as the kubelet mounts the ConfigMap, and
// a real Redis (only the listen address, the policy path and the Redis URL differ): the probe
// paths answer on the container port's path, the image's health check passes, a ConfigMap
// swap reloads the policies, and SIGTERM ends it within the grace period.
func TestKubernetesRecipeRuns(t *testing.T) {
	m := render(t)
	var dep workloadSpec
	m.get(t, "Deployment", "chainmend-gateway", &dep)
	c := dep.Template.Spec.Containers[0]
	cm := m.get(t, "ConfigMap", "chainmend-policies", nil)
	dir := t.TempDir()
	configMapDir(t, dir, cm.Data, 1)
	srv := redistest.Start(t)

	listen := freeAddr(t)
	args := append(slices.Clone(c.Args), "--listen="+listen, "--policies="+dir, "--reload-poll=1h")
	cmd := exec.Command(bins.gateway, args...)
	cmd.Env = append(os.Environ(), "GATEWAY_LISTEN=", "GATEWAY_POLICIES=", "GATEWAY_CONFIG=")
	for k, v := range c.envMap() {
		if k == "GATEWAY_REDIS" {
			v = srv.URL()
		}
		if k == "GATEWAY_UPSTREAM" {
			v = "http://127.0.0.1:1/v1" // no turn is sent; nothing may leave the machine
		}
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	logs := &e2etest.SyncBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	require.NoError(t, cmd.Start())
	var waitErr error
	exited := make(chan struct{})
	go func() { waitErr = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	base := "http://" + listen
	get := func(path string) int {
		resp, err := http.Get(base + path)
		if err != nil {
			return 0
		}
		_ = resp.Body.Close()
		return resp.StatusCode
	}
	deadline := time.Now().Add(15 * time.Second)
	for get(c.ReadinessProbe.HTTPGet.Path) != http.StatusOK {
		select {
		case <-exited:
			t.Fatalf("gateway exited: %v\n%s", waitErr, logs.String())
		default:
		}
		require.True(t, time.Now().Before(deadline), "not ready within 15s:\n%s", logs.String())
		time.Sleep(50 * time.Millisecond)
	}
	assert.Equal(t, http.StatusOK, get(c.LivenessProbe.HTTPGet.Path))
	assert.Contains(t, logs.String(), `"backend":"standalone"`, "the gateway's store reached Redis")

	// The image's health check, as docker runs it: GATEWAY_LISTEN as the image sets it (all
	// interfaces) with the recipe's port.
	st := parseDockerfile(t, "Dockerfile")
	hc := st[len(st)-1].all("HEALTHCHECK")[0]
	_, hcCmd, _ := strings.Cut(hc.args, "CMD ")
	probeArgs := execForm(t, instruction{cmd: "HEALTHCHECK", args: strings.TrimSpace(hcCmd)})
	probe := exec.Command(bins.probe, probeArgs[1:]...)
	probe.Env = append(os.Environ(), "GATEWAY_LISTEN=0.0.0.0:"+portOf(t, listen))
	out, err := probe.CombinedOutput()
	assert.NoError(t, err, "HEALTHCHECK: %s", out)

	// A ConfigMap update: the kubelet writes a new timestamped directory and swaps ..data.
	before := activeSet(base)
	require.NotEmpty(t, before)
	edited := map[string]string{}
	for k, v := range cm.Data {
		edited[k] = v
	}
	for k := range edited {
		edited[k] += "\n# edited through the ConfigMap\n"
		break
	}
	configMapDir(t, dir, edited, 2)
	deadline = time.Now().Add(15 * time.Second)
	for activeSet(base) == before {
		require.True(t, time.Now().Before(deadline), "the ConfigMap swap was not reloaded (poll off: file events only):\n%s", logs.String())
		time.Sleep(100 * time.Millisecond)
	}

	// SIGTERM: the gateway drains and exits within --shutdown-grace.
	var grace time.Duration
	for k, v := range checkArgs(t, "args", c.Args, flagsOf(t, bins.gateway)) {
		if k == "shutdown-grace" {
			grace = duration(t, v)
		}
	}
	require.Positive(t, grace)
	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	select {
	case <-exited:
		assert.NoError(t, waitErr, "%s", logs.String())
	case <-time.After(grace + 5*time.Second):
		t.Fatalf("still running %s after SIGTERM", grace+5*time.Second)
	}
}
