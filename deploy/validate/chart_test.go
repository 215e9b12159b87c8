package validate

import (
	"os"
	"slices"
	"sort"
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/lint"
	"helm.sh/helm/v3/pkg/lint/support"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// The gateway's process contract, as the Dockerfile and the binary define it.
const (
	nonrootID   = 65532 // distroless "nonroot"
	configPath  = "/etc/vega/config.yaml"
	secretNamed = "vega-keys" // the existingSecret used below
)

// Kinds the chart renders with its default values: everything but the
// opt-in ServiceMonitor and Ingress. The HPA and the PDB are on by default.
var defaultKinds = []string{
	"ConfigMap", "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget",
	"Secret", "Service", "ServiceAccount",
}

func allOnValues(t *testing.T) map[string]any {
	return readValuesFile(t, "testdata/values-all-on.yaml")
}

func TestChartRenders(t *testing.T) {
	tests := []struct {
		name      string
		values    func(t *testing.T) map[string]any
		wantKinds []string
		check     func(t *testing.T, r *rendered)
	}{
		{
			name:      "defaults",
			values:    func(*testing.T) map[string]any { return nil },
			wantKinds: defaultKinds,
			check: func(t *testing.T, r *rendered) {
				d := must[*appsv1.Deployment](t, r)
				if d.Spec.Replicas != nil {
					t.Errorf("Deployment replicas = %d with the HPA on, want unset so upgrades do not fight the HPA", *d.Spec.Replicas)
				}
				// No keys given: the chart generates one admin key, since
				// the admin listener on the pod IP refuses to start without.
				s := must[*corev1.Secret](t, r)
				admin := string(s.Data["VEGA_AUTH_ADMIN_API_KEYS"])
				if len(admin) < 32 || strings.Contains(admin, ",") {
					t.Errorf("generated admin key %d characters (comma: %v), want one key of >= 32", len(admin), strings.Contains(admin, ","))
				}
				if got := string(s.Data["metrics-token"]); got != admin {
					t.Errorf("metrics-token differs from the generated admin key")
				}
				if _, ok := s.Data["VEGA_AUTH_API_KEYS"]; ok {
					t.Errorf("Secret has VEGA_AUTH_API_KEYS with no auth.apiKeys set")
				}
				if env := envVar(t, gatewayContainer(t, d), "VEGA_LOG_DIR"); env.Value != "" {
					t.Errorf("VEGA_LOG_DIR = %q by default, want empty (stdout only)", env.Value)
				}
				for _, e := range gatewayContainer(t, d).Env {
					if strings.Contains(e.Name, "_TLS_") {
						t.Errorf("%s set by default, want plain HTTP unless tls.existingSecret is set", e.Name)
					}
				}
			},
		},
		{
			name:      "all-on",
			values:    allOnValues,
			wantKinds: append([]string{"Ingress", "ServiceMonitor"}, defaultKinds...),
			check: func(t *testing.T, r *rendered) {
				d := must[*appsv1.Deployment](t, r)
				c := gatewayContainer(t, d)
				if env := envVar(t, c, "VEGA_LOG_DIR"); env.Value != "/var/log/vega" {
					t.Errorf("VEGA_LOG_DIR = %q, want /var/log/vega", env.Value)
				}
				// The root filesystem is read-only: the log dir needs a volume.
				if !hasMount(d, c, "/var/log/vega", func(v corev1.Volume) bool { return v.EmptyDir != nil }) {
					t.Errorf("no emptyDir mounted at the log dir /var/log/vega")
				}
				if got, want := *d.Spec.Template.Spec.TerminationGracePeriodSeconds, int64(10+120+15); got != want {
					t.Errorf("terminationGracePeriodSeconds = %d, want preStop+drain+margin = %d", got, want)
				}
				s := must[*corev1.Secret](t, r)
				for key, want := range map[string]string{
					"VEGA_AUTH_API_KEYS":       "test-api-key-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa,test-api-key-bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
					"VEGA_AUTH_ADMIN_API_KEYS": "test-admin-key-cccccccccccccccccccccccccccccccc",
					"metrics-token":            "test-admin-key-cccccccccccccccccccccccccccccccc",
				} {
					if got := string(s.Data[key]); got != want {
						t.Errorf("Secret %s = %q, want %q", key, got, want)
					}
				}
				if _, ok := s.Data["VEGA_AUTH_KEYS"]; !ok {
					t.Errorf("Secret has no VEGA_AUTH_KEYS with auth.keysJSON set")
				}
				if _, ok := s.Data["VEGA_AUTH_OLLAMA_KEYS"]; !ok {
					t.Errorf("Secret has no VEGA_AUTH_OLLAMA_KEYS with auth.ollamaKeysJSON set")
				}
				h := must[*autoscalingv2.HorizontalPodAutoscaler](t, r)
				if len(h.Spec.Metrics) != 2 {
					t.Errorf("HPA has %d metrics, want cpu and memory", len(h.Spec.Metrics))
				}
				if got := c.Image; got != "registry.example.com/vega-gateway:1.2.3" {
					t.Errorf("image = %q", got)
				}
				// TLS from the existing Secret, mounted whole (a subPath
				// mount would never see a renewal), on both listeners.
				for _, name := range []string{"VEGA_GATEWAY_TLS_CERT_FILE", "VEGA_ADMIN_TLS_CERT_FILE"} {
					if env := envVar(t, c, name); env.Value != "/etc/vega-tls/tls.crt" {
						t.Errorf("%s = %q, want /etc/vega-tls/tls.crt", name, env.Value)
					}
				}
				for _, name := range []string{"VEGA_GATEWAY_TLS_KEY_FILE", "VEGA_ADMIN_TLS_KEY_FILE"} {
					if env := envVar(t, c, name); env.Value != "/etc/vega-tls/tls.key" {
						t.Errorf("%s = %q, want /etc/vega-tls/tls.key", name, env.Value)
					}
				}
				if !hasMount(d, c, "/etc/vega-tls", func(v corev1.Volume) bool { return v.Secret != nil && v.Secret.SecretName == "vega-tls" }) {
					t.Errorf("no Secret vega-tls mounted at /etc/vega-tls")
				}
				for _, m := range c.VolumeMounts {
					if m.MountPath == "/etc/vega-tls" && m.SubPath != "" {
						t.Errorf("the TLS Secret is mounted with subPath %q: renewals would not reach the pod", m.SubPath)
					}
				}
				if c.LivenessProbe.HTTPGet.Scheme != corev1.URISchemeHTTPS || c.ReadinessProbe.HTTPGet.Scheme != corev1.URISchemeHTTPS {
					t.Errorf("probes %s/%s with the admin listener on TLS, want HTTPS", c.LivenessProbe.HTTPGet.Scheme, c.ReadinessProbe.HTTPGet.Scheme)
				}
			},
		},
		{
			name: "all-on with an existing secret",
			values: func(t *testing.T) map[string]any {
				v := allOnValues(t)
				v["auth"].(map[string]any)["existingSecret"] = secretNamed
				// The Redis URL moves to a Secret of the user's too.
				v["redis"] = map[string]any{"existingSecret": "vega-redis", "existingSecretKey": "url"}
				return v
			},
			// The chart creates no Secret: the keys live in the user's.
			wantKinds: slices.DeleteFunc(append([]string{"Ingress", "ServiceMonitor"}, defaultKinds...), func(k string) bool { return k == "Secret" }),
		},
		{
			name: "fixed replicas",
			values: func(*testing.T) map[string]any {
				return map[string]any{"autoscaling": map[string]any{"enabled": false}, "replicaCount": 3}
			},
			wantKinds: slices.DeleteFunc(slices.Clone(defaultKinds), func(k string) bool { return k == "HorizontalPodAutoscaler" }),
			check: func(t *testing.T, r *rendered) {
				d := must[*appsv1.Deployment](t, r)
				if d.Spec.Replicas == nil || *d.Spec.Replicas != 3 {
					t.Errorf("Deployment replicas = %v, want 3 with autoscaling off", d.Spec.Replicas)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			values := tt.values(t)
			r := mustRender(t, values)
			want := slices.Clone(tt.wantKinds)
			sort.Strings(want)
			if got := r.kinds(); !slices.Equal(got, want) {
				t.Fatalf("kinds = %v, want %v", got, want)
			}
			checkInvariants(t, r)
			if tt.check != nil {
				tt.check(t, r)
			}
		})
	}
}

func TestChartRefuses(t *testing.T) {
	short := "short-key"
	tests := []struct {
		name    string
		values  map[string]any
		wantErr string
	}{
		{"listen address in config", map[string]any{"config": map[string]any{"gateway": map[string]any{"listen": ":9000"}}}, "config.gateway.listen is set by the chart: use ports.http"},
		{"admin address in config", map[string]any{"config": map[string]any{"admin": map[string]any{"listen": "127.0.0.1:8001"}}}, "config.admin.listen is set by the chart: use ports.admin"},
		{"drain timeout in config", map[string]any{"config": map[string]any{"gateway": map[string]any{"drain_timeout": "1m"}}}, "use lifecycle.drainTimeoutSeconds"},
		{"log dir in config", map[string]any{"config": map[string]any{"log": map[string]any{"dir": "/tmp"}}}, "use logs.dir"},
		{"keys in the ConfigMap", map[string]any{"config": map[string]any{"auth": map[string]any{"api_keys": []any{strings.Repeat("k", 40)}}}}, "use auth.apiKeys"},
		{"short key", map[string]any{"auth": map[string]any{"apiKeys": []any{short}}}, "auth.apiKeys[0]: a key must be at least 32 characters"},
		{"comma in key", map[string]any{"auth": map[string]any{"adminApiKeys": []any{strings.Repeat("k", 40) + ",x"}}}, "auth.adminApiKeys[0]: a key must not contain a comma"},
		{"redis URL in config", map[string]any{"config": map[string]any{"limits": map[string]any{"redis_url": "redis://r:6379/0"}}}, "config.limits.redis_url is set by the chart: use redis.url"},
		{"redis URL and secret", map[string]any{"redis": map[string]any{"url": "redis://r:6379/0", "existingSecret": "r"}}, "redis.url and redis.existingSecret: set one"},
		{"redis URL without the chart's Secret", map[string]any{"auth": map[string]any{"existingSecret": "k"}, "redis": map[string]any{"url": "redis://r:6379/0"}}, "set redis.existingSecret"},
		{"not a redis URL", map[string]any{"redis": map[string]any{"url": "http://r:6379"}}, "redis/url"},
		{"no drain", map[string]any{"lifecycle": map[string]any{"drainTimeoutSeconds": 0}}, "drainTimeoutSeconds must be at least 1"},
		{"misspelt value", map[string]any{"autoscalling": map[string]any{"enabled": false}}, "autoscalling"},
		{"wrong type", map[string]any{"ports": map[string]any{"http": "eighty"}}, "ports/http"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := render(t, tt.values)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("render error = %v, want one containing %q", err, tt.wantErr)
			}
			if strings.Contains(err.Error(), short) {
				t.Errorf("error message repeats the key: %v", err)
			}
		})
	}
}

