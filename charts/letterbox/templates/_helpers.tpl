{{/* Name prefix of every object the chart renders. */}}
{{- define "letterbox.fullname" -}}
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

{{- define "letterbox.selectorLabels" -}}
app.kubernetes.io/name: {{ default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "letterbox.labels" -}}
{{ include "letterbox.selectorLabels" . }}
app.kubernetes.io/part-of: letterbox
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "letterbox.serviceAccountName" -}}
{{- default (include "letterbox.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{/* Namespace the mail system lives in: the operator's Role is there. */}}
{{- define "letterbox.mailNamespace" -}}
{{- default .Release.Namespace .Values.mail.namespace -}}
{{- end -}}

{{- define "letterbox.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/*
The operator's settings file: `mail` values as the operator reads them, with the namespace made
explicit and the mail pods' image defaulting to the operator's own (one image, both entry points).
*/}}
{{- define "letterbox.settings" -}}
{{- $settings := deepCopy .Values.mail -}}
{{- $_ := set $settings "namespace" (include "letterbox.mailNamespace" .) -}}
{{- if not (hasKey $settings "image") -}}
{{- $image := dict "repository" .Values.image.repository "tag" (default .Chart.AppVersion .Values.image.tag) "pullPolicy" .Values.image.pullPolicy -}}
{{- if .Values.image.digest -}}
{{- $_ := set $image "digest" .Values.image.digest -}}
{{- end -}}
{{- $_ := set $settings "image" $image -}}
{{- end -}}
{{- if and .Values.imagePullSecrets (not (hasKey $settings "imagePullSecrets")) -}}
{{- $_ := set $settings "imagePullSecrets" .Values.imagePullSecrets -}}
{{- end -}}
{{- toYaml $settings -}}
{{- end -}}
