{{- define "rill.name" -}}
{{- .Release.Name | trunc 58 | trimSuffix "-" -}}
{{- end -}}

{{- define "rill.selectorLabels" -}}
app.kubernetes.io/name: rill
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "rill.labels" -}}
{{ include "rill.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "rill.eppName" -}}
{{- printf "%s-epp" (include "rill.name" .) -}}
{{- end -}}
