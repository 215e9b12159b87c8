package validate

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"
)

const composeDir = ".."

// loadCompose loads deploy/compose.yaml with the Compose specification's
// reference loader (the one `docker compose` uses): schema validation,
// interpolation, normalisation. env is the variables it interpolates from;
// with resolveEnv false, env_file contents are not read.
func loadCompose(t *testing.T, dir string, env map[string]string, resolveEnv bool) *types.Project {
	t.Helper()
	abs, err := filepath.Abs(dir)
	if err != nil {
		t.Fatal(err)
	}
	p, err := loader.LoadWithContext(context.Background(), types.ConfigDetails{
		WorkingDir:  abs,
		ConfigFiles: []types.ConfigFile{{Filename: filepath.Join(abs, "compose.yaml")}},
		Environment: env,
	}, func(o *loader.Options) {
		o.SkipResolveEnvironment = !resolveEnv
	})
	if err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	return p
}

func TestCompose(t *testing.T) {
	p := loadCompose(t, composeDir, map[string]string{}, false)

	ollama, ok := p.Services["ollama"]
	if !ok {
		t.Fatalf("no ollama service; services: %v", p.ServiceNames())
	}
	gw, ok := p.Services["gateway"]
	if !ok {
		t.Fatalf("no gateway service; services: %v", p.ServiceNames())
	}

	t.Run("ollama", func(t *testing.T) {
		if !strings.HasPrefix(ollama.Image, "ollama/ollama") {
			t.Errorf("ollama image %q", ollama.Image)
		}
		models := false
		for _, v := range ollama.Volumes {
			_, named := p.Volumes[v.Source]
			models = models || (v.Type == types.VolumeTypeVolume && named && v.Target == "/root/.ollama")
		}
		if !models {
			t.Errorf("no named volume at /root/.ollama for the models: %+v", ollama.Volumes)
		}
		if hc := ollama.HealthCheck; hc == nil || !slices.Equal(hc.Test, types.HealthCheckTest{"CMD", "ollama", "list"}) {
			t.Errorf("ollama healthcheck = %+v, want [CMD ollama list]", hc)
		}
		if len(ollama.Ports) != 0 {
			t.Errorf("ollama publishes %+v: clients should go through the gateway", ollama.Ports)
		}
	})

	t.Run("gateway", func(t *testing.T) {
		root, _ := filepath.Abs(repoRoot)
		if gw.Build == nil || filepath.Clean(gw.Build.Context) != root {
			t.Errorf("gateway build = %+v, want context %s", gw.Build, root)
		}
		if gw.Image == "" {
			t.Errorf("gateway has no image name")
		}
		if got := gw.Environment["VEGA_UPSTREAM_URL"]; got == nil || *got != "http://ollama:11434" {
			t.Errorf("VEGA_UPSTREAM_URL = %v, want http://ollama:11434", got)
		}
		if got := gw.Environment["VEGA_LOG_DIR"]; got == nil || *got != "" {
			t.Errorf("VEGA_LOG_DIR = %v, want empty (stdout only)", got)
		}
		for k := range gw.Environment {
			if strings.HasPrefix(k, "VEGA_AUTH") {
				t.Errorf("%s in compose.yaml: keys belong in the env file, not in a committed file", k)
			}
		}
		if len(gw.EnvFiles) != 1 || filepath.Base(gw.EnvFiles[0].Path) != "vega.env" {
			t.Errorf("env_file = %+v, want vega.env", gw.EnvFiles)
		}
		if dep, ok := gw.DependsOn["ollama"]; !ok || dep.Condition != types.ServiceConditionHealthy {
			t.Errorf("depends_on ollama = %+v, want condition service_healthy", dep)
		}
		if hc := gw.HealthCheck; hc == nil || !slices.Equal(hc.Test, types.HealthCheckTest{"CMD", binaryInImage, "healthcheck"}) {
			t.Errorf("gateway healthcheck = %+v, want exec form [CMD %s healthcheck]", hc, binaryInImage)
		}
		if g := gw.StopGracePeriod; g == nil || time.Duration(*g) <= 30*time.Second {
			t.Errorf("stop_grace_period = %v, want more than the 30s drain timeout", g)
		}
		if !gw.ReadOnly || !slices.Contains(gw.CapDrop, "ALL") {
			t.Errorf("read_only %v cap_drop %v, want true and ALL", gw.ReadOnly, gw.CapDrop)
		}
	})

	t.Run("ports", func(t *testing.T) {
		var data, admin bool
		for _, port := range gw.Ports {
			switch port.Target {
			case 8000:
				data = port.Published == "8000"
			case 8001:
				if port.HostIP != "127.0.0.1" {
					t.Errorf("admin port published on %q, want 127.0.0.1 only", port.HostIP)
				}
				admin = port.Published == "8001"
			default:
				t.Errorf("unexpected port %+v", port)
			}
		}
		if !data || !admin {
			t.Errorf("ports %+v: want 8000 published and 127.0.0.1:8001", gw.Ports)
		}
	})

	t.Run("pull example", func(t *testing.T) {
		b, err := os.ReadFile(filepath.Join(composeDir, "compose.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		want := `curl -H "Authorization: Bearer $KEY" http://localhost:8000/api/pull -d '{"model":"llama3.2"}'`
		if !strings.Contains(string(b), want) {
			t.Errorf("compose.yaml lacks the commented pull example %s", want)
		}
	})
}

// TestComposeEnvFile follows the README: keys written to deploy/vega.env
// reach the gateway's environment, and the interpolated variables apply.
func TestComposeEnvFile(t *testing.T) {
	dir := t.TempDir()
	b, err := os.ReadFile(filepath.Join(composeDir, "compose.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "compose.yaml"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	const key = "test-admin-key-eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee"
	env := "VEGA_AUTH_ADMIN_API_KEYS=" + key + "\n"
	if err := os.WriteFile(filepath.Join(dir, "vega.env"), []byte(env), 0o600); err != nil {
		t.Fatal(err)
	}
	p := loadCompose(t, dir, map[string]string{"VEGA_VERSION": "1.2.3"}, true)
	gw := p.Services["gateway"]
	if got := gw.Environment["VEGA_AUTH_ADMIN_API_KEYS"]; got == nil || *got != key {
		t.Errorf("VEGA_AUTH_ADMIN_API_KEYS from vega.env = %v", got)
	}
	if _, ok := gw.Environment["VEGA_AUTH_API_KEYS"]; ok {
		t.Errorf("VEGA_AUTH_API_KEYS set although vega.env does not set it (an empty list is a config error)")
	}
	if gw.Image != "vega-gateway:1.2.3" || gw.Build.Args["VERSION"] == nil || *gw.Build.Args["VERSION"] != "1.2.3" {
		t.Errorf("image %q, VERSION arg %v: want both from VEGA_VERSION", gw.Image, gw.Build.Args["VERSION"])
	}
}
