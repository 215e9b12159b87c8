package validate

import (
	"fmt"
	"os"
	"path"
	"sort"
	"strconv"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	"helm.sh/helm/v3/pkg/releaseutil"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"sigs.k8s.io/yaml"
)

const (
	chartDir = "../helm/vega-gateway"

	// minKubeVersion is the oldest Kubernetes the chart claims to support
	// (Chart.yaml kubeVersion). Rendering against it, and decoding into
	// today's API types, catches a template that needs something newer.
	minKubeVersion = "v1.30.0"

	releaseName      = "vega"
	releaseNamespace = "llm"
)

// decoder decodes YAML into the registered API types strictly: an unknown
// or duplicated field, a field in the wrong case, or an apiVersion/kind
// that is not registered below is an error. This is the decoder the API
// server applies with fieldValidation=Strict, less the server-side checks.
var decoder = func() runtime.Decoder {
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{
		appsv1.AddToScheme,
		corev1.AddToScheme,
		autoscalingv2.AddToScheme,
		policyv1.AddToScheme,
		networkingv1.AddToScheme,
		monitoringv1.AddToScheme,
	} {
		if err := add(scheme); err != nil {
			panic(err) // a programming error in the list above
		}
	}
	return serializer.NewCodecFactory(scheme, serializer.EnableStrict).UniversalDeserializer()
}()

// rendered is one chart rendering: its objects in template order, and NOTES.txt.
type rendered struct {
	objects []object
	notes   string
}

// object is one decoded manifest.
type object struct {
	template string // e.g. templates/deployment.yaml
	kind     string
	name     string
	obj      runtime.Object
}

func (r *rendered) kinds() []string {
	var ks []string
	for _, o := range r.objects {
		ks = append(ks, o.kind)
	}
	sort.Strings(ks)
	return ks
}

// find returns the only object of type T, and false when there is none.
func find[T runtime.Object](t *testing.T, r *rendered) (T, bool) {
	t.Helper()
	var found []T
	for _, o := range r.objects {
		if v, ok := o.obj.(T); ok {
			found = append(found, v)
		}
	}
	var zero T
	switch len(found) {
	case 0:
		return zero, false
	case 1:
		return found[0], true
	}
	t.Fatalf("%d objects of type %T, want at most 1", len(found), zero)
	return zero, false
}

// must returns the only object of type T and fails the test without one.
func must[T runtime.Object](t *testing.T, r *rendered) T {
	t.Helper()
	v, ok := find[T](t, r)
	if !ok {
		t.Fatalf("no %T rendered; kinds: %v", v, r.kinds())
	}
	return v
}

// loadChart loads the chart as `helm install` does and checks that the
// oldest supported Kubernetes satisfies the chart's kubeVersion.
func loadChart(t *testing.T) (*chart.Chart, *chartutil.Capabilities) {
	t.Helper()
	ch, err := loader.Load(chartDir)
	if err != nil {
		t.Fatalf("load chart: %v", err)
	}
	kv, err := chartutil.ParseKubeVersion(minKubeVersion)
	if err != nil {
		t.Fatal(err)
	}
	caps := chartutil.DefaultCapabilities.Copy()
	caps.KubeVersion = *kv
	if !chartutil.IsCompatibleRange(ch.Metadata.KubeVersion, kv.String()) {
		t.Fatalf("Chart.yaml kubeVersion %q excludes %s", ch.Metadata.KubeVersion, kv)
	}
	return ch, caps
}

// render renders the chart with the given values over values.yaml, in
// strict mode (a template reading a missing value fails, as with
// `helm lint --strict`), then splits and strictly decodes every manifest.
func render(t *testing.T, values map[string]any) (*rendered, error) {
	t.Helper()
	ch, caps := loadChart(t)
	vals, err := chartutil.ToRenderValues(ch, values, chartutil.ReleaseOptions{
		Name: releaseName, Namespace: releaseNamespace, Revision: 1, IsInstall: true,
	}, caps)
	if err != nil {
		return nil, fmt.Errorf("values: %w", err)
	}
	files, err := engine.Engine{Strict: true}.Render(ch, vals)
	if err != nil {
		return nil, fmt.Errorf("render: %w", err)
	}
	var names []string
	for name := range files {
		names = append(names, name)
	}
	sort.Strings(names)

	r := &rendered{}
	for _, name := range names {
		base := path.Base(name)
		template := strings.TrimPrefix(name, ch.Name()+"/")
		switch {
		case strings.HasPrefix(base, "_"): // partials render nothing of their own
			continue
		case base == "NOTES.txt":
			r.notes = files[name]
			continue
		}
		if !strings.HasSuffix(base, ".yaml") {
			return nil, fmt.Errorf("%s: templates must be .yaml", template)
		}
		docs := releaseutil.SplitManifests(files[name])
		keys := make([]string, 0, len(docs))
		for k := range docs {
			keys = append(keys, k)
		}
		sort.Sort(releaseutil.BySplitManifestsOrder(keys))
		for _, k := range keys {
			o, ok, err := decode(docs[k])
			if err != nil {
				return nil, fmt.Errorf("%s: %w\n---\n%s", template, err, docs[k])
			}
			if ok {
				o.template = template
				r.objects = append(r.objects, o)
			}
		}
	}
	return r, nil
}

