package deploy

import (
	"regexp"
	"strings"
	"testing"
)

const readme = "../README.md"

// readmeSection returns the README's "## title" section, up to the next
// section of the same level.
func readmeSection(t *testing.T, title string) string {
	t.Helper()
	s := string(readFile(t, readme))
	_, after, ok := strings.Cut(s, "\n## "+title+"\n")
	if !ok {
		t.Fatalf("%s: no section %q", readme, title)
	}
	if i := strings.Index(after, "\n## "); i >= 0 {
		after = after[:i]
	}
	return after
}

// dockerBuild finds the image tag of a `docker build -f
// deploy/docker/Dockerfile -t TAG .` command.
var dockerBuild = regexp.MustCompile("docker build -f deploy/docker/Dockerfile -t (\\S+) \\.")

// The README's build command tags the image that the Dockerfile header's
// `docker run` line runs, and is the header's build command.
func TestReadmeDockerImage(t *testing.T) {
	m := dockerBuild.FindAllStringSubmatch(readmeSection(t, "Deployment"), -1)
	if len(m) != 1 {
		t.Fatalf("README Deployment: %d docker build commands, want 1", len(m))
	}
	tag := m[0][1]
	_, _, comments, err := parseDockerfile(string(readFile(t, dockerfile)))
	if err != nil {
		t.Fatal(err)
	}
	header := strings.Join(comments, "\n")
	if hm := dockerBuild.FindAllStringSubmatch(header, -1); len(hm) != 1 || hm[0][1] != tag {
		t.Errorf("the Dockerfile's header builds %v, the README %q", hm, tag)
	}
	// The run command: from "docker run" to the first line without a
	// continuation; the image is its last word.
	var run []string
	for i, c := range comments {
		if strings.HasPrefix(c, "docker run ") {
			for _, l := range comments[i:] {
				run = append(run, strings.TrimSuffix(l, "\\"))
				if !strings.HasSuffix(l, "\\") {
					break
				}
			}
			break
		}
	}
	f := strings.Fields(strings.Join(run, " "))
	if len(f) == 0 || f[len(f)-1] != tag {
		t.Errorf("the Dockerfile's docker run line %q does not run the README's image %q", strings.Join(run, " "), tag)
	}
}

// Every alert of the rules file has a row in the README's alert table,
// with its severity and words for when it fires and what it means.
func TestReadmeDocumentsEveryAlert(t *testing.T) {
	section := readmeSection(t, "Deployment")
	rows := map[string][]string{}
	for _, line := range strings.Split(section, "\n") {
		cells := strings.Split(strings.Trim(line, "| "), " | ")
		if strings.HasPrefix(line, "| `Nsflow") && len(cells) == 4 {
			rows[strings.Trim(cells[0], "`")] = cells
		}
	}
	seen := map[string]bool{}
	for _, g := range loadRules(t).Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			seen[r.Alert] = true
			cells, ok := rows[r.Alert]
			if !ok {
				t.Errorf("README Deployment: no row | `%s` | severity | fires when | meaning |", r.Alert)
				continue
			}
			if cells[1] != r.Labels["severity"] {
				t.Errorf("README: %s has severity %q, the rules %q", r.Alert, cells[1], r.Labels["severity"])
			}
			if strings.TrimSpace(cells[2]) == "" || strings.TrimSpace(cells[3]) == "" {
				t.Errorf("README: %s: say when it fires and what it means", r.Alert)
			}
		}
	}
	for name := range rows {
		if !seen[name] {
			t.Errorf("README documents %s, which the rules file does not have", name)
		}
	}
}
