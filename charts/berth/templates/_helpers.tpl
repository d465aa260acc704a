{{/* The release's base name, at most 63 characters as a label value must be. */}}
{{- define "berth.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "berth.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "berth.labels" -}}
{{ include "berth.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "berth.image" -}}
{{- $repo := required "image.repository is required" .Values.image.repository -}}
{{- printf "%s:%s" $repo (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* Paths the daemon uses, from the config or the daemon's defaults. */}}
{{- define "berth.socket" -}}
{{- dig "grpc" "socket" "/run/berth/berth.sock" .Values.config -}}
{{- end -}}

{{/*
The environment of node.sh (files/node.sh), shared by the installer and the uninstaller.
*/}}
{{- define "berth.nodeEnv" -}}
- name: HOST_ROOT
  value: /host
- name: BIN_DIR
  value: {{ .Values.install.binDir | trimSuffix "/" | quote }}
- name: CONFIG_DIR
  value: {{ .Values.install.configDir | trimSuffix "/" | quote }}
- name: UNIT_DIR
  value: {{ .Values.install.unitDir | trimSuffix "/" | quote }}
- name: SOCKET
  value: {{ include "berth.socket" . | quote }}
- name: BERTH_ROOT
  value: {{ .Values.config.root | default "/var/lib/berth" | quote }}
- name: BERTH_STATE
  value: {{ .Values.config.state | default "/run/berth" | quote }}
- name: READY_TIMEOUT
  value: {{ .Values.install.readyTimeoutSeconds | int | quote }}
- name: CGROUP_DRIVER
  value: {{ dig "cgroup" "driver" "cgroupfs" .Values.config | quote }}
- name: KUBELET_RECONFIGURE
  value: {{ .Values.kubelet.reconfigure | toString | quote }}
- name: KUBELET_CONFIG
  value: {{ .Values.kubelet.configFile | quote }}
- name: KUBELET_FLAGS
  value: {{ .Values.kubelet.flagsFile | quote }}
- name: KUBELET_SERVICE
  value: {{ .Values.kubelet.service | quote }}
- name: PURGE_STATE
  value: {{ .Values.uninstall.purgeState | toString | quote }}
{{- end -}}

{{/* Scheduling shared by the installer and the uninstaller: the same nodes. */}}
{{- define "berth.scheduling" -}}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/*
TOML for the config map: a table's plain keys first, then its sub-tables, keys sorted.
Helm's toToml would write every number as a float ("1500.0"), which Berth refuses for an
integer key, so the chart writes TOML itself. Argument: (dict "table" MAP "path" LIST).
*/}}
{{- define "berth.toml.table" -}}
{{- $path := .path -}}
{{- range $k, $v := .table }}
{{- if not (kindIs "map" $v) }}
{{ include "berth.toml.key" $k }} = {{ include "berth.toml.value" $v }}
{{- end }}
{{- end }}
{{- range $k, $v := .table }}
{{- if kindIs "map" $v }}
{{- $p := append $path (include "berth.toml.key" $k) }}

[{{ join "." $p }}]
{{- include "berth.toml.table" (dict "table" $v "path" $p) }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "berth.toml.key" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . }}{{ . }}{{ else }}{{ toJson . }}{{ end -}}
{{- end -}}

{{- define "berth.toml.value" -}}
{{- if kindIs "string" . }}{{ toJson . }}
{{- else if kindIs "bool" . }}{{ . }}
{{- else if or (kindIs "float64" .) (kindIs "int" .) (kindIs "int64" .) }}
{{- if eq (float64 .) (floor .) }}{{ int64 . }}{{ else }}{{ . }}{{ end }}
{{- else if kindIs "slice" . }}[{{ range $i, $e := . }}{{ if $i }}, {{ end }}{{ include "berth.toml.value" $e }}{{ end }}]
{{- else }}{{ fail (printf "config: a value of kind %s cannot be written to config.toml" (kindOf .)) }}
{{- end }}
{{- end -}}

{{/* /etc/berth/config.toml, written from .Values.config. */}}
{{- define "berth.configToml" -}}
# Written by the berth Helm chart (release {{ .Release.Name }}); edit the chart's values.
{{ include "berth.toml.table" (dict "table" .Values.config "path" list) | trim }}
{{ end -}}
