{{/* Names and labels. */}}
{{- define "tenantry.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tenantry.fullname" -}}
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

{{- define "tenantry.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tenantry.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The gateway's pods (the migration job's pods carry component: migrate, so no Service or budget counts them). */}}
{{- define "tenantry.gatewaySelectorLabels" -}}
{{ include "tenantry.selectorLabels" . }}
app.kubernetes.io/component: gateway
{{- end -}}

{{- define "tenantry.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "tenantry.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "tenantry.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "tenantry.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tenantry.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "tenantry.secretName" -}}
{{- required "secrets.existingSecret: name the Secret that holds the database passwords, the admin, ops and JWT secrets and the Fernet keys (values.yaml says which keys)" .Values.secrets.existingSecret -}}
{{- end -}}

{{- define "tenantry.scheme" -}}
{{- if .Values.tls.existingSecret }}HTTPS{{ else }}HTTP{{ end -}}
{{- end -}}

{{/*
Settings the chart sets itself (from its own values or the Secret): `settings` may not name them, so
one value is never set in two places. Secrets are refused with a pointer to the Secret.
*/}}
{{- define "tenantry.secretSettings" -}}
database_password db_app_password admin_api_key ops_api_key jwt_secret secret_keys stripe_api_key stripe_webhook_secret
{{- end -}}
{{- define "tenantry.ownSettings" -}}
database_url database_direct_url db_transaction_pooler replica_url db_app_role db_pool_size db_max_overflow redis_url host port environment tls_certfile tls_keyfile
{{- end -}}

{{/*
A setting's value as its environment variable: objects and lists as JSON; whole numbers without an
exponent (values can arrive as float64, which would print 1048576 as 1.048576e+06).
*/}}
{{- define "tenantry.settingValue" -}}
{{- if or (kindIs "map" .) (kindIs "slice" .) -}}
{{- toJson . -}}
{{- else if and (kindIs "float64" .) (eq . (floor .)) -}}
{{- int64 . -}}
{{- else -}}
{{- toString . -}}
{{- end -}}
{{- end -}}

{{/* The container's environment: the gateway's and the migration job's. Arguments: (dict "root" $ "databaseUrl" URL). */}}
{{- define "tenantry.env" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $secret := include "tenantry.secretName" $root -}}
{{- $secretSettings := splitList " " (include "tenantry.secretSettings" $root) -}}
{{- $ownSettings := splitList " " (include "tenantry.ownSettings" $root) -}}
- name: TENANTRY_ENVIRONMENT
  value: production
- name: TENANTRY_HOST
  value: "0.0.0.0"
- name: TENANTRY_PORT
  value: {{ $v.containerPort | quote }}
- name: TENANTRY_DATABASE_URL
  value: {{ required "database.url is required" .databaseUrl | quote }}
{{- with $v.database.directUrl }}
- name: TENANTRY_DATABASE_DIRECT_URL
  value: {{ . | quote }}
{{- end }}
- name: TENANTRY_DB_TRANSACTION_POOLER
  value: {{ $v.database.transactionPooler | quote }}
- name: TENANTRY_DB_APP_ROLE
  value: {{ $v.database.appRole | quote }}
- name: TENANTRY_DB_POOL_SIZE
  value: {{ $v.database.poolSize | quote }}
- name: TENANTRY_DB_MAX_OVERFLOW
  value: {{ $v.database.maxOverflow | quote }}
- name: TENANTRY_REDIS_URL
  value: {{ required "redis.url is required" $v.redis.url | quote }}
{{- range $name, $key := dict "TENANTRY_DATABASE_PASSWORD" $v.secrets.keys.databasePassword "TENANTRY_DB_APP_PASSWORD" $v.secrets.keys.dbAppPassword "TENANTRY_ADMIN_API_KEY" $v.secrets.keys.adminApiKey "TENANTRY_OPS_API_KEY" $v.secrets.keys.opsApiKey "TENANTRY_JWT_SECRET" $v.secrets.keys.jwtSecret "TENANTRY_SECRET_KEYS" $v.secrets.keys.secretKeys }}
- name: {{ $name }}
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ required (printf "secrets.keys: the key of %s in the Secret is required" $name) $key }}
{{- end }}
{{- range $name, $key := dict "TENANTRY_STRIPE_API_KEY" $v.secrets.keys.stripeApiKey "TENANTRY_STRIPE_WEBHOOK_SECRET" $v.secrets.keys.stripeWebhookSecret }}
{{- if $key }}
- name: {{ $name }}
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $key }}
{{- end }}
{{- end }}
{{- if $v.tls.existingSecret }}
- name: TENANTRY_TLS_CERTFILE
  value: /etc/tenantry/tls/tls.crt
- name: TENANTRY_TLS_KEYFILE
  value: /etc/tenantry/tls/tls.key
{{- end }}
{{- range $name, $value := $v.settings }}
{{- if not (regexMatch "^[a-z][a-z0-9_]*$" $name) }}
{{- fail (printf "settings.%s: name a setting in lower case without the TENANTRY_ prefix (e.g. log_level)" $name) }}
{{- end }}
{{- if has $name $secretSettings }}
{{- fail (printf "settings.%s is a secret: put it in the Secret secrets.existingSecret names (secrets.keys), never in values" $name) }}
{{- end }}
{{- if has $name $ownSettings }}
{{- fail (printf "settings.%s is set by the chart from its own values (database, redis, containerPort, tls): set it there" $name) }}
{{- end }}
- name: TENANTRY_{{ upper $name }}
  value: {{ include "tenantry.settingValue" $value | quote }}
{{- end }}
{{- with $v.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}
