{{/* Names: <fullname>-gateway and <fullname>-triton, truncated to the 63-character DNS limit. */}}
{{- define "bid-gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "bid-gateway.fullname" -}}
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

{{- define "bid-gateway.gateway.fullname" -}}
{{- printf "%s-gateway" (include "bid-gateway.fullname" . | trunc 55 | trimSuffix "-") }}
{{- end }}

{{- define "bid-gateway.triton.fullname" -}}
{{- printf "%s-triton" (include "bid-gateway.fullname" . | trunc 56 | trimSuffix "-") }}
{{- end }}

{{- define "bid-gateway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Standard labels; call with (dict "ctx" $ "component" "gateway"). */}}
{{- define "bid-gateway.labels" -}}
helm.sh/chart: {{ include "bid-gateway.chart" .ctx }}
{{ include "bid-gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: bid-gateway
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "bid-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "bid-gateway.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "bid-gateway.gateway.serviceAccountName" -}}
{{- if .Values.gateway.serviceAccount.create }}
{{- default (include "bid-gateway.gateway.fullname" .) .Values.gateway.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.gateway.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "bid-gateway.triton.serviceAccountName" -}}
{{- if .Values.triton.serviceAccount.create }}
{{- default (include "bid-gateway.triton.fullname" .) .Values.triton.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.triton.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "bid-gateway.gateway.image" -}}
{{- printf "%s:%s" .Values.gateway.image.repository (default .Chart.AppVersion .Values.gateway.image.tag) }}
{{- end }}

{{- define "bid-gateway.triton.headlessName" -}}
{{- printf "%s-headless" (include "bid-gateway.triton.fullname" . | trunc 54 | trimSuffix "-") }}
{{- end }}

{{/*
The Triton gRPC target the gateway dials. By default every ready Triton pod, through the headless
Service's A records (dns:///, fully qualified: no search-domain round trips); the gateway balances calls
over them and re-resolves on gateway.config.tritonResolveIntervalSeconds (gateway/scoring/fleet.py).
*/}}
{{- define "bid-gateway.tritonUrl" -}}
{{- if .Values.gateway.config.tritonUrl }}
{{- .Values.gateway.config.tritonUrl }}
{{- else if .Values.triton.enabled }}
{{- $port := ternary 8000 8001 (eq .Values.gateway.config.tritonProtocol "http") }}
{{- printf "dns:///%s.%s.svc.%s:%d" (include "bid-gateway.triton.headlessName" .) .Release.Namespace .Values.clusterDomain $port }}
{{- else }}
{{- fail "gateway.config.tritonUrl is required when triton.enabled=false" }}
{{- end }}
{{- end }}

{{/*
terminationGracePeriodSeconds: the app turns unready at SIGTERM, waits drainDelaySeconds, then gives
in-flight bids shutdownGraceSeconds; the kubelet must not SIGKILL before both have passed.
*/}}
{{- define "bid-gateway.gateway.terminationGracePeriodSeconds" -}}
{{- $c := .Values.gateway.config }}
{{- add (ceil $c.drainDelaySeconds | int) (ceil $c.shutdownGraceSeconds | int) .Values.gateway.terminationGraceExtraSeconds }}
{{- end }}

{{/* Restricted-profile container security context (Pod Security Standards "restricted"). */}}
{{- define "bid-gateway.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* topologySpreadConstraints; call with (dict "ctx" $ "component" "gateway" "spread" .Values.gateway.topologySpread). */}}
{{- define "bid-gateway.topologySpread" -}}
{{- $root := . }}
{{- range .spread.topologyKeys }}
- maxSkew: {{ $root.spread.maxSkew }}
  topologyKey: {{ . }}
  whenUnsatisfiable: {{ $root.spread.whenUnsatisfiable }}
  labelSelector:
    matchLabels:
      {{- include "bid-gateway.selectorLabels" (dict "ctx" $root.ctx "component" $root.component) | nindent 6 }}
  matchLabelKeys:
    - pod-template-hash
{{- end }}
{{- end }}

{{/* The Prometheus scrapers allowed by the NetworkPolicies. */}}
{{- define "bid-gateway.prometheusPeer" -}}
- namespaceSelector:
    {{- toYaml .Values.networkPolicy.prometheus.namespaceSelector | nindent 4 }}
  {{- with .Values.networkPolicy.prometheus.podSelector }}
  podSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
