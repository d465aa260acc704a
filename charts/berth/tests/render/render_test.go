package main

// Tests of the berth chart, rendered with the engine in engine.go: what each values file
// must produce, the config.toml the nodes get (compared with tests/golden/, which Berth's
// own test cri/tests/operator_docs.rs parses with the daemon's config parser), and the
// engine's Helm functions. Set UPDATE_GOLDEN=1 to rewrite the golden files.

import (
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
	"sigs.k8s.io/yaml"
)

const chartDir = "../.."

type object = map[string]interface{}

// rendered is one rendering, parsed: every document by "Kind/name".
type rendered struct {
	objects map[string]object
	notes   string
}

func render(t *testing.T, valueFiles ...string) *rendered {
	t.Helper()
	c, err := LoadChart(chartDir)
	if err != nil {
		t.Fatal(err)
	}
	var files []string
	for _, f := range valueFiles {
		files = append(files, filepath.Join(chartDir, "tests", "values", f))
	}
	r, err := Render(c, files, Release{Name: "berth", Namespace: "kube-system", Revision: 1, IsInstall: true, Service: "Helm"})
	if err != nil {
		t.Fatal(err)
	}
	out := &rendered{objects: map[string]object{}, notes: r.Notes}
	for _, n := range r.Names() {
		for _, doc := range Documents(r.Manifests[n]) {
			var o object
			if err := yaml.UnmarshalStrict([]byte(doc), &o); err != nil {
				t.Fatalf("%s: %v\n%s", n, err, doc)
			}
			key := fmt.Sprintf("%s/%s", o["kind"], get(t, o, "metadata", "name"))
			if _, dup := out.objects[key]; dup {
				t.Fatalf("%s rendered twice", key)
			}
			out.objects[key] = o
		}
	}
	return out
}

// get walks maps by key and lists by index ("0", "1", ...).
func get(t *testing.T, v interface{}, path ...string) interface{} {
	t.Helper()
	for i, p := range path {
		switch x := v.(type) {
		case map[string]interface{}:
			v = x[p]
		case []interface{}:
			var n int
			if _, err := fmt.Sscan(p, &n); err != nil || n >= len(x) {
				t.Fatalf("%v: no element %s", path[:i+1], p)
			}
			v = x[n]
		default:
			t.Fatalf("%v: not a map or list at %s", path[:i+1], p)
		}
	}
	return v
}

func (r *rendered) object(t *testing.T, key string) object {
	t.Helper()
	o, ok := r.objects[key]
	if !ok {
		t.Fatalf("no %s among %v", key, keys(r.objects))
	}
	return o
}

func keys(m map[string]object) []string {
	var k []string
	for x := range m {
		k = append(k, x)
	}
	return k
}

func (r *rendered) configMapData(t *testing.T, name string) string {
	t.Helper()
	s, ok := get(t, r.object(t, "ConfigMap/berth"), "data", name).(string)
	if !ok {
		t.Fatalf("ConfigMap/berth has no data.%s", name)
	}
	return s
}

// configToml is the node's config.toml: data["config.toml"] of Secret/berth, decoded.
// It must be in no ConfigMap, which anyone allowed to read the namespace's configuration
// may read: it may hold registry credentials.
func (r *rendered) configToml(t *testing.T) string {
	t.Helper()
	secret := r.object(t, "Secret/berth")
	equal(t, "Secret type", get(t, secret, "type"), "Opaque")
	encoded, ok := get(t, secret, "data", "config.toml").(string)
	if !ok {
		t.Fatalf("Secret/berth has no data.config.toml")
	}
	text, err := base64.StdEncoding.DecodeString(encoded)
	if err != nil {
		t.Fatalf("Secret/berth data.config.toml is not base64: %v", err)
	}
	for key, o := range r.objects {
		if o["kind"] != "ConfigMap" {
			continue
		}
		if data, _ := o["data"].(map[string]interface{}); data != nil {
			if _, found := data["config.toml"]; found {
				t.Errorf("%s still carries config.toml", key)
			}
		}
	}
	return string(text)
}

