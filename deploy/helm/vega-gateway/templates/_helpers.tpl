{{/*
Names and labels, the usual Helm conventions: 63 characters at most because
Kubernetes names and label values are DNS labels.
*/}}
{{- define "vega-gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "vega-gateway.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "vega-gateway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "vega-gateway.labels" -}}
helm.sh/chart: {{ include "vega-gateway.chart" . }}
{{ include "vega-gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ (default .Chart.AppVersion .Values.image.tag) | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector labels: immutable on a Deployment, so nothing that changes. */}}
{{- define "vega-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vega-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "vega-gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "vega-gateway.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret the keys come from: the chart's own, or auth.existingSecret. */}}
{{- define "vega-gateway.secretName" -}}
{{- default (include "vega-gateway.fullname" .) .Values.auth.existingSecret }}
{{- end }}

{{- define "vega-gateway.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
terminationGracePeriodSeconds: the preStop sleep runs first and counts
against the grace period, then SIGTERM starts the drain; the margin lets the
gateway end the last streams and flush its logs before the kubelet's SIGKILL.
*/}}
{{- define "vega-gateway.terminationGracePeriodSeconds" -}}
{{- $l := .Values.lifecycle }}
{{- add (int $l.preStopSleepSeconds) (int $l.drainTimeoutSeconds) (int $l.terminationMarginSeconds) }}
{{- end }}

{{/*
config.yaml: the user's config block with the chart-owned keys set from
ports, lifecycle and logs. Chart-owned keys in the config block are refused
rather than silently overwritten, and so are keys, which belong in the Secret
(a ConfigMap is readable by anyone who can read the namespace).
*/}}
{{- define "vega-gateway.config" -}}
{{- $cfg := deepCopy (default dict .Values.config) }}
{{- $owned := dict
      "gateway.listen" "ports.http"
      "gateway.drain_timeout" "lifecycle.drainTimeoutSeconds"
      "admin.listen" "ports.admin"
      "log.dir" "logs.dir"
      "auth.api_keys" "auth.apiKeys"
      "auth.admin_api_keys" "auth.adminApiKeys"
      "auth.keys" "auth.keysJSON"
      "auth.ollama_keys" "auth.ollamaKeysJSON"
      "limits.redis_url" "redis.url" }}
{{- range $path, $use := $owned }}
{{- $parts := splitList "." $path }}
{{- $section := get $cfg (first $parts) }}
{{- if and (kindIs "map" $section) (hasKey $section (last $parts)) }}
{{- fail (printf "config.%s is set by the chart: use %s instead" $path $use) }}
{{- end }}
{{- end }}
{{- $chart := dict
      "gateway" (dict "listen" (include "vega-gateway.listenHTTP" .) "drain_timeout" (printf "%ds" (int .Values.lifecycle.drainTimeoutSeconds)))
      "admin" (dict "listen" (include "vega-gateway.listenAdmin" .))
      "log" (dict "dir" .Values.logs.dir) }}
{{- toYaml (mustMergeOverwrite $cfg $chart) }}
{{- end }}

{{/* All interfaces, IPv4 and IPv6: probes and scrapes come to the pod IP. */}}
{{- define "vega-gateway.listenHTTP" -}}
{{- printf ":%d" (int .Values.ports.http) }}
{{- end }}

{{- define "vega-gateway.listenAdmin" -}}
{{- printf ":%d" (int .Values.ports.admin) }}
{{- end }}

{{/*
Keys are checked here as the gateway checks them at start-up, so a bad value
fails `helm install` instead of crash-looping pods: at least 32 characters
(F-37), and no comma, which would split one key in two in the
comma-separated VEGA_AUTH_* variables.
*/}}
{{- define "vega-gateway.checkKeys" -}}
{{- if and .Values.redis.url .Values.redis.existingSecret }}
{{- fail "redis.url and redis.existingSecret: set one" }}
{{- end }}
{{- if and .Values.redis.url .Values.auth.existingSecret }}
{{- fail "redis.url needs the chart's Secret, which auth.existingSecret replaces: put the URL in a Secret and set redis.existingSecret" }}
{{- end }}
{{- range $field, $keys := dict "auth.apiKeys" .Values.auth.apiKeys "auth.adminApiKeys" .Values.auth.adminApiKeys }}
{{- range $i, $k := $keys }}
{{- if lt (len (toString $k)) 32 }}
{{- fail (printf "%s[%d]: a key must be at least 32 characters" $field $i) }}
{{- end }}
{{- if contains "," (toString $k) }}
{{- fail (printf "%s[%d]: a key must not contain a comma" $field $i) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The admin key list: auth.adminApiKeys; else nothing when auth.apiKeys is set
(the gateway falls back to the API keys); else one generated key, reused from
the release's Secret on upgrades so pods are not rolled with a new key (lookup
sees nothing under `helm template` or --dry-run, where a fresh one is shown).
*/}}
{{- define "vega-gateway.adminKeys" -}}
{{- if .Values.auth.adminApiKeys }}
{{- join "," .Values.auth.adminApiKeys }}
{{- else if not .Values.auth.apiKeys }}
{{- $prev := lookup "v1" "Secret" .Release.Namespace (include "vega-gateway.fullname" .) }}
{{- if and $prev $prev.data (hasKey $prev.data "VEGA_AUTH_ADMIN_API_KEYS") }}
{{- index $prev.data "VEGA_AUTH_ADMIN_API_KEYS" | b64dec }}
{{- else }}
{{- randAlphaNum 48 }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Non-empty when the admin listener serves HTTPS (tls.existingSecret and
tls.admin): its probes and the ServiceMonitor then use https.
*/}}
{{- define "vega-gateway.adminTLS" -}}
{{- if and .Values.tls.existingSecret .Values.tls.admin }}true{{ end }}
{{- end }}
