package deploy

import (
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"
)

const dockerfile = "docker/Dockerfile"

// instruction is one Dockerfile instruction, continuation lines joined.
type instruction struct {
	Line int
	Cmd  string // upper case: FROM, RUN, ...
	Args string
}

// stage is one FROM ... AS name section.
type stage struct {
	Base, Name string
	Body       []instruction
}

// parseDockerfile splits a Dockerfile into its global instructions (before
// the first FROM) and its stages; comments are returned separately, since
// the run example lives there.
func parseDockerfile(src string) (global []instruction, stages []stage, comments []string, err error) {
	var cur *instruction
	for i, line := range strings.Split(src, "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "#") {
			comments = append(comments, strings.TrimSpace(strings.TrimPrefix(trimmed, "#")))
			continue
		}
		if trimmed == "" && cur == nil {
			continue
		}
		if cur == nil {
			cmd, args, _ := strings.Cut(trimmed, " ")
			cur = &instruction{Line: i + 1, Cmd: strings.ToUpper(cmd), Args: ""}
			trimmed = args
		}
		cont := strings.HasSuffix(trimmed, "\\")
		cur.Args = strings.TrimSpace(cur.Args + " " + strings.TrimSuffix(trimmed, "\\"))
		if cont {
			continue
		}
		in := *cur
		cur = nil
		if in.Cmd == "FROM" {
			f := strings.Fields(in.Args)
			s := stage{Base: f[0]}
			if len(f) == 3 && strings.EqualFold(f[1], "AS") {
				s.Name = f[2]
			} else if len(f) != 1 {
				return nil, nil, nil, fmt.Errorf("line %d: FROM %q: want FROM image [AS name]", in.Line, in.Args)
			}
			stages = append(stages, s)
			continue
		}
		if len(stages) == 0 {
			global = append(global, in)
		} else {
			stages[len(stages)-1].Body = append(stages[len(stages)-1].Body, in)
		}
	}
	if cur != nil {
		return nil, nil, nil, fmt.Errorf("line %d: continuation at end of file", cur.Line)
	}
	return global, stages, comments, nil
}

func TestDockerfile(t *testing.T) {
	global, stages, comments, err := parseDockerfile(string(readFile(t, dockerfile)))
	if err != nil {
		t.Fatal(err)
	}
	if len(stages) < 2 {
		t.Fatalf("%d stages, want a build stage and a runtime stage", len(stages))
	}
	build, final := stages[0], stages[len(stages)-1]

	// The Go version of the build image follows go.mod.
	goMod := string(readFile(t, "../go.mod"))
	goVer := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindStringSubmatch(goMod)
	if goVer == nil {
		t.Fatal("no go directive in go.mod")
	}
	if !slices.ContainsFunc(global, func(in instruction) bool { return in.Cmd == "ARG" && in.Args == "GO_VERSION="+goVer[1] }) {
		t.Errorf("want ARG GO_VERSION=%s (go.mod) before the first FROM", goVer[1])
	}
	if !strings.HasPrefix(build.Base, "golang:") {
		t.Errorf("build stage FROM %s: want a golang image", build.Base)
	}

	// A static binary: CGO_ENABLED=0 on the go build of the command.
	var built bool
	for _, in := range build.Body {
		if in.Cmd == "RUN" && strings.Contains(in.Args, "go build") {
			built = true
			for _, want := range []string{"CGO_ENABLED=0", "-trimpath", "./cmd/nsflow", "-o /out/nsflow"} {
				if !strings.Contains(in.Args, want) {
					t.Errorf("line %d: go build without %s", in.Line, want)
				}
			}
		}
	}
	if !built {
		t.Error("the build stage runs no go build")
	}

	// A minimal runtime: no shell, no package manager.
	if !strings.HasPrefix(final.Base, "gcr.io/distroless/static") && final.Base != "scratch" {
		t.Errorf("runtime FROM %s: want distroless/static or scratch", final.Base)
	}
	var copied, entry string
	for _, in := range final.Body {
		switch in.Cmd {
		case "COPY":
			if f := strings.Fields(in.Args); len(f) == 3 && f[0] == "--from="+build.Name && f[1] == "/out/nsflow" {
				copied = f[2]
			}
		case "ENTRYPOINT":
			// Exec form: no shell in a distroless image to run a string.
			var argv []string
			if err := json.Unmarshal([]byte(in.Args), &argv); err != nil || len(argv) == 0 {
				t.Errorf("line %d: ENTRYPOINT %s: want the exec (JSON) form", in.Line, in.Args)
			} else {
				entry = argv[0]
			}
		case "RUN":
			t.Errorf("line %d: RUN in the runtime stage: it has no shell", in.Line)
		}
	}
	if copied == "" || entry != copied {
		t.Errorf("runtime stage: binary copied to %q, entrypoint %q: want the copied binary as entrypoint", copied, entry)
	}

	// The documented docker run grants exactly the agent's capabilities.
	var caps []string
	for _, c := range comments {
		for _, m := range regexp.MustCompile(`--cap-add (\w+)`).FindAllStringSubmatch(c, -1) {
			caps = append(caps, m[1])
		}
	}
	slices.Sort(caps)
	if !slices.Equal(caps, agentCapabilities) {
		t.Errorf("docker run example adds %v, want %v", caps, agentCapabilities)
	}
	// ... and the host paths the agent needs: pins, state, named netns
	// (rslave, so that later `ip netns add` mounts show).
	example := strings.Join(comments, "\n")
	for _, want := range []string{"--network host", "--pid host", "-v /sys/fs/bpf:/sys/fs/bpf", "-v /run/nsflow:/run/nsflow", "-v /run/netns:/run/netns:rslave"} {
		if !strings.Contains(example, want) {
			t.Errorf("docker run example lacks %s", want)
		}
	}
}

func TestParseDockerfileErrors(t *testing.T) {
	for _, src := range []string{
		"FROM a b c d\n",
		"FROM a AS b\nRUN x \\",
	} {
		if _, _, _, err := parseDockerfile(src); err == nil {
			t.Errorf("%q: want an error", src)
		}
	}
}
