{{/* Names and labels, as `helm create` makes them. */}}
{{- define "worker.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "worker.fullname" -}}
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

{{- define "worker.selectorLabels" -}}
app.kubernetes.io/name: {{ include "worker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "worker.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "worker.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: cht
{{- end }}

{{/* The Secret with the RapidPro token and webhook key: the operator's, or the one made here. */}}
{{- define "worker.rapidproSecret" -}}
{{- .Values.rapidpro.existingSecret | default (printf "%s-rapidpro" (include "worker.fullname" .)) }}
{{- end }}

{{- define "worker.couchSecret" -}}
{{- required "couchdb.existingSecret: name the Secret holding CHT's CouchDB URL (CHT's chart makes cht-couchdb-credentials)" .Values.couchdb.existingSecret }}
{{- end }}

{{/* WEBHOOK_PUBLIC_URL: as given, else https:// and the first Ingress host. */}}
{{- define "worker.publicUrl" -}}
{{- if .Values.webhookPublicUrl }}
{{- .Values.webhookPublicUrl }}
{{- else if and .Values.ingress.enabled .Values.ingress.hosts }}
{{- printf "https://%s" (first .Values.ingress.hosts) }}
{{- end }}
{{- end }}
