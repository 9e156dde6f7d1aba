// Renders an Ollama Modelfile TEMPLATE with Go's own text/template, as Ollama does
// (template/template.go: missingkey=zero; the chat endpoint's collated messages and .System).
//
// stdin:  {"template": "...", "values": [{"System": "...", "Messages": [{"Role": "user",
//          "Content": "..."}], "Prompt": "", "Response": ""}, ...]}
// stdout: a JSON array with one rendered prompt per entry of "values".
// A template that does not parse, or fails on any entry, exits 1 with the error on stderr.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"text/template"
)

// Message and Values hold the fields of Ollama's api.Message and template.Values that the
// Modelfile templates pedigree writes read; a template naming any other field fails to execute.
type Message struct {
	Role    string
	Content string
}

type Values struct {
	Messages []Message
	System   string
	Prompt   string
	Response string
}

type request struct {
	Template string
	Values   []Values
}

func main() {
	var req request
	if err := json.NewDecoder(os.Stdin).Decode(&req); err != nil {
		fail("reading the request", err)
	}
	tmpl, err := template.New("").Option("missingkey=zero").Parse(req.Template)
	if err != nil {
		fail("parsing the TEMPLATE", err)
	}
	out := make([]string, 0, len(req.Values))
	for i, values := range req.Values {
		var buf bytes.Buffer
		if err := tmpl.Execute(&buf, values); err != nil {
			fail(fmt.Sprintf("rendering conversation %d", i), err)
		}
		out = append(out, buf.String())
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fail("writing the prompts", err)
	}
}

func fail(what string, err error) {
	fmt.Fprintf(os.Stderr, "%s: %v\n", what, err)
	os.Exit(1)
}
