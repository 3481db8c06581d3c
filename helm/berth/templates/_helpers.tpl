{{/* Names. */}}
{{- define "berth.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "berth.fullname" -}}
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

{{- define "berth.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "berth.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "berth.selectorLabels" -}}
app.kubernetes.io/name: {{ include "berth.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "berth.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "berth.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "berth.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* The pod's grace period: above the shutdown delay and timeout together. */}}
{{- define "berth.terminationGracePeriod" -}}
{{ add .Values.shutdownDelaySeconds .Values.shutdownTimeoutSeconds 15 }}
{{- end }}

{{/* "true" when a Postgres database is configured; else Berth keeps its metadata in SQLite. */}}
{{- define "berth.postgres" -}}
{{- if or .Values.config.database.url .Values.config.database.existingSecret.name }}true{{ end }}
{{- end }}

{{/* "true" when the pod keeps state on its volume: blobs (filesystem storage) or SQLite. */}}
{{- define "berth.localState" -}}
{{- if or (eq .Values.config.storage "filesystem") (not (include "berth.postgres" .)) }}true{{ end }}
{{- end }}

{{/* "true" when migrations run as a Job before the replicas start (Postgres only: SQLite is
migrated by its one replica on start). */}}
{{- define "berth.migrationsJob" -}}
{{- if and .Values.migrations.enabled (include "berth.postgres" .) }}true{{ end }}
{{- end }}

{{/* Refuses values that cannot work, with a message saying what to change. */}}
{{- define "berth.validate" -}}
{{- $c := .Values.config }}
{{- if not (has $c.storage (list "s3" "filesystem")) }}
{{- fail (printf "config.storage must be s3 or filesystem, not %q" $c.storage) }}
{{- end }}
{{- if and (eq $c.storage "s3") (not $c.s3.bucket) }}
{{- fail "config.storage is s3 but config.s3.bucket is empty: set the bucket (the Terraform module's bucket output)" }}
{{- end }}
{{- if eq $c.storage "filesystem" }}
{{- if or (gt (int .Values.replicaCount) 1) .Values.autoscaling.enabled }}
{{- fail "config.storage filesystem keeps blobs on one pod's volume: use replicaCount 1 without autoscaling, or storage s3" }}
{{- end }}
{{- if not .Values.persistence.enabled }}
{{- fail "config.storage filesystem needs persistence.enabled, or every blob is lost with the pod" }}
{{- end }}
{{- end }}
{{- if and (or (gt (int .Values.replicaCount) 1) .Values.autoscaling.enabled) (not (or $c.database.url $c.database.existingSecret.name)) }}
{{- fail "more than one replica needs a shared Postgres: set config.database.url or config.database.existingSecret.name" }}
{{- end }}
{{- if and $c.s3Credentials.accessKeyId $c.s3Credentials.existingSecret.name }}
{{- fail "give S3 keys either inline (config.s3Credentials.accessKeyId) or from config.s3Credentials.existingSecret, not both" }}
{{- end }}
{{- if not (has $c.auth.mode (list "none" "basic" "token")) }}
{{- fail (printf "config.auth.mode must be none, basic or token, not %q" $c.auth.mode) }}
{{- end }}
{{- if and (ne $c.auth.mode "none") (not $c.auth.existingSecret) }}
{{- fail "config.auth.mode needs config.auth.existingSecret: a Secret with htpasswd (and acl.toml, token-key.pem)" }}
{{- end }}
{{- if and (not (include "berth.postgres" .)) (not .Values.persistence.enabled) }}
{{- fail "without config.database Berth keeps its metadata in SQLite on the pod's volume: enable persistence, or set config.database" }}
{{- end }}
{{- include "berth.validateUpstreams" . }}
{{- include "berth.validateWebhooks" . }}
{{- end }}

{{/* config.upstreams: what Berth would refuse at start, refused here with the item named. */}}
{{- define "berth.validateUpstreams" -}}
{{- $names := list }}
{{- $prefixes := list }}
{{- $defaults := list }}
{{- range $i, $u := .Values.config.upstreams }}
{{- if not $u.name }}
{{- fail (printf "config.upstreams[%d] has no name: every upstream needs a name and a url" $i) }}
{{- end }}
{{- $at := printf "config.upstreams[%d] (%s)" $i $u.name }}
{{- if not (regexMatch "^[A-Za-z0-9][A-Za-z0-9._-]*$" $u.name) }}
{{- fail (printf "%s: the name may hold only letters, digits, '.', '_' and '-' (it names the directory its Secrets are mounted in)" $at) }}
{{- end }}
{{- if has $u.name $names }}
{{- fail (printf "config.upstreams: two upstreams are named %s" $u.name) }}
{{- end }}
{{- $names = append $names $u.name }}
{{- if not $u.url }}
{{- fail (printf "%s has no url: every upstream needs a name and a url" $at) }}
{{- end }}
{{- if not (regexMatch "^https?://[^/?#@ ]+/?$" $u.url) }}
{{- fail (printf "%s: url %q is not http(s)://HOST[:PORT]" $at $u.url) }}
{{- end }}
{{- if and (not $u.prefix) (not $u.default) }}
{{- fail (printf "%s maps no names: give it a prefix, or default: true" $at) }}
{{- end }}
{{- if $u.default }}
{{- $defaults = append $defaults $u.name }}
{{- end }}
{{- with $u.prefix }}
{{- $prefix := . }}
{{- range $prefixes }}
{{- if or (eq . $prefix) (hasPrefix (printf "%s/" .) $prefix) (hasPrefix (printf "%s/" $prefix) .) }}
{{- fail (printf "%s: prefix %s overlaps another upstream's prefix %s" $at $prefix .) }}
{{- end }}
{{- end }}
{{- $prefixes = append $prefixes $prefix }}
{{- end }}
{{- if and $u.username (not $u.existingSecret) }}
{{- fail (printf "%s has a username but no password: set existingSecret, a Secret holding it" $at) }}
{{- end }}
{{- if and $u.existingSecret (not $u.username) }}
{{- fail (printf "%s: existingSecret gives the password; set username too" $at) }}
{{- end }}
{{- end }}
{{- if gt (len $defaults) 1 }}
{{- fail (printf "config.upstreams: %s are all default: true; one upstream at most takes the names under no prefix" (join ", " $defaults)) }}
{{- end }}
{{- end }}

{{/* Where an upstream's Secrets are mounted (credentials/password, ca/ca.crt under it). */}}
{{- define "berth.upstreamDir" -}}
/etc/berth/upstreams/{{ .name }}
{{- end }}

{{/* config.webhooks: what Berth would refuse at start, refused here with the item named. The
chart needs a name where Berth would take the URL's host: it names the Secret's directory. */}}
{{- define "berth.validateWebhooks" -}}
{{- $names := list }}
{{- range $i, $w := .Values.config.webhooks }}
{{- if not $w.name }}
{{- fail (printf "config.webhooks[%d] has no name: every webhook needs a name and a url" $i) }}
{{- end }}
{{- $at := printf "config.webhooks[%d] (%s)" $i $w.name }}
{{- if not (regexMatch "^[A-Za-z0-9][A-Za-z0-9._-]*$" $w.name) }}
{{- fail (printf "%s: the name may hold only letters, digits, '.', '_' and '-' (it names the directory its Secret is mounted in)" $at) }}
{{- end }}
{{- if has $w.name $names }}
{{- fail (printf "config.webhooks: two webhooks are named %s" $w.name) }}
{{- end }}
{{- $names = append $names $w.name }}
{{- if not $w.url }}
{{- fail (printf "%s has no url: every webhook needs a name and a url" $at) }}
{{- end }}
{{- if not (regexMatch "^https?://[^/?#\\s]+([/?#].*)?$" $w.url) }}
{{- fail (printf "%s: url %q is not http(s)://HOST[:PORT][/PATH]" $at $w.url) }}
{{- end }}
{{- if and $w.secretKey (not $w.existingSecret) }}
{{- fail (printf "%s: secretKey names a key of existingSecret; set existingSecret too" $at) }}
{{- end }}
{{- end }}
{{- end }}

{{/* Where a webhook's Secret is mounted (secret under it). */}}
{{- define "berth.webhookDir" -}}
/etc/berth/webhooks/{{ .name }}
{{- end }}

{{/* The environment every Berth container gets (the migrations Job too). */}}
{{- define "berth.env" -}}
{{- if include "berth.postgres" . }}
- name: BERTH_DATABASE_URL
  valueFrom:
    secretKeyRef:
      {{- if .Values.config.database.existingSecret.name }}
      name: {{ .Values.config.database.existingSecret.name }}
      key: {{ .Values.config.database.existingSecret.key }}
      {{- else }}
      name: {{ include "berth.fullname" . }}
      key: database-url
      {{- end }}
{{- end }}
{{- with .Values.config.s3Credentials }}
{{- if or .accessKeyId .existingSecret.name }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret.name | default (include "berth.fullname" $) }}
      key: {{ ternary .existingSecret.accessKeyIdKey "aws-access-key-id" (not (empty .existingSecret.name)) }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret.name | default (include "berth.fullname" $) }}
      key: {{ ternary .existingSecret.secretAccessKeyKey "aws-secret-access-key" (not (empty .existingSecret.name)) }}
{{- end }}
{{- end }}
{{- range $name, $value := .Values.extraEnv }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- end }}
