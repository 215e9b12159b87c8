package validate

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/linter"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
)

const (
	repoRoot      = "../.."
	binaryInImage = "/vega-gateway"
)

// parseDockerfile parses the root Dockerfile with BuildKit's own parser and
// instruction decoder, failing on any parser or linter warning (what
// `docker build --check` reports for these rules).
func parseDockerfile(t *testing.T) []instructions.Stage {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	res, err := parser.Parse(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("Dockerfile: %v", err)
	}
	for _, w := range res.Warnings {
		t.Errorf("Dockerfile parser warning: %s", w.Short)
	}
	var lintWarnings []string
	lint := linter.New(&linter.Config{
		Warn: func(rule, _, _, msg string, loc []parser.Range) {
			lintWarnings = append(lintWarnings, fmt.Sprintf("%s: %s (line %v)", rule, msg, loc))
		},
	})
	stages, _, err := instructions.Parse(res.AST, lint)
	if err != nil {
		t.Fatalf("Dockerfile instructions: %v", err)
	}
	for _, w := range lintWarnings {
		t.Errorf("Dockerfile lint: %s", w)
	}
	return stages
}

// commands returns a stage's commands of type T, in order.
func commands[T instructions.Command](s instructions.Stage) []T {
	var out []T
	for _, c := range s.Commands {
		if v, ok := c.(T); ok {
			out = append(out, v)
		}
	}
	return out
}

func TestDockerfile(t *testing.T) {
	stages := parseDockerfile(t)
	if len(stages) < 2 {
		t.Fatalf("%d stages, want a build stage and a runtime stage", len(stages))
	}
	build, final := stages[0], stages[len(stages)-1]

	t.Run("no SHELL", func(t *testing.T) {
		for _, s := range stages {
			if c := commands[*instructions.ShellCommand](s); len(c) > 0 {
				t.Errorf("stage %q sets SHELL %q", s.Name, c[0].Shell)
			}
		}
	})

	t.Run("static build", func(t *testing.T) {
		if !strings.HasPrefix(build.BaseName, "golang:1.26") {
			t.Errorf("build stage FROM %q, want golang:1.26", build.BaseName)
		}
		runs := commands[*instructions.RunCommand](build)
		var goBuild string
		for _, r := range runs {
			if line := strings.Join(r.CmdLine, " "); strings.Contains(line, "go build") {
				goBuild = line
			}
		}
		for _, want := range []string{"CGO_ENABLED=0", "-trimpath", `-ldflags "-s -w -X main.version=${VERSION}"`, " ."} {
			if !strings.Contains(goBuild, want) {
				t.Errorf("go build command %q lacks %q", goBuild, want)
			}
		}
		// VERSION must be declared in the stage that uses it, or it expands
		// to nothing.
		declared := false
		for _, a := range commands[*instructions.ArgCommand](build) {
			for _, kv := range a.Args {
				declared = declared || kv.Key == "VERSION"
			}
		}
		if !declared {
			t.Errorf("ARG VERSION not declared in the build stage")
		}
		// The CI check builds the binary the same way: keep them in step.
		script, err := os.ReadFile(filepath.Join(repoRoot, ".ci/deploy-check.sh"))
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"CGO_ENABLED=0", `go build -trimpath -ldflags "-s -w -X main.version=`} {
			if !bytes.Contains(script, []byte(want)) {
				t.Errorf(".ci/deploy-check.sh does not build with %q as the Dockerfile does", want)
			}
		}
	})

	t.Run("module download cached before the sources", func(t *testing.T) {
		// Order of: COPY go.mod go.sum, RUN go mod download, COPY . .
		var order []string
		for _, c := range build.Commands {
			switch c := c.(type) {
			case *instructions.CopyCommand:
				order = append(order, "COPY "+strings.Join(c.SourcePaths, " "))
			case *instructions.RunCommand:
				if strings.Contains(strings.Join(c.CmdLine, " "), "go mod download") {
					order = append(order, "download")
				}
			}
		}
		want := []string{"COPY go.mod go.sum", "download", "COPY ."}
		if !slices.Equal(order, want) {
			t.Errorf("build stage order %q, want %q", order, want)
		}
	})

	t.Run("runtime stage", func(t *testing.T) {
		if !strings.HasPrefix(final.BaseName, "gcr.io/distroless/static") && final.BaseName != "scratch" {
			t.Errorf("final stage FROM %q, want distroless/static or scratch", final.BaseName)
		}
		for _, c := range final.Commands {
			switch c.(type) {
			case *instructions.RunCommand:
				t.Errorf("RUN in the runtime stage: the image has no shell")
			case *instructions.AddCommand:
				t.Errorf("ADD in the runtime stage")
			}
		}
		copies := commands[*instructions.CopyCommand](final)
		if len(copies) != 1 || copies[0].From != build.Name || !slices.Equal(copies[0].SourcePaths, []string{"/out/vega-gateway"}) || copies[0].DestPath != binaryInImage {
			t.Errorf("runtime COPY = %+v, want the binary alone from stage %q to %s", copies, build.Name, binaryInImage)
		}

		users := commands[*instructions.UserCommand](final)
		if len(users) == 0 || users[len(users)-1].User != "65532:65532" {
			t.Errorf("USER = %v, want 65532:65532", users)
		}

		var ports []string
		for _, e := range commands[*instructions.ExposeCommand](final) {
			ports = append(ports, e.Ports...)
		}
		if !slices.Equal(ports, []string{"8000", "8001"}) {
			t.Errorf("EXPOSE %v, want 8000 8001", ports)
		}

		env := map[string]string{}
		for _, e := range commands[*instructions.EnvCommand](final) {
			for _, kv := range e.Env {
				env[kv.Key] = kv.Value
			}
		}
		for k, want := range map[string]string{
			"VEGA_GATEWAY_LISTEN": ":8000",
			"VEGA_ADMIN_LISTEN":   "0.0.0.0:8001",
			"VEGA_LOG_DIR":        "",
		} {
			if got, ok := env[k]; !ok || got != want {
				t.Errorf("ENV %s = %q (set: %v), want %q", k, got, ok, want)
			}
		}
		for k := range env {
			if strings.HasPrefix(k, "VEGA_AUTH") {
				t.Errorf("ENV %s in the image: keys must come from the runtime", k)
			}
		}
	})

	t.Run("exec form, no shell needed", func(t *testing.T) {
		hcs := commands[*instructions.HealthCheckCommand](final)
		if len(hcs) != 1 || hcs[0].Health == nil {
			t.Fatalf("%d HEALTHCHECKs in the runtime stage, want 1", len(hcs))
		}
		// CMD is the exec form; CMD-SHELL would need /bin/sh.
		if got, want := hcs[0].Health.Test, []string{"CMD", binaryInImage, "healthcheck"}; !slices.Equal(got, want) {
			t.Errorf("HEALTHCHECK test = %q, want %q", got, want)
		}
		eps := commands[*instructions.EntrypointCommand](final)
		if len(eps) != 1 || eps[0].PrependShell || !slices.Equal(eps[0].CmdLine, []string{binaryInImage}) {
			t.Errorf("ENTRYPOINT = %+v, want exec form [%q]", eps, binaryInImage)
		}
		cmds := commands[*instructions.CmdCommand](final)
		if len(cmds) != 1 || cmds[0].PrependShell || !slices.Equal(cmds[0].CmdLine, []string{"serve"}) {
			t.Errorf("CMD = %+v, want exec form [\"serve\"]", cmds)
		}
	})
}