// mustRender renders and fails the test on any error.
func mustRender(t *testing.T, values map[string]any) *rendered {
	t.Helper()
	r, err := render(t, values)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// decode decodes one YAML document; ok is false for a document that is only
// comments or whitespace, which Helm skips too.
func decode(doc string) (object, bool, error) {
	js, err := yaml.YAMLToJSONStrict([]byte(doc))
	if err != nil {
		return object{}, false, fmt.Errorf("yaml: %w", err)
	}
	if s := strings.TrimSpace(string(js)); s == "null" || s == "" {
		return object{}, false, nil
	}
	obj, gvk, err := decoder.Decode(js, nil, nil)
	if err != nil {
		// A strict-decoding error comes with a decoded object: still a failure.
		return object{}, false, fmt.Errorf("strict decode: %w", err)
	}
	acc, ok := obj.(metav1.Object)
	if !ok {
		return object{}, false, fmt.Errorf("%s has no object metadata", gvk)
	}
	return object{kind: gvk.Kind, name: acc.GetName(), obj: obj}, true, nil
}

// readValuesFile reads a values file from testdata.
func readValuesFile(t *testing.T, name string) map[string]any {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	vals, err := chartutil.ReadValues(b)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return vals.AsMap()
}

// chartConfig parses the config.yaml the ConfigMap carries.
func chartConfig(t *testing.T, r *rendered) (raw string, cfg map[string]any) {
	t.Helper()
	cm := must[*corev1.ConfigMap](t, r)
	raw, ok := cm.Data["config.yaml"]
	if !ok {
		t.Fatalf("ConfigMap %s has no config.yaml; keys: %v", cm.Name, cm.Data)
	}
	if err := yaml.UnmarshalStrict([]byte(raw), &cfg); err != nil {
		t.Fatalf("config.yaml does not parse: %v\n%s", err, raw)
	}
	return raw, cfg
}

// lookup reads a dotted key path ("gateway.drain_timeout") from a parsed config.
func lookup(cfg map[string]any, key string) (any, bool) {
	var cur any = cfg
	for _, part := range strings.Split(key, ".") {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = m[part]; !ok {
			return nil, false
		}
	}
	return cur, true
}

// portOf returns the port number of a ":PORT" or "HOST:PORT" listen address.
func portOf(t *testing.T, addr string) int32 {
	t.Helper()
	i := strings.LastIndexByte(addr, ':')
	n, err := strconv.ParseInt(addr[i+1:], 10, 32)
	if i < 0 || err != nil {
		t.Fatalf("listen address %q has no port", addr)
	}
	return int32(n)
}

func gatewayContainer(t *testing.T, d *appsv1.Deployment) *corev1.Container {
	t.Helper()
	cs := d.Spec.Template.Spec.Containers
	if len(cs) != 1 {
		t.Fatalf("Deployment has %d containers, want 1", len(cs))
	}
	return &cs[0]
}

func envVar(t *testing.T, c *corev1.Container, name string) corev1.EnvVar {
	t.Helper()
	for _, e := range c.Env {
		if e.Name == name {
			return e
		}
	}
	t.Errorf("container %s has no env %s", c.Name, name)
	return corev1.EnvVar{}
}

// resolvePort maps a named or numeric port to the container port number.
func resolvePort(c *corev1.Container, port string) int32 {
	for _, p := range c.Ports {
		if (p.Name != "" && p.Name == port) || toString(p.ContainerPort) == port {
			return p.ContainerPort
		}
	}
	return -1
}

// hasMount reports whether the container mounts, at mountPath, a volume for
// which ok holds.
func hasMount(d *appsv1.Deployment, c *corev1.Container, mountPath string, ok func(corev1.Volume) bool) bool {
	for _, m := range c.VolumeMounts {
		if m.MountPath != mountPath {
			continue
		}
		for _, v := range d.Spec.Template.Spec.Volumes {
			if v.Name == m.Name && ok(v) {
				return true
			}
		}
	}
	return false
}

func toString(v any) string {
	if v == nil {
		return ""
	}
	return fmt.Sprint(v)
}
