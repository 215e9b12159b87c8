package validate

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"
)

// checkInvariants asserts what must hold for every set of values.
func checkInvariants(t *testing.T, r *rendered) {
	t.Helper()
	checkNames(t, r)
	d := must[*appsv1.Deployment](t, r)
	c := gatewayContainer(t, d)
	raw, cfg := chartConfig(t, r)
	checkListeners(t, c, cfg)
	checkProbes(t, c)
	checkSecurity(t, d, c)
	checkShutdown(t, d, c, cfg)
	checkConfigMount(t, r, d, c)
	checkKeys(t, r, c, raw, cfg)
	checkWiring(t, r, d, c)
	if strings.TrimSpace(r.notes) == "" {
		t.Errorf("NOTES.txt renders empty")
	}
}

// checkListeners: the listen addresses in config.yaml and in the
// environment (which wins over the file, and overrides the image's ENV)
// agree with the declared container ports; log.dir agrees too.
func checkListeners(t *testing.T, c *corev1.Container, cfg map[string]any) {
	t.Helper()
	ports := containerPorts(c)
	for key, port := range map[string]string{"gateway.listen": "http", "admin.listen": "admin"} {
		v, _ := lookup(cfg, key)
		s, _ := v.(string)
		if s == "" || portOf(t, s) != ports[port] {
			t.Errorf("config.yaml %s = %v, want the %s container port %d", key, v, port, ports[port])
		}
		envName := "VEGA_" + strings.ToUpper(strings.ReplaceAll(key, ".", "_"))
		if env := envVar(t, c, envName); env.Value != s {
			t.Errorf("%s = %q, config.yaml %s = %q: they must agree", envName, env.Value, key, s)
		}
	}
	if strings.HasPrefix(envVar(t, c, "VEGA_ADMIN_LISTEN").Value, "127.") {
		t.Errorf("admin listener on loopback: kubelet probes to the pod IP would fail")
	}
	if logDir, _ := lookup(cfg, "log.dir"); logDir != envVar(t, c, "VEGA_LOG_DIR").Value {
		t.Errorf("config.yaml log.dir = %v, VEGA_LOG_DIR = %q: they must agree", logDir, envVar(t, c, "VEGA_LOG_DIR").Value)
	}
}

// checkProbes: liveness /healthz and readiness /readyz, on the admin port.
func checkProbes(t *testing.T, c *corev1.Container) {
	t.Helper()
	ports := containerPorts(c)
	for _, p := range []struct {
		name  string
		probe *corev1.Probe
		path  string
	}{{"liveness", c.LivenessProbe, "/healthz"}, {"readiness", c.ReadinessProbe, "/readyz"}} {
		if p.probe == nil || p.probe.HTTPGet == nil {
			t.Errorf("%s probe is not an HTTP GET", p.name)
			continue
		}
		g := p.probe.HTTPGet
		if g.Path != p.path {
			t.Errorf("%s probe path = %q, want %q", p.name, g.Path, p.path)
		}
		if port := resolvePort(c, g.Port.String()); port != ports["admin"] {
			t.Errorf("%s probe port %s = %d, want the admin port %d", p.name, g.Port.String(), port, ports["admin"])
		}
	}
}

