package validate

import (
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/releaseutil"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

const replicasExample = "../helm/examples/replicas"

// readManifests strictly decodes every document of an example's extra
// manifests (everything but values.yaml).
func readManifests(t *testing.T, dir string) []object {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var out []object
	for _, f := range files {
		if filepath.Base(f) == "values.yaml" {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, doc := range releaseutil.SplitManifests(string(b)) {
			o, ok, err := decode(doc)
			if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			if ok {
				o.template = filepath.Base(f)
				out = append(out, o)
			}
		}
	}
	return out
}

func findObject[T any](t *testing.T, objs []object, name string) T {
	t.Helper()
	for _, o := range objs {
		if v, ok := o.obj.(T); ok && o.name == name {
			return v
		}
	}
	var zero T
	t.Fatalf("no %T named %q in the example's manifests", zero, name)
	return zero
}

// TestReplicasExample renders the chart with the Kubernetes-at-scale
// example's values and checks that the pieces meet: the gateway discovers
// the Ollama pods through the headless Service its upstream names, and
// takes the Redis URL from the Secret that points at the Redis Service.
func TestReplicasExample(t *testing.T) {
	r := mustRender(t, readValuesFile(t, filepath.Join(replicasExample, "values.yaml")))
	checkInvariants(t, r)
	objs := readManifests(t, replicasExample)
	_, cfg := chartConfig(t, r)

	// The upstream: discover: dns on the headless Service's cluster name.
	ups, _ := lookup(cfg, "upstreams")
	list, _ := ups.([]any)
	if len(list) != 1 {
		t.Fatalf("upstreams = %v, want one discovered entry", ups)
	}
	up, _ := list[0].(map[string]any)
	if up["discover"] != "dns" || up["refresh"] == nil {
		t.Errorf("upstream %v: want discover: dns with a refresh", up)
	}
	u, err := url.Parse(up["url"].(string))
	if err != nil {
		t.Fatal(err)
	}
	svcName, ns, _ := strings.Cut(strings.TrimSuffix(u.Hostname(), ".svc.cluster.local"), ".")
	if ns != releaseNamespace {
		t.Errorf("upstream host %s: want a Service in namespace %s", u.Hostname(), releaseNamespace)
	}
	svc := findObject[*corev1.Service](t, objs, svcName)
	if svc.Spec.ClusterIP != corev1.ClusterIPNone {
		t.Errorf("Service %s clusterIP %q: want None (headless), or DNS gives one virtual IP and no pods", svcName, svc.Spec.ClusterIP)
	}
	port, _ := strconv.Atoi(u.Port())
	if len(svc.Spec.Ports) != 1 || int(svc.Spec.Ports[0].Port) != port {
		t.Errorf("Service %s ports %v: want %d, the upstream's", svcName, svc.Spec.Ports, port)
	}
	sts := findObject[*appsv1.StatefulSet](t, objs, "ollama")
	if sts.Spec.ServiceName != svcName {
		t.Errorf("StatefulSet serviceName %q, want %q", sts.Spec.ServiceName, svcName)
	}
	if !labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(sts.Spec.Template.Labels)) {
		t.Errorf("Service %s does not select the StatefulSet's pods", svcName)
	}
	if got := namedPort(sts.Spec.Template.Spec.Containers[0], svc.Spec.Ports[0].TargetPort); got != int32(port) {
		t.Errorf("Service targets container port %d, want %d", got, port)
	}

	// Redis: the gateway's URL comes from the Secret, and names the Redis
	// Service's port.
	env := gatewayContainer(t, must[*appsv1.Deployment](t, r)).Env
	var ref *corev1.SecretKeySelector
	for _, e := range env {
		if e.Name == "VEGA_LIMITS_REDIS_URL" && e.ValueFrom != nil {
			ref = e.ValueFrom.SecretKeyRef
		}
	}
	if ref == nil {
		t.Fatal("no VEGA_LIMITS_REDIS_URL from a Secret")
	}
	sec := findObject[*corev1.Secret](t, objs, ref.Name)
	ru, err := url.Parse(sec.StringData[ref.Key])
	if err != nil || ru.Scheme != "redis" {
		t.Fatalf("Secret %s key %s: not a redis:// URL", ref.Name, ref.Key)
	}
	host, rport, _ := net.SplitHostPort(ru.Host)
	rsvc := findObject[*corev1.Service](t, objs, strings.Split(host, ".")[0])
	if p, _ := strconv.Atoi(rport); len(rsvc.Spec.Ports) != 1 || int(rsvc.Spec.Ports[0].Port) != p {
		t.Errorf("Redis Service ports %v, the URL's port %s", rsvc.Spec.Ports, rport)
	}
	pw, _ := ru.User.Password()
	if pw == "" || pw != sec.StringData["password"] {
		t.Errorf("the URL's password is not the one Redis is started with")
	}
}

// namedPort resolves a Service targetPort against a container's ports.
func namedPort(c corev1.Container, p intstr.IntOrString) int32 {
	if p.Type == intstr.Int {
		return p.IntVal
	}
	for _, cp := range c.Ports {
		if cp.Name == p.StrVal {
			return cp.ContainerPort
		}
	}
	return 0
}