// TestDockerignore checks, with BuildKit's own matcher, that the build
// context keeps every file the build needs and leaves out the rest.
func TestDockerignore(t *testing.T) {
	f, err := os.Open(filepath.Join(repoRoot, ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	patterns, err := ignorefile.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	pm, err := patternmatcher.New(patterns)
	if err != nil {
		t.Fatal(err)
	}
	excluded := func(p string) bool {
		ok, err := pm.MatchesOrParentMatches(p)
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		return ok
	}

	for _, p := range []string{"go.mod", "go.sum", "main.go", "admin/assets/index.html", "ollamatest/testdata/chat.ndjson", "config.yaml"} {
		if excluded(p) {
			t.Errorf("%s is left out of the build context", p)
		}
	}
	for _, p := range []string{".git/HEAD", ".ci/run", "deploy/compose.yaml", "deploy/validate/go.mod", "gateway/proxy_test.go", "vega.env", "logs/gateway.log", "vega-gateway"} {
		if !excluded(p) {
			t.Errorf("%s is sent to the builder", p)
		}
	}

	// Every non-test file under a Go package directory of the root module
	// must reach the builder: the sources, and whatever a go:embed may name
	// (the admin page's assets, the fake Ollama's fixtures).
	var files []string
	pkgDirs := map[string]bool{}
	err = filepath.WalkDir(repoRoot, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(repoRoot, p)
		rel = filepath.ToSlash(rel)
		if d.IsDir() {
			// Not the root module's: version control, CI, this module.
			if rel == ".git" || rel == "deploy" || rel == ".ci" {
				return filepath.SkipDir
			}
			return nil
		}
		if strings.HasSuffix(rel, "_test.go") {
			return nil
		}
		if strings.HasSuffix(rel, ".go") {
			pkgDirs[path.Dir(rel)] = true
		}
		files = append(files, rel)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		for dir := path.Dir(f); ; dir = path.Dir(dir) {
			if pkgDirs[dir] && dir != "." {
				if excluded(f) {
					t.Errorf("%s is in package directory %s but left out of the build context", f, dir)
				}
				break
			}
			if dir == "." {
				if strings.HasSuffix(f, ".go") && excluded(f) {
					t.Errorf("%s is a source file but left out of the build context", f)
				}
				break
			}
		}
	}
}
