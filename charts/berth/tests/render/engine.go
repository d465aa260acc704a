// Command render renders a Helm chart the way `helm template` does, for the chart tests of
// Berth: Helm itself cannot be installed on the machines that run them.
//
// The engine follows Helm 3: every file under templates/ is parsed into one template set
// named "<chart>/templates/<file>"; files whose name starts with "_" only define named
// templates; NOTES.txt is rendered apart; values are the chart's values.yaml overridden
// by each -f file in turn (a null removes a key); the functions are sprig's text functions
// without env and expandenv, plus Helm's include, tpl, required, toYaml, fromYaml, toJson,
// fromJson, toToml and lookup; missing keys render as empty text.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"text/template"

	"github.com/BurntSushi/toml"
	"github.com/Masterminds/sprig"
	"sigs.k8s.io/yaml"
)

// Release is the .Release object of a rendering.
type Release struct {
	Name      string
	Namespace string
	Revision  int
	IsInstall bool
	IsUpgrade bool
	Service   string
}

// Metadata is the .Chart object: Chart.yaml's fields under Helm's names.
type Metadata struct {
	APIVersion  string   `json:"apiVersion"`
	Name        string   `json:"name"`
	Version     string   `json:"version"`
	AppVersion  string   `json:"appVersion"`
	Description string   `json:"description"`
	Type        string   `json:"type"`
	KubeVersion string   `json:"kubeVersion"`
	Home        string   `json:"home"`
	Keywords    []string `json:"keywords"`
	Sources     []string `json:"sources"`
}

// Files is the .Files object: the chart's files outside templates/.
type Files map[string][]byte

// Get returns a file's text, or "" when the chart has no such file (as Helm does).
func (f Files) Get(name string) string { return string(f[name]) }

// GetBytes returns a file's bytes.
func (f Files) GetBytes(name string) []byte { return f[name] }

// Lines returns a file's lines.
func (f Files) Lines(name string) []string {
	if f[name] == nil {
		return []string{}
	}
	return strings.Split(strings.TrimSuffix(string(f[name]), "\n"), "\n")
}

// KubeVersion is .Capabilities.KubeVersion.
type KubeVersion struct {
	Version string
	Major   string
	Minor   string
}

// String returns the version, as Helm's does.
func (k KubeVersion) String() string { return k.Version }

// Capabilities is .Capabilities; the API versions are the core ones the chart may ask for.
type Capabilities struct {
	KubeVersion KubeVersion
	APIVersions VersionSet
}

// VersionSet is .Capabilities.APIVersions.
type VersionSet []string

// Has reports whether the cluster serves an API version (or version/kind).
func (v VersionSet) Has(apiVersion string) bool {
	for _, x := range v {
		if x == apiVersion {
			return true
		}
	}
	return false
}

// Chart is a chart read from disk.
type Chart struct {
	Metadata  Metadata
	Values    map[string]interface{}
	Templates map[string]string // by template name, "<chart>/templates/<file>"
	Files     Files
}

