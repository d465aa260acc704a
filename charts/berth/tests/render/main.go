package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

type valueFiles []string

func (v *valueFiles) String() string     { return strings.Join(*v, ",") }
func (v *valueFiles) Set(s string) error { *v = append(*v, s); return nil }

// usage: render [-f values.yaml]... [-name R] [-namespace NS] [-out DIR] [-notes] CHART
//
// Prints every rendered manifest as one YAML stream ("# Source: <template>" before each
// document, as helm template does), or with -out writes one file per template into DIR
// (created), or with -notes prints NOTES.txt.
func main() {
	var files valueFiles
	flag.Var(&files, "f", "values file (repeatable; later files win)")
	name := flag.String("name", "berth", "release name")
	namespace := flag.String("namespace", "kube-system", "release namespace")
	outDir := flag.String("out", "", "write one file per template into this directory")
	notes := flag.Bool("notes", false, "print NOTES.txt instead of the manifests")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: render [-f values.yaml]... [-name R] [-namespace NS] [-out DIR] [-notes] CHART")
		os.Exit(2)
	}
	chart, err := LoadChart(flag.Arg(0))
	if err != nil {
		fmt.Fprintf(os.Stderr, "render: %v\n", err)
		os.Exit(1)
	}
	r, err := Render(chart, files, Release{
		Name: *name, Namespace: *namespace, Revision: 1, IsInstall: true, Service: "Helm",
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "render: %v\n", err)
		os.Exit(1)
	}
	if *notes {
		fmt.Print(r.Notes)
		return
	}
	for _, n := range r.Names() {
		docs := Documents(r.Manifests[n])
		if len(docs) == 0 {
			continue
		}
		if *outDir != "" {
			if err := os.MkdirAll(*outDir, 0o755); err != nil {
				fmt.Fprintf(os.Stderr, "render: %v\n", err)
				os.Exit(1)
			}
			file := filepath.Join(*outDir, strings.ReplaceAll(n, "/", "_"))
			if err := os.WriteFile(file, []byte(strings.Join(docs, "---\n")), 0o644); err != nil {
				fmt.Fprintf(os.Stderr, "render: %v\n", err)
				os.Exit(1)
			}
			continue
		}
		for _, d := range docs {
			fmt.Printf("---\n# Source: %s\n%s", n, d)
		}
	}
}

// Documents splits a rendered template into its YAML documents, dropping empty ones
// (a template whose condition is false renders to nothing or to comments only).
func Documents(text string) []string {
	var docs []string
	for _, d := range strings.Split("\n"+text, "\n---") {
		// The separator may carry a comment or trailing spaces on its line.
		if i := strings.IndexByte(d, '\n'); i >= 0 {
			d = d[i+1:]
		} else {
			d = ""
		}
		empty := true
		for _, line := range strings.Split(d, "\n") {
			t := strings.TrimSpace(line)
			if t != "" && !strings.HasPrefix(t, "#") {
				empty = false
				break
			}
		}
		if !empty {
			if !strings.HasSuffix(d, "\n") {
				d += "\n"
			}
			docs = append(docs, d)
		}
	}
	return docs
}