// checkSecurity: non-root 65532, nothing writable, nothing to escalate to.
func checkSecurity(t *testing.T, d *appsv1.Deployment, c *corev1.Container) {
	t.Helper()
	pod := d.Spec.Template.Spec
	sc := c.SecurityContext
	psc := pod.SecurityContext
	if sc == nil || psc == nil {
		t.Fatalf("securityContext missing: container %v, pod %v", sc, psc)
	}
	checks := []struct {
		what string
		ok   bool
	}{
		{"pod runAsNonRoot", psc.RunAsNonRoot != nil && *psc.RunAsNonRoot},
		{"runAsNonRoot", sc.RunAsNonRoot != nil && *sc.RunAsNonRoot},
		{"runAsUser 65532", sc.RunAsUser != nil && *sc.RunAsUser == nonrootID},
		{"runAsGroup 65532", sc.RunAsGroup != nil && *sc.RunAsGroup == nonrootID},
		{"readOnlyRootFilesystem", sc.ReadOnlyRootFilesystem != nil && *sc.ReadOnlyRootFilesystem},
		{"allowPrivilegeEscalation false", sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation},
		{"privileged not true", sc.Privileged == nil || !*sc.Privileged},
		{"capabilities drop ALL, add none", sc.Capabilities != nil && slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) && len(sc.Capabilities.Add) == 0},
		{"seccompProfile RuntimeDefault", sc.SeccompProfile != nil && sc.SeccompProfile.Type == corev1.SeccompProfileTypeRuntimeDefault},
		{"pod seccompProfile RuntimeDefault", psc.SeccompProfile != nil && psc.SeccompProfile.Type == corev1.SeccompProfileTypeRuntimeDefault},
		{"automountServiceAccountToken false", pod.AutomountServiceAccountToken != nil && !*pod.AutomountServiceAccountToken},
		{"enableServiceLinks false (no stray VEGA_* variables)", pod.EnableServiceLinks != nil && !*pod.EnableServiceLinks},
		{"resources requests cpu (the HPA's utilisation base) and memory", c.Resources.Requests.Cpu().Sign() > 0 && c.Resources.Requests.Memory().Sign() > 0},
		{"resources limits memory", c.Resources.Limits.Memory().Sign() > 0},
	}
	for _, ck := range checks {
		if !ck.ok {
			t.Errorf("container %s: want %s", c.Name, ck.what)
		}
	}
}

// checkShutdown: the preStop wait is the kubelet's sleep action (no shell in
// the image), and the grace period outlasts it plus the gateway's drain.
func checkShutdown(t *testing.T, d *appsv1.Deployment, c *corev1.Container, cfg map[string]any) {
	t.Helper()
	pod := d.Spec.Template.Spec
	if c.Lifecycle == nil || c.Lifecycle.PreStop == nil || c.Lifecycle.PreStop.Sleep == nil {
		t.Fatalf("preStop is not a sleep action: %+v", c.Lifecycle)
	}
	if pre := c.Lifecycle.PreStop; pre.Exec != nil || pre.HTTPGet != nil || pre.TCPSocket != nil {
		t.Errorf("preStop has a second handler: %+v", pre)
	}
	drainV, _ := lookup(cfg, "gateway.drain_timeout")
	drain, err := time.ParseDuration(toString(drainV))
	if err != nil {
		t.Fatalf("config.yaml gateway.drain_timeout = %v: %v", drainV, err)
	}
	sleep := time.Duration(c.Lifecycle.PreStop.Sleep.Seconds) * time.Second
	if pod.TerminationGracePeriodSeconds == nil {
		t.Fatalf("terminationGracePeriodSeconds unset (Kubernetes default 30s)")
	}
	if grace := time.Duration(*pod.TerminationGracePeriodSeconds) * time.Second; grace <= sleep+drain {
		t.Errorf("terminationGracePeriodSeconds %s <= preStop %s + drain %s: streams would be SIGKILLed", grace, sleep, drain)
	}
}

// checkConfigMount: config.yaml from the ConfigMap, passed with --config.
func checkConfigMount(t *testing.T, r *rendered, d *appsv1.Deployment, c *corev1.Container) {
	t.Helper()
	if !slices.Equal(c.Args, []string{"serve", "--config", configPath}) {
		t.Errorf("args = %q, want serve --config %s", c.Args, configPath)
	}
	cm := must[*corev1.ConfigMap](t, r)
	if !hasMount(d, c, filepath.Dir(configPath), func(v corev1.Volume) bool {
		return v.ConfigMap != nil && v.ConfigMap.Name == cm.Name
	}) {
		t.Errorf("ConfigMap %s is not mounted at %s", cm.Name, filepath.Dir(configPath))
	}
}

