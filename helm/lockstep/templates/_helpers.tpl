{{/* Names, labels and the image reference shared by every template. */}}

{{- define "lockstep.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "lockstep.fullname" -}}
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

{{/* Object name of a component: <fullname>-agent, <fullname>-controller (fits 63 characters). */}}
{{- define "lockstep.componentName" -}}
{{- printf "%s-%s" (include "lockstep.fullname" .root | trunc 52 | trimSuffix "-") .component }}
{{- end }}

{{- define "lockstep.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "lockstep.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: lockstep
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "lockstep.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lockstep.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of one component; `lockstep.dev/scrape-job` names the Prometheus job the rules and dashboards use. */}}
{{- define "lockstep.componentLabels" -}}
{{ include "lockstep.labels" .root }}
app.kubernetes.io/component: {{ .component }}
lockstep.dev/scrape-job: lockstep-{{ .component }}
{{- end }}

{{- define "lockstep.componentSelectorLabels" -}}
{{ include "lockstep.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "lockstep.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{- define "lockstep.serviceAccountName" -}}
{{- $sa := index .root.Values.serviceAccount .component }}
{{- if $sa.create }}
{{- default (include "lockstep.componentName" .) $sa.name }}
{{- else }}
{{- default "default" $sa.name }}
{{- end }}
{{- end }}

{{/* Container security context of both daemons: nothing beyond what each needs. */}}
{{- define "lockstep.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end }}

{{/* The agent's settings file (AgentSettings): host mounts, socket dir and log level, then agent.config over them. */}}
{{- define "lockstep.agentConfig" -}}
{{- $base := dict
  "log_level" .Values.agent.logLevel
  "network" (dict "sysfs_root" "/host/sys")
  "host" (dict "procfs_root" "/host/proc" "tcp_namespace_pid" (ternary "self" "1" .Values.agent.hostNetwork))
  "periodicity" (dict "sysfs_net" "/host/sys/class/net")
  "collective" (dict "socket_dir" .Values.agent.socketDir "proc_root" "/host/proc") }}
{{- toYaml (mergeOverwrite $base (deepCopy .Values.agent.config)) }}
{{- end }}

{{/* The controller's settings file (ControllerSettings): the chart's first-class values, then controller.config over them. */}}
{{- define "lockstep.controllerConfig" -}}
{{- $c := .Values.controller }}
{{- $s := $c.safety }}
{{- $base := dict
  "dry_run" $c.dryRun
  "interval_seconds" $c.intervalSeconds
  "log_level" $c.logLevel
  "kube" (dict
    "namespace" .Release.Namespace
    "node_selector" $c.managedNodeSelector
    "agent_namespace" .Release.Namespace
    "agent_label_selector" (printf "app.kubernetes.io/instance=%s,app.kubernetes.io/component=agent" .Release.Name)
    "agent_port" .Values.agent.port
    "breaker_configmap" (default (printf "%s-breaker" (include "lockstep.fullname" . | trunc 55 | trimSuffix "-")) $c.breakerConfigMap))
  "leader" (dict
    "enabled" true
    "lease_name" (default (include "lockstep.componentName" (dict "root" . "component" "controller")) $c.leaderElection.leaseName)
    "lease_duration_seconds" $c.leaderElection.leaseDurationSeconds
    "renew_deadline_seconds" $c.leaderElection.renewDeadlineSeconds)
  "safety" (dict
    "max_cordoned_nodes" $s.maxCordonedNodes
    "max_cordoned_ratio" $s.maxCordonedRatio
    "max_cordons_per_window" $s.maxCordonsPerWindow
    "rate_window_seconds" $s.rateWindowSeconds
    "breaker_nodes" $s.breaker.nodes
    "breaker_window_seconds" $s.breaker.windowSeconds
    "auto_release_after_seconds" (ternary nil $s.autoReleaseAfterSeconds (eq (int $s.autoReleaseAfterSeconds) 0))
    "suspect_events" $s.suspectEvents) }}
{{- toYaml (mergeOverwrite $base (deepCopy $c.config)) }}
{{- end }}