// checkConfigMount checks that the installer pods see config.toml from the Secret, mode
// 0600, beside the ConfigMap's unit and script.
func checkConfigMount(t *testing.T, spec interface{}) {
	t.Helper()
	var volume interface{}
	for _, v := range get(t, spec, "volumes").([]interface{}) {
		if get(t, v, "name") == "chart-files" {
			volume = v
		}
	}
	if volume == nil {
		t.Fatal("no chart-files volume")
	}
	sources := get(t, volume, "projected", "sources").([]interface{})
	equal(t, "ConfigMap source", get(t, sources[0], "configMap", "name"), "berth")
	equal(t, "Secret source", get(t, sources[1], "secret"), object{
		"name":  "berth",
		"items": []interface{}{object{"key": "config.toml", "path": "config.toml", "mode": float64(0o600)}},
	})
}

// env returns a container's environment as a map.
func env(t *testing.T, container interface{}) map[string]string {
	t.Helper()
	out := map[string]string{}
	list, _ := get(t, container, "env").([]interface{})
	for _, e := range list {
		out[get(t, e, "name").(string)] = get(t, e, "value").(string)
	}
	return out
}

// envHas checks the container's environment variables named in want, one check per name.
func envHas(t *testing.T, container interface{}, want map[string]string) {
	t.Helper()
	e := env(t, container)
	names := make([]string, 0, len(want))
	for name := range want {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		equal(t, name, e[name], want[name])
	}
}

func equal(t *testing.T, what string, got, want interface{}) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Errorf("%s:\n got %#v\nwant %#v", what, got, want)
	}
}

