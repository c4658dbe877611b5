{{/* Chart name. */}}
{{- define "nightshift.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-qualified name (63 characters max; component names add up to 10). */}}
{{- define "nightshift.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "nightshift.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The components, in a fixed order. */}}
{{- define "nightshift.components" -}}
manager scheduler worker events memory console
{{- end -}}

{{/* Binary, env prefix and gRPC service of a component. */}}
{{- define "nightshift.binary" -}}nightshift-{{ . }}{{- end -}}
{{- define "nightshift.envPrefix" -}}NIGHTSHIFT_{{ upper . }}_{{- end -}}
{{- define "nightshift.grpcService" -}}
{{- $m := dict "manager" "ManagerService" "scheduler" "SchedulerService" "worker" "WorkerService" "events" "EventService" "memory" "MemoryService" -}}
{{- if hasKey $m . -}}nightshift.v1.{{ get $m . }}{{- end -}}
{{- end -}}

{{/* Labels. Call with (dict "root" $ "component" NAME). */}}
{{- define "nightshift.selectorLabels" -}}
app.kubernetes.io/name: {{ include "nightshift.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end -}}

{{- define "nightshift.labels" -}}
helm.sh/chart: {{ include "nightshift.chart" .root }}
{{ include "nightshift.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: nightshift
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Object name of a component: <fullname>-<component>. */}}
{{- define "nightshift.componentName" -}}
{{- printf "%s-%s" (include "nightshift.fullname" .root) .component -}}
{{- end -}}

{{- define "nightshift.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "nightshift.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "nightshift.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* In-cluster gRPC endpoint of a component (empty when disabled). */}}
{{- define "nightshift.endpoint" -}}
{{- $c := index .root.Values .component -}}
{{- if $c.enabled -}}
{{ ternary "https" "http" .root.Values.tls.enabled }}://{{ include "nightshift.componentName" . }}.{{ .root.Release.Namespace }}.svc:{{ $c.port }}
{{- end -}}
{{- end -}}

{{/* The Secret holding the services' certificate (tls.crt, tls.key, ca.crt). */}}
{{- define "nightshift.tlsSecretName" -}}
{{- if .Values.tls.existingSecret -}}
{{- .Values.tls.existingSecret -}}
{{- else if .Values.tls.certManager.issuerRef.name -}}
{{- printf "%s-tls" (include "nightshift.fullname" .) -}}
{{- else -}}
{{- fail "tls.enabled needs tls.existingSecret or tls.certManager.issuerRef.name" -}}
{{- end -}}
{{- end -}}

{{/* URL of a backend (nats | redis). */}}
{{- define "nightshift.backendUrl" -}}
{{- $backend := .backend -}}
{{- if eq $backend "nats" -}}
{{- required "nats.url is required when a backend is nats" .root.Values.nats.url -}}
{{- else if eq $backend "redis" -}}
{{- required "redis.url is required when a backend is redis" .root.Values.redis.url -}}
{{- else -}}
{{- fail (printf "unknown backend %q (nats or redis)" $backend) -}}
{{- end -}}
{{- end -}}

{{/* Secret and key holding the database URL. */}}
{{- define "nightshift.authSecretName" -}}
{{- if .Values.auth.existingSecret -}}
{{- .Values.auth.existingSecret -}}
{{- else -}}
{{- printf "%s-auth" (include "nightshift.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "nightshift.databaseSecretName" -}}
{{- if .Values.database.existingSecret -}}
{{- .Values.database.existingSecret -}}
{{- else -}}
{{- printf "%s-database" (include "nightshift.fullname" .) -}}
{{- end -}}
{{- end -}}
{{- define "nightshift.databaseSecretKey" -}}
{{- if .Values.database.existingSecret -}}{{ .Values.database.existingSecretKey }}{{- else -}}database-url{{- end -}}
{{- end -}}

{{/*
Flattens a config map into NIGHTSHIFT_<ROLE>_<KEY> entries (nested keys joined with "__").
Numbers are written as integers (every numeric setting is one); lists as JSON arrays.
Call with (dict "prefix" "NIGHTSHIFT_WORKER_" "map" $config).
*/}}
{{- define "nightshift.flatten" -}}
{{- $prefix := .prefix -}}
{{- range $k, $v := .map }}
{{- $key := printf "%s%s" $prefix (upper $k) }}
{{- if kindIs "map" $v }}
{{ include "nightshift.flatten" (dict "prefix" (printf "%s__" $key) "map" $v) | trim }}
{{- else if kindIs "slice" $v }}
{{ $key }}: {{ toJson $v | quote }}
{{- else if or (kindIs "float64" $v) (kindIs "int64" $v) (kindIs "int" $v) }}
{{ $key }}: {{ $v | int64 | toString | quote }}
{{- else if not (kindIs "invalid" $v) }}
{{ $key }}: {{ $v | toString | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
Non-secret settings of a component (the ConfigMap's data): the user's `config` plus what the
chart wires (listen addresses, endpoints, backend URLs, metrics).
Call with (dict "root" $ "component" NAME).
*/}}
{{- define "nightshift.configData" -}}
{{- $root := .root -}}
{{- $name := .component -}}
{{- $c := index $root.Values $name -}}
{{- $wired := dict "listen" (printf "0.0.0.0:%v" $c.port) "log_format" $root.Values.logFormat -}}
{{- if and (hasKey $c "metrics") $c.metrics.enabled -}}
{{- $_ := set $wired "metrics_listen" (printf "0.0.0.0:%v" $c.metrics.port) -}}
{{- end -}}
{{- $queue := include "nightshift.backendUrl" (dict "root" $root "backend" $root.Values.queue.backend) -}}
{{- $events := include "nightshift.endpoint" (dict "root" $root "component" "events") -}}
{{- $keys := "/etc/nightshift/auth" -}}
{{- $manager := include "nightshift.endpoint" (dict "root" $root "component" "manager") -}}
{{- if eq $name "console" -}}
{{- /* The console signs its users in and calls the services with their credentials: no key of its own. */ -}}
{{- else if eq $name "manager" -}}
{{- $_ := set $wired "auth" (dict "bootstrap_admin_key_file" (printf "%s/admin.key" $keys) "service_key_file" (printf "%s/service.key" $keys) "worker_key_file" (printf "%s/worker.key" $keys) "api_key_file" (printf "%s/service.key" $keys)) -}}
{{- with (($root.Values.worker.config | default dict).allow) -}}
{{- $_ := set $wired "worker_allow" . -}}
{{- end -}}
{{- else -}}
{{- $own := ternary "worker.key" "service.key" (eq $name "worker") -}}
{{- $_ := set $wired "auth" (dict "verify_endpoint" $manager "api_key_file" (printf "%s/%s" $keys $own)) -}}
{{- end -}}
{{- if $root.Values.tls.enabled -}}
{{- $dir := "/etc/nightshift/tls" -}}
{{- $_ := set $wired "tls" (dict "cert_file" (printf "%s/tls.crt" $dir) "key_file" (printf "%s/tls.key" $dir) "ca_file" (printf "%s/ca.crt" $dir) "server_name" $root.Values.tls.serverName) -}}
{{- end -}}
{{- if eq $name "manager" -}}
{{- $_ := set $wired "queue_url" $queue -}}
{{- $_ := set $wired "scheduler_endpoint" (include "nightshift.endpoint" (dict "root" $root "component" "scheduler")) -}}
{{- $_ := set $wired "events_endpoint" $events -}}
{{- else if eq $name "scheduler" -}}
{{- $_ := set $wired "queue_url" $queue -}}
{{- $_ := set $wired "events_endpoint" $events -}}
{{- else if eq $name "worker" -}}
{{- $_ := set $wired "queue_url" $queue -}}
{{- $_ := set $wired "events_endpoint" $events -}}
{{- $_ := set $wired "memory_endpoint" (include "nightshift.endpoint" (dict "root" $root "component" "memory")) -}}
{{- $_ := set $wired "manager_endpoint" (required "the worker needs the manager (manager.enabled)" (include "nightshift.endpoint" (dict "root" $root "component" "manager"))) -}}
{{- if $c.dataVolume.enabled -}}
{{- $_ := set $wired "tools" (dict "file_root" $c.dataVolume.mountPath) -}}
{{- end -}}
{{- else if eq $name "console" -}}
{{- $_ := set $wired "manager_endpoint" (required "the console needs the manager (manager.enabled)" $manager) -}}
{{- $_ := set $wired "events_endpoint" $events -}}
{{- $_ := set $wired "scheduler_endpoint" (include "nightshift.endpoint" (dict "root" $root "component" "scheduler")) -}}
{{- $_ := set $wired "memory_endpoint" (include "nightshift.endpoint" (dict "root" $root "component" "memory")) -}}
{{- /* The worker Service is headless: its name resolves to every worker pod. */ -}}
{{- with (include "nightshift.endpoint" (dict "root" $root "component" "worker")) -}}
{{- $_ := set $wired "worker_discovery" (list .) -}}
{{- end -}}
{{- $urls := list -}}
{{- range $other := list "manager" "scheduler" "events" "memory" -}}
{{- $o := index $root.Values $other -}}
{{- if and $o.enabled $o.metrics.enabled -}}
{{- $urls = append $urls (printf "http://%s.%s.svc:%v/metrics" (include "nightshift.componentName" (dict "root" $root "component" $other)) $root.Release.Namespace $o.metrics.port) -}}
{{- end -}}
{{- end -}}
{{- $_ := set $wired "metrics_urls" $urls -}}
{{- else if eq $name "events" -}}
{{- $_ := set $wired "backend_url" (include "nightshift.backendUrl" (dict "root" $root "backend" $root.Values.eventLog.backend)) -}}
{{- else if eq $name "memory" -}}
{{- $stores := dict "working" (ternary "memory://" $root.Values.redis.url (empty $root.Values.redis.url)) -}}
{{- $_ := set $wired "stores" $stores -}}
{{- if and $root.Values.qdrant.url (ne (($c.config.embedder | default dict).kind | default "none") "none") -}}
{{- $vector := dict "url" $root.Values.qdrant.url -}}
{{- if $root.Values.qdrant.apiKeySecret.name -}}{{- $_ := set $vector "api_key_env" "QDRANT_API_KEY" -}}{{- end -}}
{{- $_ := set $wired "vector" $vector -}}
{{- end -}}
{{- end -}}
{{- $all := mergeOverwrite (deepCopy $wired) (deepCopy ($c.config | default dict)) -}}
{{- $_ := set $all "listen" (printf "0.0.0.0:%v" $c.port) -}}
{{- include "nightshift.flatten" (dict "prefix" (include "nightshift.envPrefix" $name) "map" $all) -}}
{{- end -}}

{{/* A component's value, falling back to .Values.defaults. */}}
{{- define "nightshift.pick" -}}
{{- $c := index .root.Values .component -}}
{{- $v := index $c .key | default (index .root.Values.defaults .key) -}}
{{- with $v }}{{ toYaml . }}{{ end -}}
{{- end -}}

{{/* Does a component run 2+ pods (for PodDisruptionBudgets)? Returns "true" or "". */}}
{{- define "nightshift.multiReplica" -}}
{{- $c := index .root.Values .component -}}
{{- if and (hasKey $c "autoscaling") $c.autoscaling.enabled -}}
{{- if gt (int $c.autoscaling.minReplicas) 1 }}true{{ end -}}
{{- else if gt (int $c.replicaCount) 1 -}}true{{- end -}}
{{- end -}}
