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

{{/* The agent's settings file (AgentSettings tree). */}}
{{- define "lockstep.agentConfig" -}}
{{- if .Values.agent.config }}
{{- toYaml .Values.agent.config }}
{{- else -}}
{}
{{- end }}
{{- end }}

{{/* The controller's settings file: the chart's first-class safety values, then controller.config over them. */}}
{{- define "lockstep.controllerConfig" -}}
{{- $c := .Values.controller }}
{{- $s := $c.safety }}
{{- $agentCtx := dict "root" . "component" "agent" }}
{{- $base := dict
  "dry_run" $c.dryRun
  "interval_seconds" $c.intervalSeconds
  "safety" (dict
    "max_cordoned_nodes" $s.maxCordonedNodes
    "max_cordoned_percent" $s.maxCordonedPercent
    "max_cordons_per_hour" $s.maxCordonsPerHour
    "breaker_nodes" $s.breaker.nodes
    "breaker_window_seconds" $s.breaker.windowSeconds
    "release_after_healthy_seconds" $s.releaseAfterHealthySeconds
    "on_suspect" $s.onSuspect
    "managed_node_selector" $c.managedNodeSelector)
  "leader_election" (dict
    "lease_name" $c.leaderElection.leaseName
    "lease_namespace" .Release.Namespace
    "lease_duration_seconds" $c.leaderElection.leaseDurationSeconds
    "renew_deadline_seconds" $c.leaderElection.renewDeadlineSeconds)
  "agents" (dict
    "namespace" .Release.Namespace
    "label_selector" (printf "app.kubernetes.io/instance=%s,app.kubernetes.io/component=agent" .Release.Name)
    "port" .Values.agent.port) }}
{{- toYaml (mergeOverwrite $base (deepCopy $c.config)) }}
{{- end }}
