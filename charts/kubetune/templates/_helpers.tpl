{{/* Names, labels and images used by every template. */}}

{{- define "kubetune.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kubetune.fullname" -}}
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

{{/* Cluster-scoped objects carry the release namespace: two releases of the same name in
two namespaces must not fight over one ClusterRole. */}}
{{- define "kubetune.clusterName" -}}
{{- printf "%s-%s" .Release.Namespace (include "kubetune.fullname" .) }}
{{- end }}

{{- define "kubetune.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The operator's pods. Trainer pods share app.kubernetes.io/name but never carry
app.kubernetes.io/component=operator, and the operator's never carry kubetune.io/finetunejob. */}}
{{- define "kubetune.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubetune.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "kubetune.labels" -}}
helm.sh/chart: {{ include "kubetune.chart" . }}
{{ include "kubetune.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: kubetune
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "kubetune.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kubetune.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* An image reference from {repository, tag, digest}; call with (list $image $defaultTag).
A digest wins over a tag. */}}
{{- define "kubetune.image" -}}
{{- $image := index . 0 }}
{{- $tag := default (index . 1) $image.tag }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository $tag }}
{{- end }}
{{- end }}

{{/* Namespaces that get a trainer NetworkPolicy: those listed, else the watched ones. */}}
{{- define "kubetune.networkPolicyNamespaces" -}}
{{- $namespaces := .Values.networkPolicy.namespaces | default .Values.watchNamespaces }}
{{- if not $namespaces }}
{{- fail "networkPolicy.enabled: list the namespaces where FineTuneJobs run in networkPolicy.namespaces (the operator watches all namespaces, and the chart cannot create a policy in namespaces it does not know)" }}
{{- end }}
{{- toJson $namespaces }}
{{- end }}
