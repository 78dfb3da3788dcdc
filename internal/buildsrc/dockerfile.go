package buildsrc

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/buildkit/frontend/dockerfile/shell"
)

// needsRun parses a Dockerfile and tells whether building target (the last
// stage when empty) for a foreign platform executes that platform's
// binaries. Only stages the target depends on count, since BuildKit skips
// the others.
func needsRun(data []byte, target string, args map[string]string) (bool, error) {
	res, err := parser.Parse(bytes.NewReader(data))
	if err != nil {
		return false, err
	}
	stages, metaArgs, err := instructions.Parse(res.AST, nil)
	if err != nil {
		return false, err
	}
	if len(stages) == 0 {
		return false, fmt.Errorf("no FROM instruction")
	}

	// FROM and --from= may use ARGs declared before the first FROM; expand
	// them so that "FROM ${BASE}" still finds a stage named by a build arg.
	env := map[string]string{}
	for _, a := range metaArgs {
		for _, kv := range a.Args {
			if v, ok := args[kv.Key]; ok {
				env[kv.Key] = v
			} else if kv.Value != nil {
				env[kv.Key] = *kv.Value
			}
		}
	}
	envList := make([]string, 0, len(env))
	for k, v := range env {
		envList = append(envList, k+"="+v)
	}
	lex := shell.NewLex(res.EscapeToken)
	expand := func(s string) string {
		out, _, err := lex.ProcessWord(s, shell.EnvsFromSlice(envList))
		if err != nil {
			return s
		}
		return out
	}

	byName := map[string]int{}
	for i, s := range stages {
		if s.Name != "" {
			byName[strings.ToLower(s.Name)] = i
		}
	}
	// stageRef is the index of the earlier stage a FROM or --from= names,
	// or -1 when it names an image.
	stageRef := func(ref string, before int) int {
		ref = strings.ToLower(expand(ref))
		if i, ok := byName[ref]; ok && i < before {
			return i
		}
		if i, err := strconv.Atoi(ref); err == nil && i >= 0 && i < before {
			return i
		}
		return -1
	}

	want := len(stages) - 1
	if target != "" {
		i, ok := byName[strings.ToLower(target)]
		if !ok {
			return false, fmt.Errorf("target stage %q is not defined", target)
		}
		want = i
	}

	// native[i]: stage i runs on the builder's own platform, either asked
	// for with $BUILDPLATFORM or inherited from a base stage that does.
	native := make([]bool, len(stages))
	for i, s := range stages {
		switch s.Platform {
		case "$BUILDPLATFORM", "${BUILDPLATFORM}":
			native[i] = true
		case "":
			if b := stageRef(s.BaseName, i); b >= 0 {
				native[i] = native[b]
			}
		}
	}

	seen := make([]bool, len(stages))
	var visit func(i int) bool
	visit = func(i int) bool {
		if seen[i] {
			return false
		}
		seen[i] = true
		s := stages[i]
		if b := stageRef(s.BaseName, i); b >= 0 && visit(b) {
			return true
		}
		for _, c := range s.Commands {
			switch c := c.(type) {
			case *instructions.CopyCommand:
				if c.From != "" {
					if b := stageRef(c.From, i); b >= 0 && visit(b) {
						return true
					}
				}
			case *instructions.RunCommand:
				for _, m := range instructions.GetMounts(c) {
					if m.From != "" {
						if b := stageRef(m.From, i); b >= 0 && visit(b) {
							return true
						}
					}
				}
				if !native[i] {
					return true
				}
			}
		}
		return false
	}
	return visit(want), nil
}