// checkKeys: keys come from the Secret as env, never from the ConfigMap
// or as literals.
func checkKeys(t *testing.T, r *rendered, c *corev1.Container, raw string, cfg map[string]any) {
	t.Helper()
	secretName, s, haveSecret := keySecret(t, r)
	var fromSecret []string
	for _, e := range c.Env {
		if strings.HasPrefix(e.Name, "VEGA_AUTH_") {
			ref := e.ValueFrom
			if e.Value != "" || ref == nil || ref.SecretKeyRef == nil {
				t.Errorf("env %s is not from a Secret", e.Name)
				continue
			}
			if ref.SecretKeyRef.Name != secretName {
				t.Errorf("env %s from Secret %q, want %q", e.Name, ref.SecretKeyRef.Name, secretName)
			}
			fromSecret = append(fromSecret, e.Name)
		}
	}
	for _, e := range c.Env {
		// The Redis URL may hold a password: from a Secret only.
		if e.Name == "VEGA_LIMITS_REDIS_URL" && (e.Value != "" || e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil) {
			t.Errorf("env %s is not from a Secret", e.Name)
		}
	}
	if _, ok := lookup(cfg, "limits.redis_url"); ok {
		t.Errorf("config.yaml has limits.redis_url")
	}
	for _, want := range []string{"VEGA_AUTH_API_KEYS", "VEGA_AUTH_ADMIN_API_KEYS"} {
		if !slices.Contains(fromSecret, want) {
			t.Errorf("env %s is not taken from the Secret", want)
		}
	}
	if _, ok := lookup(cfg, "auth.api_keys"); ok {
		t.Errorf("config.yaml has auth.api_keys")
	}
	if haveSecret {
		for key, v := range s.Data {
			for _, secret := range strings.Split(string(v), ",") {
				if len(secret) >= 8 && strings.Contains(raw, secret) {
					t.Errorf("ConfigMap config.yaml contains the value of Secret key %s", key)
				}
			}
		}
		if s.StringData != nil {
			t.Errorf("Secret uses stringData: values would show in `helm get manifest` diffs unencoded")
		}
	}
}

