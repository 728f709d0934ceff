{{/*
The alerting rules (docs/runbook.md has one section per alert; each alert's runbook_url points
there). One definition, rendered into a PrometheusRule or a ConfigMap by alerts.yaml.
Selectors are scoped to the release's namespace (the `namespace` target label that the
Prometheus Operator's monitors and the usual pod-scrape configs set), so two releases in one
cluster never alert on each other's series. Prometheus's own {{ $labels.x }} templates are
written as {{`{{ $labels.x }}`}} so that Helm leaves them alone.
*/}}

{{/* An alert's severity, extra labels and annotations:
(dict "ctx" $ "alert" NAME "severity" S "summary" TEXT "description" TEXT-WITH-PROMETHEUS-TEMPLATES),
and "window" for the burn-rate alerts (their long window: one alert per window, told apart). */}}
{{- define "personafleet.alertMeta" -}}
labels:
  severity: {{ .severity }}
  {{- with .window }}
  window: {{ . }}
  {{- end }}
  {{- with .ctx.Values.metrics.alerts.labels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
annotations:
  summary: {{ .summary | quote }}
  description: {{ .description | quote }}
  runbook_url: {{ printf "%s#%s" .ctx.Values.metrics.alerts.runbookUrl (lower .alert) | quote }}
{{- end }}

{{- define "personafleet.alertRules" -}}
{{- $a := .Values.metrics.alerts }}
{{- $ns := printf "namespace=%q" .Release.Namespace }}
{{- $fullname := include "personafleet.fullname" . }}
{{- $slo := $a.replySlo }}
{{- $windows := list }}
{{- range $slo.burnRates }}
{{- $windows = append (append $windows .longWindow) .shortWindow }}
{{- end }}
groups:
  - name: personafleet-serving
    rules:
      - alert: PersonaServingDown
        expr: (sum(up{ {{- $ns }}, pod=~"{{ $fullname }}-serving-.+"}) or vector(0)) == 0
        for: {{ $a.serving.downFor }}
        {{- include "personafleet.alertMeta" (dict "ctx" $ "alert" "PersonaServingDown" "severity" "critical"
            "summary" "No TorchServe replica can be scraped: no persona answers."
            "description" (printf "Prometheus reaches no %s-serving pod's metrics port in %s (down, crash-looping or not scheduled)." $fullname .Release.Namespace)) | nindent 8 }}
      - alert: PersonaServingNoReadyReplica
        expr: kube_deployment_status_replicas_available{ {{- $ns }}, deployment="{{ $fullname }}-serving"} < 1
        for: {{ $a.serving.downFor }}
        {{- include "personafleet.alertMeta" (dict "ctx" $ "alert" "PersonaServingNoReadyReplica" "severity" "critical"
            "summary" "The serving Deployment has no ready replica (kube-state-metrics)."
            "description" `{{ $labels.deployment }} has had no available replica for a while: the pods run but do not pass their readiness probe.`) | nindent 8 }}
      - alert: PersonaServingErrorRatio
        expr: |-
          sum by (namespace, persona) (rate(persona_handler_errors_total{ {{- $ns }}, version!="none"}[{{ $a.errorRatio.window }}]))
            / sum by (namespace, persona) (rate(persona_handler_requests_total{ {{- $ns }}}[{{ $a.errorRatio.window }}]))
            > {{ $a.errorRatio.threshold }}
        for: {{ $a.errorRatio.for }}
        {{- include "personafleet.alertMeta" (dict "ctx" $ "alert" "PersonaServingErrorRatio" "severity" "warning"
            "summary" "A persona's routed requests fail (adapter_unavailable, generation_failed)."
            "description" `{{ $labels.persona }}: {{ $value | humanizePercentage }} of its routed requests fail.`) | nindent 8 }}
      - alert: PersonaAdapterEvictionStorm
        expr: sum by (namespace, Hostname) (rate(persona_handler_adapter_evictions_total{ {{- $ns }}}[10m])) > {{ $a.adapterEvictionsPerSecond }}
        for: 15m
        {{- include "personafleet.alertMeta" (dict "ctx" $ "alert" "PersonaAdapterEvictionStorm" "severity" "warning"
            "summary" "A serving replica keeps evicting and reloading LoRA adapters."
            "description" `{{ $labels.Hostname }} evicts {{ $value | humanize }} adapters/s: the personas in use do not fit serving.maxResidentAdapters.`) | nindent 8 }}
  {{- if .Values.bot.enabled }}
  - name: personafleet-reply-slo
    rules:
      {{- range $window := uniq $windows }}
      - record: personafleet:reply_slo_errors:ratio_rate{{ $window }}
        expr: |-
          1 - sum by (namespace) (rate(persona_bot_reply_latency_seconds_bucket{ {{- $ns }}, le="{{ $slo.thresholdSeconds }}"}[{{ $window }}]))
            / sum by (namespace) (rate(persona_bot_replies_total{ {{- $ns }}, outcome!="rate_limited"}[{{ $window }}]))
      {{- end }}
      {{- range $slo.burnRates }}
      - alert: PersonaReplySLOBudgetBurn
        expr: |-
          personafleet:reply_slo_errors:ratio_rate{{ .longWindow }}{ {{- $ns }}} > ({{ .factor }} * (1 - {{ $slo.objective }}))
            and personafleet:reply_slo_errors:ratio_rate{{ .shortWindow }}{ {{- $ns }}} > ({{ .factor }} * (1 - {{ $slo.objective }}))
        {{- include "personafleet.alertMeta" (dict "ctx" $ "alert" "PersonaReplySLOBudgetBurn" "severity" .severity "window" .longWindow
            "summary" (printf "Replies within %ss: the error budget burns %vx too fast (%s and %s windows)." $slo.thresholdSeconds .factor .longWindow .shortWindow)
            "description" (printf "{{ $value | humanizePercentage }} of messages got no reply within %ss over %s; the objective is %v within %ss." $slo.thresholdSeconds .longWindow $slo.objective $slo.thresholdSeconds)) | nindent 8 }}
        {{- end }}
  - name: personafleet-bot
    rules:
      - alert: PersonaBotDown
        expr: (sum(up{ {{- $ns }}, pod=~"{{ $fullname }}-bot-.+"}) or vector(0)) == 0
        for: 5m
        {{- include "personafleet.alertMeta" (dict "ctx" $ "alert" "PersonaBotDown" "severity" "critical"
            "summary" "No bot replica can be scraped: Telegram messages go unanswered."
            "description" (printf "No %s-bot pod in %s answers on its metrics port." $fullname .Release.Namespace)) | nindent 8 }}
      - alert: PersonaBotDatabaseDown
        expr: min by (namespace, pod) (persona_bot_store_up{ {{- $ns }}}) == 0
        for: 2m
        {{- include "personafleet.alertMeta" (dict "ctx" $ "alert" "PersonaBotDatabaseDown" "severity" "warning"
            "summary" "The bot cannot reach its database: replies go on without history, feedback is not stored."
            "description" `{{ $labels.pod }} reports persona_bot_store_up 0.`) | nindent 8 }}
      {{- if .Values.asr.enabled }}
      - alert: PersonaASRErrors
        expr: |-
          sum by (namespace) (rate(persona_bot_voice_messages_total{ {{- $ns }}, outcome=~"asr_unavailable|asr_rejected"}[{{ $a.asrErrors.window }}]))
            / sum by (namespace) (rate(persona_bot_voice_messages_total{ {{- $ns }}}[{{ $a.asrErrors.window }}]))
            > {{ $a.asrErrors.threshold }}
        for: {{ $a.asrErrors.for }}
        {{- include "personafleet.alertMeta" (dict "ctx" $ "alert" "PersonaASRErrors" "severity" "warning"
            "summary" "Voice messages go unanswered: the speech model is unavailable or refuses them."
            "description" `{{ $value | humanizePercentage }} of voice messages got no transcript from the asr model.`) | nindent 8 }}
      {{- end }}
  {{- end }}
  {{- if .Values.operator.enabled }}
  - name: personafleet-training
    rules:
      - alert: PersonaTrainingJobFailed
        expr: sum by (namespace, persona) (increase(persona_operator_training_duration_seconds_count{ {{- $ns }}, outcome="failed"}[1h])) > 0
        {{- include "personafleet.alertMeta" (dict "ctx" $ "alert" "PersonaTrainingJobFailed" "severity" "warning"
            "summary" "A training Job failed."
            "description" `A training Job of {{ $labels.persona }} failed in the last hour (the operator retries up to rollout.retryLimit).`) | nindent 8 }}
      - alert: PersonaRolloutRolledBack
        expr: sum by (namespace, persona) (increase(persona_operator_rollouts_total{ {{- $ns }}, outcome=~"failed|rolled_back"}[1h])) > 0
        {{- include "personafleet.alertMeta" (dict "ctx" $ "alert" "PersonaRolloutRolledBack" "severity" "warning"
            "summary" "A rollout failed or a canary was rolled back; the previous version keeps serving."
            "description" `A new version of {{ $labels.persona }} failed its rollout or was rolled back by its canary analysis in the last hour; the routing table kept the version that served.`) | nindent 8 }}
      - alert: PersonaModelStuckInTraining
        expr: time() - persona_operator_training_started_timestamp_seconds{ {{- $ns }}} > {{ $a.trainingStuckSeconds }}
        {{- include "personafleet.alertMeta" (dict "ctx" $ "alert" "PersonaModelStuckInTraining" "severity" "warning"
            "summary" "A PersonaModel has been in phase Training for too long."
            "description" `{{ $labels.persona }} has been training for {{ $value | humanizeDuration }}.`) | nindent 8 }}
  {{- end }}
{{- end }}