// checkGolden compares the rendered config.toml with tests/golden/<name>.config.toml.
func checkGolden(t *testing.T, name, got string) {
	t.Helper()
	file := filepath.Join(chartDir, "tests", "golden", name+".config.toml")
	if os.Getenv("UPDATE_GOLDEN") == "1" {
		if err := os.WriteFile(file, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("%v (UPDATE_GOLDEN=1 writes it)", err)
	}
	if got != string(want) {
		t.Errorf("config.toml differs from %s (UPDATE_GOLDEN=1 rewrites it):\n%s", file, got)
	}
}

// checkToml decodes config.toml and compares it with the values' config: every key, with
// integers as integers (Helm reads 1450 as a float; Berth's mtu must stay an integer).
func checkToml(t *testing.T, text string, config map[string]interface{}) {
	t.Helper()
	var decoded map[string]interface{}
	if _, err := toml.Decode(text, &decoded); err != nil {
		t.Fatalf("config.toml is not TOML: %v\n%s", err, text)
	}
	equal(t, "config.toml decoded", normalize(decoded), normalize(config))
}

func normalize(v interface{}) interface{} {
	switch x := v.(type) {
	case map[string]interface{}:
		out := map[string]interface{}{}
		for k, e := range x {
			out[k] = normalize(e)
		}
		return out
	case []interface{}:
		out := []interface{}{}
		for _, e := range x {
			out = append(out, normalize(e))
		}
		return out
	case []map[string]interface{}:
		out := []interface{}{}
		for _, e := range x {
			out = append(out, normalize(e))
		}
		return out
	case float64:
		if x == float64(int64(x)) {
			return int64(x)
		}
		return x
	default:
		return x
	}
}

func values(t *testing.T, files ...string) map[string]interface{} {
	t.Helper()
	c, err := LoadChart(chartDir)
	if err != nil {
		t.Fatal(err)
	}
	v := c.Values
	for _, f := range files {
		user, err := readValues(filepath.Join(chartDir, "tests", "values", f))
		if err != nil {
			t.Fatal(err)
		}
		v = Coalesce(v, user)
	}
	return v
}

func readFile(t *testing.T, name string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(chartDir, name))
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func podSpec(t *testing.T, ds object) interface{} {
	return get(t, ds, "spec", "template", "spec")
}

func TestDefaultValues(t *testing.T) {
	r := render(t)
	ds := r.object(t, "DaemonSet/berth")
	spec := podSpec(t, ds)
	equal(t, "hostPID", get(t, spec, "hostPID"), true)
	equal(t, "hostNetwork", get(t, spec, "hostNetwork"), true)
	equal(t, "tolerations", get(t, spec, "tolerations"), []interface{}{object{"operator": "Exists"}})
	equal(t, "nodeSelector", get(t, spec, "nodeSelector"), object{"kubernetes.io/os": "linux"})
	equal(t, "priorityClassName", get(t, spec, "priorityClassName"), "system-node-critical")
	equal(t, "updateStrategy", get(t, ds, "spec", "updateStrategy"),
		object{"type": "RollingUpdate", "rollingUpdate": object{"maxUnavailable": float64(1)}})
	equal(t, "host volume", get(t, spec, "volumes", "0", "hostPath", "path"), "/")
	install := get(t, spec, "initContainers", "0")
	main := get(t, spec, "containers", "0")
	for _, c := range []interface{}{install, main} {
		equal(t, "privileged", get(t, c, "securityContext", "privileged"), true)
		equal(t, "image", get(t, c, "image"), "ghcr.io/berth-runtime/berth:0.1.0")
		equal(t, "resources", get(t, c, "resources"),
			object{"requests": object{"cpu": "10m", "memory": "16Mi"}, "limits": object{"memory": "64Mi"}})
	}
	equal(t, "install command", get(t, install, "command"), []interface{}{"sh", "/etc/berth-chart/node.sh", "install"})
	equal(t, "readiness", get(t, main, "readinessProbe", "exec", "command"), []interface{}{"sh", "/etc/berth-chart/node.sh", "check"})
	envHas(t, install, map[string]string{
		"KUBELET_RECONFIGURE": "false",
		"SOCKET":              "/run/berth/berth.sock",
		"BIN_DIR":             "/usr/local/bin",
		"CGROUP_DRIVER":       "cgroupfs",
		"PURGE_STATE":         "false",
	})

	checkConfigMount(t, spec)
	// The node gets the repository's unit and script unchanged.
	equal(t, "berth.service", r.configMapData(t, "berth.service"), readFile(t, "files/berth.service"))
	equal(t, "node.sh", r.configMapData(t, "node.sh"), readFile(t, "files/node.sh"))
	config := r.configToml(t)
	checkGolden(t, "default", config)
	checkToml(t, config, values(t)["config"].(map[string]interface{}))

	// The uninstall hook: every object is a pre-delete hook, deleted once it succeeded.
	for _, key := range []string{"ServiceAccount/berth-uninstall", "Role/berth-uninstall",
		"RoleBinding/berth-uninstall", "DaemonSet/berth-uninstall", "Job/berth-uninstall"} {
		o := r.object(t, key)
		equal(t, key+" hook", get(t, o, "metadata", "annotations", "helm.sh/hook"), "pre-delete")
		equal(t, key+" delete policy", get(t, o, "metadata", "annotations", "helm.sh/hook-delete-policy"),
			"before-hook-creation,hook-succeeded")
	}
	uds := r.object(t, "DaemonSet/berth-uninstall")
	uspec := podSpec(t, uds)
	equal(t, "uninstaller runs where the installer ran", get(t, uspec, "nodeSelector"), get(t, spec, "nodeSelector"))
	equal(t, "uninstaller tolerations", get(t, uspec, "tolerations"), get(t, spec, "tolerations"))
	equal(t, "uninstall command", get(t, uspec, "initContainers", "0", "command"),
		[]interface{}{"sh", "/etc/berth-chart/node.sh", "uninstall"})
	equal(t, "uninstaller env", env(t, get(t, uspec, "initContainers", "0")), env(t, install))
	job := r.object(t, "Job/berth-uninstall")
	equal(t, "job waits for the uninstaller", get(t, job, "spec", "template", "spec", "containers", "0", "command"),
		[]interface{}{"kubectl", "rollout", "status", "--namespace=kube-system", "--timeout=600s", "daemonset/berth-uninstall"})
	equal(t, "job account", get(t, job, "spec", "template", "spec", "serviceAccountName"), "berth-uninstall")
	equal(t, "role names the daemonset", get(t, r.object(t, "Role/berth-uninstall"), "rules", "0", "resourceNames"),
		[]interface{}{"berth-uninstall"})
	weights := map[string]string{}
	for _, key := range []string{"Role/berth-uninstall", "DaemonSet/berth-uninstall", "Job/berth-uninstall"} {
		weights[key] = get(t, r.object(t, key), "metadata", "annotations", "helm.sh/hook-weight").(string)
	}
	equal(t, "hook weights", weights, map[string]string{
		"Role/berth-uninstall": "-10", "DaemonSet/berth-uninstall": "0", "Job/berth-uninstall": "10"})

	for _, want := range []string{"rollout status daemonset/berth", "journalctl -u berth.service",
		"crictl --runtime-endpoint unix:///run/berth/berth.sock info", "kubelet.reconfigure=false",
		"(kubernetes.io/os=linux)"} {
		if !strings.Contains(r.notes, want) {
			t.Errorf("NOTES.txt lacks %q:\n%s", want, r.notes)
		}
	}
	if len(r.objects) != 8 {
		t.Errorf("rendered %d objects, want 8: %v", len(r.objects), keys(r.objects))
	}
}

func TestMirrorsCniKubeletValues(t *testing.T) {
	r := render(t, "mirrors-cni-kubelet.yaml")
	ds := r.object(t, "DaemonSet/berth")
	spec := podSpec(t, ds)
	equal(t, "nodeSelector", get(t, spec, "nodeSelector"),
		object{"kubernetes.io/os": "linux", "node.example.com/runtime": "berth"})
	equal(t, "tolerations", get(t, spec, "tolerations"), []interface{}{object{
		"key": "node.example.com/dedicated", "operator": "Equal", "value": "berth", "effect": "NoSchedule"}})
	equal(t, "pull secrets", get(t, spec, "imagePullSecrets"), []interface{}{object{"name": "registry-example"}})
	equal(t, "updateStrategy", get(t, ds, "spec", "updateStrategy", "rollingUpdate", "maxUnavailable"), "10%")
	equal(t, "pod label", get(t, ds, "spec", "template", "metadata", "labels", "team"), "platform")
	equal(t, "pod annotation", get(t, ds, "spec", "template", "metadata", "annotations", "example.com/owner"), "platform")
	install := get(t, spec, "initContainers", "0")
	equal(t, "image", get(t, install, "image"), "registry.example.com/infra/berth:0.1.0-node1")
	equal(t, "pullPolicy", get(t, install, "imagePullPolicy"), "Always")
	equal(t, "resources", get(t, install, "resources", "limits"), object{"cpu": "200m", "memory": "128Mi"})
	envHas(t, install, map[string]string{
		"KUBELET_RECONFIGURE": "true",
		"KUBELET_CONFIG":      "/etc/kubernetes/kubelet/config.yaml",
		"CGROUP_DRIVER":       "systemd",
		"PURGE_STATE":         "true",
	})

	config := r.configToml(t)
	checkGolden(t, "mirrors-cni-kubelet", config)
	checkToml(t, config, values(t, "mirrors-cni-kubelet.yaml")["config"].(map[string]interface{}))
	checkConfigMount(t, spec)
	// The registry credentials reach the node, through the Secret alone.
	if !strings.Contains(config, "password = \"pull-s3cret\"\n") {
		t.Errorf("config.toml lacks the registry password:\n%s", config)
	}
	for key, o := range r.objects {
		if key != "Secret/berth" && strings.Contains(fmt.Sprint(o), "pull-s3cret") {
			t.Errorf("%s holds the registry password", key)
		}
	}
	for _, want := range []string{"mtu = 1450\n", "[registry.mirrors.\"docker.io\"]\n",
		"[registry.configs.\"localhost:5000\"]\ninsecure = true\n", "mode = \"cni\"\n", "address = \"0.0.0.0:9323\"\n"} {
		if !strings.Contains(config, want) {
			t.Errorf("config.toml lacks %q:\n%s", want, config)
		}
	}
	// A new config rolls the DaemonSet's pods.
	def := render(t)
	annotation := func(r *rendered) interface{} {
		return get(t, r.object(t, "DaemonSet/berth"), "spec", "template", "metadata", "annotations", "checksum/config")
	}
	if annotation(r) == annotation(def) {
		t.Error("checksum/config is the same for two different configs")
	}
	equal(t, "job timeout", get(t, r.object(t, "Job/berth-uninstall"), "spec", "activeDeadlineSeconds"), float64(960))
	for _, want := range []string{"kubelet.reconfigure is on", "Metrics: Berth listens on 0.0.0.0:9323 on each node",
		"and deletes Berth's state"} {
		if !strings.Contains(r.notes, want) {
			t.Errorf("NOTES.txt lacks %q:\n%s", want, r.notes)
		}
	}
}

func TestCustomPathsMinimalValues(t *testing.T) {
	r := render(t, "custom-paths-minimal.yaml")
	if len(r.objects) != 3 {
		t.Errorf("with uninstall.enabled=false only the ConfigMap, Secret and DaemonSet render, got %v", keys(r.objects))
	}
	ds := r.object(t, "DaemonSet/berth")
	spec := podSpec(t, ds).(map[string]interface{})
	for _, absent := range []string{"nodeSelector", "priorityClassName", "affinity", "imagePullSecrets"} {
		if _, ok := spec[absent]; ok {
			t.Errorf("%s rendered though its value is empty: %v", absent, spec[absent])
		}
	}
	equal(t, "tolerations stay", get(t, spec, "tolerations"), []interface{}{object{"operator": "Exists"}})
	equal(t, "updateStrategy", get(t, ds, "spec", "updateStrategy"), object{"type": "OnDelete"})
	install := get(t, spec, "initContainers", "0").(map[string]interface{})
	if _, ok := install["resources"]; ok {
		t.Errorf("resources rendered though empty: %v", install["resources"])
	}
	envHas(t, install, map[string]string{
		"SOCKET":        "/run/berth-alt/cri.sock",
		"BIN_DIR":       "/opt/berth/bin",
		"CONFIG_DIR":    "/opt/berth/etc",
		"UNIT_DIR":      "/usr/lib/systemd/system",
		"BERTH_ROOT":    "/data/berth",
		"BERTH_STATE":   "/run/berth-alt",
		"READY_TIMEOUT": "120",
	})

	unit := r.configMapData(t, "berth.service")
	if !strings.Contains(unit, "\nExecStart=/opt/berth/bin/berth --config /opt/berth/etc/config.toml\n") {
		t.Errorf("the unit does not start the installed binary with the installed config:\n%s", unit)
	}
	config := r.configToml(t)
	checkGolden(t, "custom-paths-minimal", config)
	checkToml(t, config, values(t, "custom-paths-minimal.yaml")["config"].(map[string]interface{}))
	if strings.Contains(r.notes, "helm uninstall") {
		t.Errorf("NOTES.txt promises an uninstall hook that is off:\n%s", r.notes)
	}
}

func TestImageRepositoryIsRequired(t *testing.T) {
	c, err := LoadChart(chartDir)
	if err != nil {
		t.Fatal(err)
	}
	v := Coalesce(c.Values, map[string]interface{}{"image": map[string]interface{}{"repository": ""}})
	_, err = RenderValues(c, v, Release{Name: "berth", Namespace: "kube-system"})
	if err == nil || !strings.Contains(err.Error(), "image.repository is required") {
		t.Fatalf("rendering without an image repository: %v", err)
	}
}

func TestConfigValueThatIsNotTomlFails(t *testing.T) {
	c, err := LoadChart(chartDir)
	if err != nil {
		t.Fatal(err)
	}
	v := Coalesce(c.Values, map[string]interface{}{"config": map[string]interface{}{
		"network": map[string]interface{}{"cni_bin_dirs": []interface{}{map[string]interface{}{"a": "b"}}}}})
	_, err = RenderValues(c, v, Release{Name: "berth", Namespace: "kube-system"})
	if err == nil || !strings.Contains(err.Error(), "cannot be written to config.toml") {
		t.Fatalf("a list of tables in the config: %v", err)
	}
}

// The engine behaves as Helm's on what the chart relies on.

func engineChart(t *testing.T, templates map[string]string) *Chart {
	t.Helper()
	c := &Chart{Metadata: Metadata{Name: "x", Version: "1.0.0", AppVersion: "2"}, Templates: map[string]string{},
		Files: Files{"files/a.txt": []byte("one\ntwo\n")}}
	for n, text := range templates {
		c.Templates["x/templates/"+n] = text
	}
	return c
}

func renderOne(t *testing.T, text string, values map[string]interface{}) (string, error) {
	t.Helper()
	c := engineChart(t, map[string]string{
		"_h.tpl": `{{- define "x.name" -}}{{ .Chart.Name }}-{{ .Values.n }}{{- end -}}`,
		"t.yaml": text,
	})
	r, err := RenderValues(c, values, Release{Name: "r", Namespace: "ns"})
	if err != nil {
		return "", err
	}
	return r.Manifests["x/templates/t.yaml"], nil
}

func TestEngineFunctions(t *testing.T) {
	cases := []struct{ text, want string }{
		{`{{ include "x.name" . }}`, "x-5"},
		{`{{ tpl "{{ .Values.n }}-{{ include \"x.name\" . }}" . }}`, "5-x-5"},
		{`{{ toYaml .Values.m }}`, "a: 1\nb:\n- c"},
		{`{{ .Values.m | toYaml | nindent 2 }}`, "\n  a: 1\n  b:\n  - c"},
		{`{{ toJson .Values.m }}`, `{"a":1,"b":["c"]}`},
		{`{{ (fromYaml "k: v").k }}`, "v"},
		{`[{{ .Values.missing }}]`, "[]"},
		{`{{ .Files.Get "files/a.txt" }}`, "one\ntwo\n"},
		{`{{ index (.Files.Lines "files/a.txt") 1 }}`, "two"},
		{`{{ .Template.Name }} {{ .Template.BasePath }}`, "x/templates/t.yaml x/templates"},
		{`{{ .Release.Namespace }}/{{ .Chart.AppVersion }}`, "ns/2"},
		{`{{ required "n is needed" .Values.n }}`, "5"},
		{`{{ len (lookup "v1" "Node" "" "") }}`, "0"},
	}
	values := map[string]interface{}{"n": float64(5), "m": map[string]interface{}{"a": float64(1), "b": []interface{}{"c"}}}
	for _, c := range cases {
		got, err := renderOne(t, c.text, values)
		if err != nil {
			t.Errorf("%s: %v", c.text, err)
			continue
		}
		if got != c.want {
			t.Errorf("%s: got %q, want %q", c.text, got, c.want)
		}
	}
	for _, text := range []string{`{{ required "n is needed" .Values.gone }}`, `{{ env "HOME" }}`, `{{ fail "stop" }}`} {
		if _, err := renderOne(t, text, values); err == nil {
			t.Errorf("%s rendered without an error", text)
		}
	}
}

func TestCoalesce(t *testing.T) {
	defaults := map[string]interface{}{"a": map[string]interface{}{"x": 1, "y": 2}, "b": 3, "c": []interface{}{1}}
	user := map[string]interface{}{"a": map[string]interface{}{"y": nil, "z": 4}, "b": nil, "c": []interface{}{2}}
	got := Coalesce(defaults, user)
	equal(t, "coalesced", got, map[string]interface{}{"a": map[string]interface{}{"x": 1, "z": 4}, "c": []interface{}{2}})
	equal(t, "defaults untouched", defaults["b"], 3)
}

func TestDocuments(t *testing.T) {
	got := Documents("# only a comment\n---\na: 1\n--- # trailing\n\nb: 2\n---\n\n")
	equal(t, "documents", got, []string{"a: 1\n", "\nb: 2\n"})
}

func TestChartFilesFollowHelmignore(t *testing.T) {
	c, err := LoadChart(chartDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"files/berth.service", "files/node.sh"} {
		if c.Files[want] == nil {
			t.Errorf("%s is not among the chart's files", want)
		}
	}
	for name := range c.Files {
		if strings.HasPrefix(name, "tests/") || strings.HasPrefix(name, "image/") {
			t.Errorf("%s is in the chart though .helmignore leaves it out", name)
		}
	}
	if len(c.Templates) != 6 {
		t.Errorf("templates: %d, want 6 (_helpers.tpl, configmap, secret, daemonset, uninstall, NOTES.txt)", len(c.Templates))
	}
}