// checkWiring: the Service, PDB and ServiceMonitor select the pods, the HPA
// targets the Deployment, the Ingress reaches the data port.
func checkWiring(t *testing.T, r *rendered, d *appsv1.Deployment, c *corev1.Container) {
	t.Helper()
	pod := d.Spec.Template.Spec
	secretName, s, haveSecret := keySecret(t, r)
	podLabels := labels.Set(d.Spec.Template.Labels)
	sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
	if err != nil || !sel.Matches(podLabels) {
		t.Errorf("Deployment selector %v does not match its pod labels %v (%v)", d.Spec.Selector, podLabels, err)
	}
	svc := must[*corev1.Service](t, r)
	if !labels.SelectorFromSet(svc.Spec.Selector).Matches(podLabels) {
		t.Errorf("Service selector %v does not match pod labels %v", svc.Spec.Selector, podLabels)
	}
	svcPorts := map[string]corev1.ServicePort{}
	for _, p := range svc.Spec.Ports {
		svcPorts[p.Name] = p
		if resolvePort(c, p.TargetPort.String()) != p.Port {
			t.Errorf("Service port %s %d targets %s, which is container port %d", p.Name, p.Port, p.TargetPort.String(), resolvePort(c, p.TargetPort.String()))
		}
	}
	for name, want := range map[string]int32{"http": 8000, "admin": 8001} {
		if got := svcPorts[name].Port; got != want {
			t.Errorf("Service port %s = %d, want %d", name, got, want)
		}
	}
	if pdb, ok := find[*policyv1.PodDisruptionBudget](t, r); ok {
		sel, err := metav1.LabelSelectorAsSelector(pdb.Spec.Selector)
		if err != nil || !sel.Matches(podLabels) {
			t.Errorf("PDB selector %v does not match pod labels (%v)", pdb.Spec.Selector, err)
		}
		if pdb.Spec.MinAvailable != nil {
			t.Errorf("PDB sets minAvailable: with one replica it blocks node drains")
		}
	}
	if h, ok := find[*autoscalingv2.HorizontalPodAutoscaler](t, r); ok {
		ref := h.Spec.ScaleTargetRef
		if ref.Kind != "Deployment" || ref.APIVersion != "apps/v1" || ref.Name != d.Name {
			t.Errorf("HPA targets %+v, want Deployment %s", ref, d.Name)
		}
		if h.Spec.MinReplicas == nil || *h.Spec.MinReplicas < 1 || *h.Spec.MinReplicas > h.Spec.MaxReplicas {
			t.Errorf("HPA min %v max %d", h.Spec.MinReplicas, h.Spec.MaxReplicas)
		}
	}
	if sm, ok := find[*monitoringv1.ServiceMonitor](t, r); ok {
		if !labels.SelectorFromSet(sm.Spec.Selector.MatchLabels).Matches(labels.Set(svc.Labels)) {
			t.Errorf("ServiceMonitor selector %v does not match the Service labels %v", sm.Spec.Selector.MatchLabels, svc.Labels)
		}
		if len(sm.Spec.Endpoints) != 1 {
			t.Fatalf("ServiceMonitor has %d endpoints, want 1", len(sm.Spec.Endpoints))
		}
		ep := sm.Spec.Endpoints[0]
		if ep.Port != "admin" || ep.Path != "/metrics" {
			t.Errorf("ServiceMonitor scrapes port %q path %q, want admin /metrics", ep.Port, ep.Path)
		}
		a := ep.Authorization
		if a == nil || a.Type != "Bearer" || a.Credentials == nil || a.Credentials.Name != secretName {
			t.Errorf("ServiceMonitor authorization = %+v, want a bearer token from Secret %s", a, secretName)
		} else if haveSecret {
			if _, ok := s.Data[a.Credentials.Key]; !ok {
				t.Errorf("ServiceMonitor token key %q is not in Secret %s", a.Credentials.Key, s.Name)
			}
		}
	}
	if ing, ok := find[*networkingv1.Ingress](t, r); ok {
		for _, rule := range ing.Spec.Rules {
			for _, p := range rule.HTTP.Paths {
				b := p.Backend.Service
				if b == nil || b.Name != svc.Name || b.Port.Name != "http" {
					t.Errorf("Ingress %s%s goes to %+v, want Service %s port http", rule.Host, p.Path, b, svc.Name)
				}
			}
		}
	}
	if sa, ok := find[*corev1.ServiceAccount](t, r); ok && sa.Name != pod.ServiceAccountName {
		t.Errorf("pods use ServiceAccount %q, chart creates %q", pod.ServiceAccountName, sa.Name)
	}
	if strings.TrimSpace(r.notes) == "" {
		t.Errorf("NOTES.txt renders empty")
	}
}

// checkNames checks what the API server would refuse and decoding does
// not: object names, label values, port names.
func checkNames(t *testing.T, r *rendered) {
	t.Helper()
	for _, o := range r.objects {
		m := o.obj.(metav1.Object)
		for _, msg := range validation.IsDNS1123Subdomain(m.GetName()) {
			t.Errorf("%s %q: name: %s", o.kind, m.GetName(), msg)
		}
		if m.GetNamespace() != "" {
			t.Errorf("%s %q sets a namespace: Helm's --namespace decides", o.kind, m.GetName())
		}
		for k, v := range m.GetLabels() {
			for _, msg := range append(validation.IsQualifiedName(k), validation.IsValidLabelValue(v)...) {
				t.Errorf("%s %q: label %s=%s: %s", o.kind, m.GetName(), k, v, msg)
			}
		}
	}
	d := must[*appsv1.Deployment](t, r)
	for _, p := range gatewayContainer(t, d).Ports {
		for _, msg := range validation.IsValidPortName(p.Name) {
			t.Errorf("container port %q: %s", p.Name, msg)
		}
	}
}

// keySecret returns the name of the Secret the keys come from, and the
// chart's own Secret when it renders one (not with auth.existingSecret).
func keySecret(t *testing.T, r *rendered) (name string, s *corev1.Secret, ok bool) {
	t.Helper()
	if s, ok = find[*corev1.Secret](t, r); ok {
		return s.Name, s, true
	}
	return secretNamed, nil, false
}

// containerPorts maps the container's port names to numbers.
func containerPorts(c *corev1.Container) map[string]int32 {
	ports := map[string]int32{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	return ports
}
