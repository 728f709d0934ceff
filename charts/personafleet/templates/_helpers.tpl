{{/* Names, labels and the small pieces every template shares. */}}

{{- define "personafleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Resource name prefix; component suffixes are at most 16 characters, so trim to 47. */}}
{{- define "personafleet.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 47 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 47 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 47 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "personafleet.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels of one component: (dict "ctx" $ "component" "serving"). */}}
{{- define "personafleet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "personafleet.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* All labels of one component's objects. */}}
{{- define "personafleet.labels" -}}
helm.sh/chart: {{ include "personafleet.chart" .ctx }}
{{ include "personafleet.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: personafleet
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The label selector string of the serving pods (PERSONA_SERVING_SELECTOR). */}}
{{- define "personafleet.servingSelector" -}}
{{- $labels := include "personafleet.selectorLabels" (dict "ctx" . "component" "serving") | fromYaml }}
{{- $pairs := list }}
{{- range $key := keys $labels | sortAlpha }}
{{- $pairs = append $pairs (printf "%s=%s" $key (get $labels $key)) }}
{{- end }}
{{- join "," $pairs }}
{{- end }}

{{- define "personafleet.image" -}}
{{- printf "%s:%s" .image.repository (default .ctx.Chart.AppVersion .image.tag) }}
{{- end }}

{{/* Object names. */}}
{{- define "personafleet.storeClaim" -}}
{{- default (printf "%s-store" (include "personafleet.fullname" .)) .Values.store.existingClaim }}
{{- end }}

{{- define "personafleet.servingTokenSecret" -}}
{{- default (printf "%s-serving-token" (include "personafleet.fullname" .)) .Values.serving.auth.existingSecret }}
{{- end }}

{{- define "personafleet.databaseSecret" -}}
{{- if and (not .Values.postgres.enabled) .Values.database.external.existingSecret }}
{{- .Values.database.external.existingSecret }}
{{- else }}
{{- printf "%s-database" (include "personafleet.fullname" .) }}
{{- end }}
{{- end }}

{{/*
The read-only login training Jobs export feedback with (database.feedbackExport): the user's Secret,
else the chart's when it knows the database's address (in-cluster postgres or database.external.url),
else none (an includeFeedback Job then fails with "no database").
*/}}
{{- define "personafleet.feedbackExportSecret" -}}
{{- if .Values.database.feedbackExport.existingSecret }}
{{- .Values.database.feedbackExport.existingSecret }}
{{- else if or .Values.postgres.enabled .Values.database.external.url }}
{{- printf "%s-feedback-export" (include "personafleet.fullname" .) }}
{{- end }}
{{- end }}

{{- define "personafleet.botTokenSecret" -}}
{{- default (printf "%s-bot" (include "personafleet.fullname" .)) .Values.bot.telegram.existingSecret }}
{{- end }}

{{- define "personafleet.webhookSecret" -}}
{{- default (printf "%s-bot-webhook" (include "personafleet.fullname" .)) .Values.bot.webhook.existingSecret }}
{{- end }}

{{/*
A random secret value generated once: the value already in the cluster's Secret when there is
one (lookup), so upgrades keep it; a new random one on the first install.
(dict "ctx" $ "secret" NAME "key" KEY "length" N)
*/}}
{{- define "personafleet.stableRandom" -}}
{{- $existing := lookup "v1" "Secret" .ctx.Release.Namespace .secret }}
{{- if and $existing (hasKey ($existing.data | default dict) .key) }}
{{- index $existing.data .key | b64dec }}
{{- else }}
{{- randAlphaNum (.length | default 32) }}
{{- end }}
{{- end }}

{{/*
Pod annotations: prometheus.io/* scrape hints when no Prometheus Operator monitor is created,
plus the user's. Emits the whole `annotations:` block, or nothing. (dict "ctx" $ "port" N "extra" MAP)
*/}}
{{- define "personafleet.podAnnotations" -}}
{{- $annotations := deepCopy (.extra | default dict) }}
{{- if not .ctx.Values.metrics.prometheusOperator.enabled }}
{{- $_ := set $annotations "prometheus.io/scrape" "true" }}
{{- $_ := set $annotations "prometheus.io/port" (toString .port) }}
{{- $_ := set $annotations "prometheus.io/path" "/metrics" }}
{{- end }}
{{- with $annotations }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* The pieces every pod spec shares. */}}
{{- define "personafleet.podDefaults" -}}
{{ with .Values.imagePullSecrets -}}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end }}

{{/* Writable scratch space under a read-only root filesystem. */}}
{{- define "personafleet.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: 1Gi
{{- end }}

{{/*
The serving fleets, one per base (issue 22), as a YAML list: serving.bases with every key an entry
leaves out taken from serving.* (replicas, gpu, nodeSelector, tolerations, affinity, resources);
with no serving.bases, one unnamed fleet of serving.baseModel (the objects keep their names).
Use: include "personafleet.fleets" . | fromYamlArray
*/}}
{{- define "personafleet.fleets" -}}
{{- $serving := .Values.serving }}
{{- $defaults := pick $serving "replicas" "gpu" "nodeSelector" "tolerations" "affinity" "resources" }}
{{- $fleets := list }}
{{- $names := dict }}
{{- $models := dict }}
{{- range $serving.bases }}
{{- if hasKey $names .name }}{{ fail (printf "serving.bases: the name %s is used twice" .name) }}{{ end }}
{{- if hasKey $models .model }}{{ fail (printf "serving.bases: the model %s is served twice" .model) }}{{ end }}
{{- $_ := set $names .name true }}
{{- $_ := set $models .model true }}
{{- $fleets = append $fleets (merge (deepCopy .) (deepCopy $defaults)) }}
{{- end }}
{{- if not $fleets }}
{{- $fleets = list (merge (dict "name" "" "model" $serving.baseModel) (deepCopy $defaults)) }}
{{- end }}
{{- toYaml $fleets }}
{{- end }}

{{/* A fleet's object name suffix: "-serving" or "-serving-<name>". */}}
{{- define "personafleet.fleetName" -}}
{{- printf "%s-serving%s" (include "personafleet.fullname" .ctx) (ternary (printf "-%s" .fleet.name) "" (ne .fleet.name "")) }}
{{- end }}

{{/* The base label of a named fleet's objects (none for the unnamed fleet of serving.baseModel). */}}
{{- define "personafleet.baseLabel" -}}
{{- if .name }}
personafleet.io/base: {{ .name }}
{{- end }}
{{- end }}
