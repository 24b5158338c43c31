{{/*
Chart name, truncated to 63 characters (the DNS label limit).
*/}}
{{- define "strata.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: <release>-<chart>, or the release name alone when it already
contains the chart name. Truncated so that "<fullname>-dataplane" still fits
in 63 characters.
*/}}
{{- define "strata.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 53 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 53 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 53 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "strata.operator.fullname" -}}
{{- printf "%s-operator" (include "strata.fullname" .) }}
{{- end }}

{{- define "strata.dataplane.fullname" -}}
{{- printf "%s-dataplane" (include "strata.fullname" .) }}
{{- end }}

{{/*
Chart label value: <name>-<version>.
*/}}
{{- define "strata.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every resource.
*/}}
{{- define "strata.labels" -}}
helm.sh/chart: {{ include "strata.chart" . }}
{{ include "strata.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: strata
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels shared by all components; combine with a component label.
*/}}
{{- define "strata.selectorLabels" -}}
app.kubernetes.io/name: {{ include "strata.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "strata.operator.labels" -}}
{{ include "strata.labels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "strata.operator.selectorLabels" -}}
{{ include "strata.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "strata.dataplane.labels" -}}
{{ include "strata.labels" . }}
app.kubernetes.io/component: dataplane
{{- end }}

{{- define "strata.dataplane.selectorLabels" -}}
{{ include "strata.selectorLabels" . }}
app.kubernetes.io/component: dataplane
{{- end }}

{{/*
Name of the operator's ServiceAccount.
*/}}
{{- define "strata.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (include "strata.operator.fullname" .) .Values.operator.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Image reference of a component: repository@digest, else repository:tag
(tag defaults to the chart's appVersion). Call with (dict "image" .Values.x.image "root" $).
*/}}
{{- define "strata.image" -}}
{{- $image := .image }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default .root.Chart.AppVersion $image.tag | toString) }}
{{- end }}
{{- end }}

{{/*
In-cluster URL of the data plane Service.
*/}}
{{- define "strata.dataplane.url" -}}
{{- printf "http://%s.%s.svc:%d" (include "strata.dataplane.fullname" .) .Release.Namespace (int .Values.dataplane.service.port) }}
{{- end }}

{{/*
Default preferred pod anti-affinity spreading a component's replicas over
nodes. Call with (dict "component" "operator" "root" $).
*/}}
{{- define "strata.defaultAffinity" -}}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "strata.selectorLabels" .root | nindent 12 }}
            app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
Storage settings shared by the operator and the data plane (environment).
*/}}
{{- define "strata.storageEnv" -}}
{{- $st := .Values.storage }}
- name: STRATA_STORAGE_BACKEND
  value: {{ $st.backend | quote }}
{{- if eq $st.backend "s3" }}
{{- with $st.s3.endpoint }}
- name: STRATA_S3_ENDPOINT
  value: {{ . | quote }}
{{- end }}
- name: STRATA_S3_REGION
  value: {{ $st.s3.region | quote }}
- name: STRATA_S3_BUCKET
  value: {{ $st.s3.bucket | quote }}
- name: STRATA_S3_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ required "storage.s3.existingSecret is required with the s3 backend: the Secret holding the S3 access key" $st.s3.existingSecret }}
      key: {{ $st.s3.accessKeyIdKey }}
- name: STRATA_S3_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $st.s3.existingSecret }}
      key: {{ $st.s3.secretAccessKeyKey }}
{{- else }}
- name: STRATA_STORAGE_ROOT
  value: /var/lib/strata/objects
{{- end }}
{{- end }}

{{/*
Volume and mount of the fs storage backend (nothing with s3).
*/}}
{{- define "strata.storageVolume" -}}
{{- if eq .Values.storage.backend "fs" }}
- name: objects
  persistentVolumeClaim:
    claimName: {{ required "storage.fs.existingClaim is required with the fs backend: a ReadWriteMany PersistentVolumeClaim" .Values.storage.fs.existingClaim }}
{{- end }}
{{- end }}
{{- define "strata.storageMount" -}}
{{- if eq .Values.storage.backend "fs" }}
- name: objects
  mountPath: /var/lib/strata/objects
{{- end }}
{{- end }}

{{/*
Name of the Secret holding the cursor key.
*/}}
{{- define "strata.cursorKeySecret" -}}
{{- default (printf "%s-cursor-key" (include "strata.fullname" .)) .Values.cursorKey.existingSecret }}
{{- end }}

{{/*
Name of the operator's leader Lease.
*/}}
{{- define "strata.leaseName" -}}
{{- default (include "strata.operator.fullname" .) .Values.operator.leaseName }}
{{- end }}

{{/*
Fails the render on inconsistent values.
*/}}
{{- define "strata.validate" -}}
{{- if and (gt (int .Values.operator.replicas) 1) (not .Values.operator.leaderElection) }}
{{- fail "operator.replicas > 1 requires operator.leaderElection=true (replicas would reconcile the same tenants concurrently)" }}
{{- end }}
{{- if ge (add (int .Values.dataplane.shutdownGraceSeconds) (int .Values.dataplane.preStopSleepSeconds)) (int .Values.dataplane.terminationGracePeriodSeconds) }}
{{- fail "dataplane.shutdownGraceSeconds + preStopSleepSeconds must be below dataplane.terminationGracePeriodSeconds" }}
{{- end }}
{{- $ttl := int .Values.operator.inviteTTLHours }}
{{- if or (lt $ttl 1) (gt $ttl 8760) }}
{{- fail "operator.inviteTTLHours must be between 1 and 8760" }}
{{- end }}
{{- if lt (int .Values.operator.concurrency) 1 }}
{{- fail "operator.concurrency must be at least 1" }}
{{- end }}
{{- $hpa := .Values.dataplane.autoscaling }}
{{- if and $hpa.enabled (gt (int $hpa.minReplicas) (int $hpa.maxReplicas)) }}
{{- fail "dataplane.autoscaling.minReplicas must not exceed maxReplicas" }}
{{- end }}
{{- if and (eq .Values.storage.backend "fs") (gt (int .Values.dataplane.replicas) 1) (not .Values.storage.fs.existingClaim) }}
{{- fail "storage.backend=fs needs storage.fs.existingClaim (a ReadWriteMany volume every pod shares)" }}
{{- end }}
{{- end }}
