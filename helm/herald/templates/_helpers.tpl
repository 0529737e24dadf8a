{{/* Names and labels shared by every manifest. */}}

{{- define "herald.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "herald.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "herald.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "herald.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component: server, redis, or a worker's name. */}}
{{- define "herald.selectorLabels" -}}
app.kubernetes.io/name: {{ include "herald.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "herald.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "herald.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "herald.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "herald.secretName" -}}
{{- .Values.existingSecret | default (include "herald.fullname" .) -}}
{{- end -}}

{{/* An environment value as Herald reads it: lists as JSON, whole numbers without a
     decimal point or an exponent (YAML numbers reach templates as float64). */}}
{{- define "herald.envValue" -}}
{{- if kindIs "slice" . -}}
{{- toJson . -}}
{{- else if and (kindIs "float64" .) (eq . (floor .)) -}}
{{- int64 . -}}
{{- else -}}
{{- toString . -}}
{{- end -}}
{{- end -}}

{{/* Where Redis is: required, since replicas share all state through it. */}}
{{- define "herald.checkRedis" -}}
{{- if and (not .Values.redis.url) (not .Values.redis.deploy) (not .Values.existingSecret) -}}
{{- fail "Herald needs Redis: set redis.url (your Redis), redis.deploy=true (one for trying out), or existingSecret with HERALD_REDIS_URL" -}}
{{- end -}}
{{- end -}}

{{/* "true" when the chart runs its own Redis: asked for, and no redis.url given (a URL
means "use this Redis"). */}}
{{- define "herald.ownRedis" -}}
{{- if and .Values.redis.deploy (not .Values.redis.url) -}}true{{- end -}}
{{- end -}}

{{/* Pod and container security: the restricted Pod Security Standard. */}}
{{- define "herald.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "herald.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The environment every Herald process gets: the config, the secrets, and Redis. */}}
{{- define "herald.envFrom" -}}
- configMapRef:
    name: {{ include "herald.fullname" . }}
- secretRef:
    name: {{ include "herald.secretName" . }}
    optional: true
{{- end -}}

{{- define "herald.env" -}}
{{- if include "herald.ownRedis" . }}
- name: HERALD_REDIS_URL
  value: {{ printf "redis://%s-redis:6379/0" (include "herald.fullname" .) | quote }}
{{- end }}
{{- end -}}

{{- define "herald.checksums" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
checksum/secret: {{ include (print .Template.BasePath "/secret.yaml") . | sha256sum }}
{{- end -}}