// TestChartLint runs Helm's own linter (`helm lint --strict`'s rules) on the
// chart with its defaults and with everything on.
func TestChartLint(t *testing.T) {
	for name, values := range map[string]map[string]any{"defaults": nil, "all-on": allOnValues(t)} {
		t.Run(name, func(t *testing.T) {
			_, caps := loadChart(t)
			linter := lint.AllWithKubeVersion(chartDir, values, releaseNamespace, &caps.KubeVersion)
			for _, m := range linter.Messages {
				// INFO is advice such as "icon is recommended".
				if m.Severity > support.InfoSev {
					t.Errorf("helm lint: %s", m)
				}
			}
		})
	}
}

// TestChartConfigKeysKnownToGateway checks every key the chart writes to
// config.yaml against the repository's config.yaml, which lists every key
// the gateway accepts: the gateway refuses unknown keys at start-up, so a
// key missing there would crash-loop the pods.
//
// With VEGA_CHART_CONFIG_OUT set, it also writes the default rendering
// there, so .ci/deploy-check.sh can start the real binary with it.
func TestChartConfigKeysKnownToGateway(t *testing.T) {
	r := mustRender(t, nil)
	raw, cfg := chartConfig(t, r)
	if out := os.Getenv("VEGA_CHART_CONFIG_OUT"); out != "" {
		if err := os.WriteFile(out, []byte(raw), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile("../../config.yaml")
	if os.IsNotExist(err) {
		t.Skip("no config.yaml at the repository root yet")
	}
	if err != nil {
		t.Fatal(err)
	}
	var known map[string]any
	if err := yaml.Unmarshal(b, &known); err != nil {
		t.Fatalf("../../config.yaml: %v", err)
	}
	_, allOn := chartConfig(t, mustRender(t, allOnValues(t)))
	for _, c := range []map[string]any{cfg, allOn} {
		for _, key := range leafKeys("", c) {
			if _, ok := lookup(known, key); !ok {
				t.Errorf("the chart writes %s, which the repository's config.yaml does not list", key)
			}
		}
	}
}

func leafKeys(prefix string, m map[string]any) []string {
	var keys []string
	for k, v := range m {
		if sub, ok := v.(map[string]any); ok {
			keys = append(keys, leafKeys(prefix+k+".", sub)...)
			continue
		}
		keys = append(keys, prefix+k)
	}
	sort.Strings(keys)
	return keys
}
