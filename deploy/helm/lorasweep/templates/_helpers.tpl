{{/* Names are cut to 63 characters: the limit of a DNS label, and so of a Service name. */}}
{{- define "lorasweep.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "lorasweep.fullname" -}}
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

{{/* Leaves room for the "-coordinator" suffix within 63 characters. */}}
{{- define "lorasweep.coordinatorName" -}}
{{- printf "%s-coordinator" (include "lorasweep.fullname" . | trunc 51 | trimSuffix "-") }}
{{- end }}

{{- define "lorasweep.workerName" -}}
{{- printf "%s-worker" (include "lorasweep.fullname" . | trunc 56 | trimSuffix "-") }}
{{- end }}

{{- define "lorasweep.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "lorasweep.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector labels must never change between upgrades: selectors are immutable. */}}
{{- define "lorasweep.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lorasweep.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "lorasweep.tokenSecretName" -}}
{{- if .Values.tokens.existingSecret }}
{{- .Values.tokens.existingSecret }}
{{- else }}
{{- printf "%s-tokens" (include "lorasweep.fullname" .) }}
{{- end }}
{{- end }}

{{- define "lorasweep.coordinatorURL" -}}
{{- printf "%s://%s:50051" (ternary "https" "http" .Values.tls.enabled) (include "lorasweep.coordinatorName" .) }}
{{- end }}

{{- define "lorasweep.coordinatorImage" -}}
{{- printf "%s:%s" .Values.coordinator.image.repository (.Values.coordinator.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{- define "lorasweep.workerImage" -}}
{{- $tag := .Values.worker.image.tag | default (printf "%s%s" .Chart.AppVersion (ternary "-cuda" "" .Values.gpu.enabled)) }}
{{- printf "%s:%s" .Values.worker.image.repository $tag }}
{{- end }}

{{- define "lorasweep.workerDevice" -}}
{{- .Values.worker.device | default (ternary "cuda" "cpu" .Values.gpu.enabled) }}
{{- end }}

{{/*
Seconds in a duration of the form the schema allows for worker.shutdownGrace ("90s", "2m",
"1m30s"), so that it can be compared with terminationGracePeriodSeconds.
*/}}
{{- define "lorasweep.durationSeconds" -}}
{{- $m := regexFind "[0-9]+m" . | trimSuffix "m" | default "0" | atoi }}
{{- $s := regexFind "[0-9]+s" . | trimSuffix "s" | default "0" | atoi }}
{{- add (mul $m 60) $s }}
{{- end }}

{{/*
Checks that the schema cannot express: it sees each value alone. Included by every workload, so
`helm template -s` of one file still runs them.
*/}}
{{- define "lorasweep.validate" -}}
{{- $t := .Values.tokens }}
{{- if not $t.existingSecret }}
{{- if or (not $t.admin) (not $t.worker) }}
{{- fail "tokens: set tokens.admin and tokens.worker, or tokens.existingSecret (a Secret with the keys admin-token and worker-token)" }}
{{- end }}
{{- if eq $t.admin $t.worker }}
{{- fail "tokens: tokens.admin and tokens.worker must differ (the coordinator refuses one token for both roles)" }}
{{- end }}
{{- end }}
{{- if and .Values.tls.enabled (not .Values.tls.existingSecret) }}
{{- fail "tls: tls.enabled needs tls.existingSecret, a kubernetes.io/tls Secret for the coordinator" }}
{{- end }}
{{- if and .Values.tls.ca.existingSecret .Values.tls.ca.existingConfigMap }}
{{- fail "tls.ca: give existingSecret or existingConfigMap, not both" }}
{{- end }}
{{- $grace := include "lorasweep.durationSeconds" .Values.worker.shutdownGrace | atoi }}
{{- if le (int .Values.worker.terminationGracePeriodSeconds) $grace }}
{{- fail (printf "worker.terminationGracePeriodSeconds (%d) must exceed worker.shutdownGrace (%s = %ds), or kubelet kills workers before they release their leases" (int .Values.worker.terminationGracePeriodSeconds) .Values.worker.shutdownGrace $grace) }}
{{- end }}
{{- end }}

{{/* Pod-level security: the images' user (uid/gid 10001), which also owns mounted volumes. */}}
{{- define "lorasweep.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
# Skips the recursive chown of a large, already-owned volume on every start.
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "lorasweep.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end }}

{{- define "lorasweep.prometheusAnnotations" -}}
{{- if .root.Values.metrics.podAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end }}

{{/* The CA that clients of port 50051 trust, as a volume; empty unless TLS is on. */}}
{{- define "lorasweep.caVolume" -}}
{{- if .Values.tls.enabled -}}
- name: tls-ca
  {{- if .Values.tls.ca.existingConfigMap }}
  configMap:
    name: {{ .Values.tls.ca.existingConfigMap }}
  {{- else }}
  secret:
    secretName: {{ .Values.tls.ca.existingSecret | default .Values.tls.existingSecret }}
  {{- end }}
    items:
      - key: {{ .Values.tls.ca.key }}
        path: ca.crt
{{- end }}
{{- end }}

{{- define "lorasweep.coordinatorPodAnnotations" -}}
{{- if not .Values.tokens.existingSecret }}
# Restarts the pod when the chart's tokens change: they are read once, at start-up.
checksum/tokens: {{ include (print .Template.BasePath "/secret.yaml") . | sha256sum }}
{{- end }}
{{- include "lorasweep.prometheusAnnotations" (dict "root" . "port" 9090) }}
{{- with .Values.coordinator.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "lorasweep.workerPodAnnotations" -}}
{{- if not .Values.tokens.existingSecret }}
checksum/tokens: {{ include (print .Template.BasePath "/secret.yaml") . | sha256sum }}
{{- end }}
{{- include "lorasweep.prometheusAnnotations" (dict "root" . "port" 9091) }}
{{- with .Values.worker.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end }}