// LoadChart reads a chart directory.
func LoadChart(dir string) (*Chart, error) {
	raw, err := os.ReadFile(filepath.Join(dir, "Chart.yaml"))
	if err != nil {
		return nil, err
	}
	c := &Chart{Templates: map[string]string{}, Files: Files{}}
	if err := yaml.UnmarshalStrict(raw, &c.Metadata); err != nil {
		return nil, fmt.Errorf("Chart.yaml: %w", err)
	}
	if c.Metadata.Name == "" || c.Metadata.Version == "" {
		return nil, errors.New("Chart.yaml: name and version are required")
	}
	values, err := readValues(filepath.Join(dir, "values.yaml"))
	if err != nil {
		return nil, err
	}
	c.Values = values
	ignored, err := readHelmignore(filepath.Join(dir, ".helmignore"))
	if err != nil {
		return nil, err
	}
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		rel = filepath.ToSlash(rel)
		if rel != "." && ignored(rel, d.IsDir()) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if d.IsDir() {
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		switch {
		case strings.HasPrefix(rel, "templates/"):
			c.Templates[path.Join(c.Metadata.Name, rel)] = string(data)
		case rel == "Chart.yaml" || rel == "values.yaml":
		default:
			c.Files[rel] = data
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return c, nil
}

// readHelmignore reads the subset of .helmignore the chart uses: "dir/" skips a
// directory, any other line is a glob matched against a file's base name; # comments.
func readHelmignore(file string) (func(rel string, dir bool) bool, error) {
	raw, err := os.ReadFile(file)
	if errors.Is(err, fs.ErrNotExist) {
		return func(string, bool) bool { return false }, nil
	} else if err != nil {
		return nil, err
	}
	var dirs, globs []string
	for _, line := range strings.Split(string(raw), "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasSuffix(line, "/"):
			dirs = append(dirs, strings.TrimSuffix(line, "/"))
		default:
			if _, err := path.Match(line, ""); err != nil {
				return nil, fmt.Errorf(".helmignore: %q: %w", line, err)
			}
			globs = append(globs, line)
		}
	}
	return func(rel string, dir bool) bool {
		if dir {
			for _, d := range dirs {
				if rel == d {
					return true
				}
			}
			return false
		}
		for _, g := range globs {
			if ok, _ := path.Match(g, path.Base(rel)); ok {
				return true
			}
		}
		return false
	}, nil
}

func readValues(file string) (map[string]interface{}, error) {
	raw, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	values := map[string]interface{}{}
	if err := yaml.Unmarshal(raw, &values); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	if values == nil {
		values = map[string]interface{}{}
	}
	return values, nil
}

// Coalesce merges user values over defaults as Helm does: maps merge key by key, any other
// value replaces, and a null removes the key. Neither argument is modified.
func Coalesce(defaults, user map[string]interface{}) map[string]interface{} {
	out := map[string]interface{}{}
	for k, v := range defaults {
		out[k] = v
	}
	for k, v := range user {
		if v == nil {
			delete(out, k)
			continue
		}
		dm, dok := out[k].(map[string]interface{})
		um, uok := v.(map[string]interface{})
		if dok && uok {
			out[k] = Coalesce(dm, um)
		} else {
			out[k] = v
		}
	}
	return out
}

// Rendered is the output of one rendering: manifests by template name, and the notes.
type Rendered struct {
	Manifests map[string]string
	Notes     string
}

// Names returns the rendered template names in order.
func (r *Rendered) Names() []string {
	names := make([]string, 0, len(r.Manifests))
	for n := range r.Manifests {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Render renders the chart with the values files applied in order.
func Render(c *Chart, valueFiles []string, rel Release) (*Rendered, error) {
	values := c.Values
	for _, f := range valueFiles {
		user, err := readValues(f)
		if err != nil {
			return nil, err
		}
		values = Coalesce(values, user)
	}
	return RenderValues(c, values, rel)
}

// RenderValues renders the chart with the complete values given.
func RenderValues(c *Chart, values map[string]interface{}, rel Release) (*Rendered, error) {
	root := template.New("gotpl").Option("missingkey=zero")
	root.Funcs(funcMap(root))
	names := make([]string, 0, len(c.Templates))
	for n := range c.Templates {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if _, err := root.New(n).Parse(c.Templates[n]); err != nil {
			return nil, err
		}
	}
	top := map[string]interface{}{
		"Values": values,
		"Release": map[string]interface{}{
			"Name": rel.Name, "Namespace": rel.Namespace, "Revision": rel.Revision,
			"IsInstall": rel.IsInstall, "IsUpgrade": rel.IsUpgrade, "Service": rel.Service,
		},
		"Chart": c.Metadata,
		"Files": c.Files,
		"Capabilities": Capabilities{
			KubeVersion: KubeVersion{Version: "v1.31.0", Major: "1", Minor: "31"},
			APIVersions: VersionSet{"v1", "apps/v1", "batch/v1", "rbac.authorization.k8s.io/v1"},
		},
	}
	out := &Rendered{Manifests: map[string]string{}}
	for _, n := range names {
		base := path.Base(n)
		if strings.HasPrefix(base, "_") {
			continue
		}
		data := map[string]interface{}{}
		for k, v := range top {
			data[k] = v
		}
		data["Template"] = map[string]interface{}{
			"Name": n, "BasePath": path.Join(c.Metadata.Name, "templates"),
		}
		var buf bytes.Buffer
		if err := root.ExecuteTemplate(&buf, n, data); err != nil {
			return nil, err
		}
		text := strings.ReplaceAll(buf.String(), "<no value>", "")
		if base == "NOTES.txt" {
			out.Notes = text
		} else {
			out.Manifests[n] = text
		}
	}
	return out, nil
}

// funcMap is sprig's text functions plus Helm's own, bound to the template set t.
func funcMap(t *template.Template) template.FuncMap {
	f := sprig.TxtFuncMap()
	delete(f, "env")
	delete(f, "expandenv")
	includeDepth := 0
	f["include"] = func(name string, data interface{}) (string, error) {
		includeDepth++
		defer func() { includeDepth-- }()
		if includeDepth > 1000 {
			return "", fmt.Errorf("include %q: too deep; a template includes itself", name)
		}
		var buf bytes.Buffer
		if err := t.ExecuteTemplate(&buf, name, data); err != nil {
			return "", err
		}
		return buf.String(), nil
	}
	f["tpl"] = func(text string, data interface{}) (string, error) {
		clone, err := t.Clone()
		if err != nil {
			return "", err
		}
		clone.Funcs(funcMap(clone))
		inline, err := clone.New("tpl").Parse(text)
		if err != nil {
			return "", fmt.Errorf("tpl: %w", err)
		}
		var buf bytes.Buffer
		if err := inline.Execute(&buf, data); err != nil {
			return "", fmt.Errorf("tpl: %w", err)
		}
		return strings.ReplaceAll(buf.String(), "<no value>", ""), nil
	}
	f["required"] = func(msg string, v interface{}) (interface{}, error) {
		if v == nil {
			return nil, errors.New(msg)
		}
		if s, ok := v.(string); ok && s == "" {
			return nil, errors.New(msg)
		}
		return v, nil
	}
	f["toYaml"] = func(v interface{}) string {
		data, err := yaml.Marshal(v)
		if err != nil {
			return ""
		}
		return strings.TrimSuffix(string(data), "\n")
	}
	f["fromYaml"] = decoder(func(b []byte, v interface{}) error { return yaml.Unmarshal(b, v) })
	f["toJson"] = func(v interface{}) string {
		data, err := json.Marshal(v)
		if err != nil {
			return ""
		}
		return string(data)
	}
	f["fromJson"] = decoder(json.Unmarshal)
	f["toToml"] = func(v interface{}) string {
		var buf bytes.Buffer
		if err := toml.NewEncoder(&buf).Encode(v); err != nil {
			return err.Error()
		}
		return buf.String()
	}
	// Nothing exists in a cluster while rendering offline, as with `helm template`.
	f["lookup"] = func(apiVersion, kind, namespace, name string) map[string]interface{} {
		return map[string]interface{}{}
	}
	return f
}

// decoder is Helm's fromYaml/fromJson over unmarshal: the document as a map, or a map
// holding only "Error" when it does not parse.
func decoder(unmarshal func([]byte, interface{}) error) func(string) map[string]interface{} {
	return func(s string) map[string]interface{} {
		m := map[string]interface{}{}
		if err := unmarshal([]byte(s), &m); err != nil {
			m["Error"] = err.Error()
		}
		return m
	}
}
