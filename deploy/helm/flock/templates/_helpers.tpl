{{/* Names, labels and the environment shared by every workload. */}}

{{- define "flock.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* <release>-flock, or the release name alone when it already holds the chart's name. */}}
{{- define "flock.fullname" -}}
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

{{/* The name of a target's objects: (dict "root" $ "target" "api"). Kept to
45 characters so suffixes such as -mqtt or -wireguard still fit in 63. */}}
{{- define "flock.targetName" -}}
{{- printf "%s-%s" (include "flock.fullname" .root | trunc (int (sub 44 (len .target)))) .target | trimSuffix "-" -}}
{{- end -}}

{{- define "flock.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "flock.selectorLabels" -}}
app.kubernetes.io/name: {{ include "flock.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "flock.labels" -}}
helm.sh/chart: {{ include "flock.chart" . }}
{{ include "flock.selectorLabels" . }}
app.kubernetes.io/version: {{ include "flock.imageTag" . | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: flock
{{- end -}}

{{/* Labels of a target's objects and the selector of its pods. */}}
{{- define "flock.targetSelectorLabels" -}}
{{ include "flock.selectorLabels" .root }}
app.kubernetes.io/component: {{ .target }}
{{- end -}}

{{- define "flock.targetLabels" -}}
{{ include "flock.labels" .root }}
app.kubernetes.io/component: {{ .target }}
{{- end -}}

{{- define "flock.imageTag" -}}
{{- default .Chart.AppVersion .Values.image.tag -}}
{{- end -}}

{{- define "flock.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (include "flock.imageTag" .) -}}
{{- end -}}
{{- end -}}

{{- define "flock.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "flock.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Whether a target runs the embedded MQTT broker: the ingester does (alone
or inside "all") unless mqtt.url names an external broker. */}}
{{- define "flock.embeddedBroker" -}}
{{- if and (has .target (list "ingester" "all")) (not .root.Values.mqtt.url) -}}true{{- end -}}
{{- end -}}

{{/* Whether a target runs a tunnel replica (WireGuard on UDP) or the proxy
of devices' public URLs: the tunnel and proxy targets, and "all", which runs
every target. (dict "root" $ "target" "tunnel") */}}
{{- define "flock.runsTunnel" -}}
{{- if has .target (list "tunnel" "all") -}}true{{- end -}}
{{- end -}}
{{- define "flock.runsProxy" -}}
{{- if has .target (list "proxy" "all") -}}true{{- end -}}
{{- end -}}

{{/* A target's surfaces beyond HTTP, as a YAML list: the embedded broker's
MQTT listener, the tunnel's WireGuard (UDP, tunnel.service), the proxy's
public listener (proxy.service: port 443 with proxy.tls.secretName, 80
without), then the entry's extraPorts. Each becomes a container port and a
Service of its own. */}}
{{- define "flock.extraPorts" -}}
{{- $ports := list -}}
{{- if include "flock.embeddedBroker" . -}}
{{- $m := .root.Values.mqtt.embedded -}}
{{- $ports = append $ports (dict "name" "mqtt" "containerPort" $m.port "protocol" "TCP" "service" $m.service) -}}
{{- end -}}
{{- if include "flock.runsTunnel" . -}}
{{- $t := .root.Values.tunnel -}}
{{- $ports = append $ports (dict "name" "wireguard" "containerPort" $t.port "protocol" "UDP" "service" $t.service) -}}
{{- end -}}
{{- if include "flock.runsProxy" . -}}
{{- $p := .root.Values.proxy -}}
{{- $svc := merge (dict "port" (ternary 443 80 (not (empty $p.tls.secretName)))) (deepCopy $p.service) -}}
{{- $ports = append $ports (dict "name" "public" "containerPort" $p.port "protocol" "TCP" "service" $svc) -}}
{{- end -}}
{{- $cfg := index .root.Values.targets .target -}}
{{- range $cfg.extraPorts -}}
{{- $ports = append $ports . -}}
{{- end -}}
{{- toYaml $ports -}}
{{- end -}}

{{/* A variable from an existing Secret. */}}
{{- define "flock.secretEnv" -}}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ .secret | quote }}
      key: {{ required (printf "%s: the Secret's key must not be empty" .name) .key | quote }}
{{- end -}}

{{/* What a target's FLOCK_DATA_DIR lives on: "pvc" (all with
persistence.enabled), "emptyDir" (delta's scratch files; all without
persistence; registry-proxy's blob cache; a lone api pod on an embedded registry or S3 store: the
validation refuses the embedded engines for anything else), or nothing: the target writes no files and FLOCK_DATA_DIR stays unset.
(dict "root" $ "target" "delta") */}}
{{- define "flock.dataVolume" -}}
{{- $v := .root.Values -}}
{{- if eq .target "all" -}}
{{- if $v.persistence.enabled -}}pvc{{- else -}}emptyDir{{- end -}}
{{- else if or (eq .target "delta") (eq .target "registry-proxy") (hasPrefix "builder" .target) -}}
emptyDir
{{- else if and (eq .target "api") (or (not $v.registry.url) (not $v.s3.endpoint)) -}}
emptyDir
{{- end -}}
{{- end -}}

{{/* The PersistentVolumeClaim of targets.all's data: persistence.existingClaim,
or the one the chart creates. */}}
{{- define "flock.dataClaim" -}}
{{- if .Values.persistence.existingClaim -}}
{{- .Values.persistence.existingClaim -}}
{{- else -}}
{{- printf "%s-data" (include "flock.targetName" (dict "root" . "target" "all")) -}}
{{- end -}}
{{- end -}}

{{/* The flock-api settings every workload gets, from the values. Empty
values stay unset, so flock-api's defaults apply. Settings a process does not
read are ignored by it (the ingester never opens the registry or S3).
FLOCK_DATA_DIR is a target's own: see deployment.yaml. */}}
{{- define "flock.env" -}}
{{- $v := .Values -}}
- name: FLOCK_HTTP_ADDR
  value: {{ printf ":%v" $v.httpPort | quote }}
- name: FLOCK_LOG_LEVEL
  value: {{ $v.logLevel | quote }}
- name: FLOCK_LOG_FORMAT
  value: json
{{ include "flock.secretEnv" (dict "name" "FLOCK_DATABASE_URL" "secret" (required "postgresql.existingSecret: name the Secret that holds FLOCK_DATABASE_URL" $v.postgresql.existingSecret) "key" $v.postgresql.key) }}
{{- if $v.publicURL }}
- name: FLOCK_PUBLIC_URL
  value: {{ $v.publicURL | quote }}
{{- end }}
{{- if $v.redis.existingSecret }}
{{ include "flock.secretEnv" (dict "name" "FLOCK_REDIS_URL" "secret" $v.redis.existingSecret "key" $v.redis.key) }}
{{- else if $v.redis.url }}
- name: FLOCK_REDIS_URL
  value: {{ $v.redis.url | quote }}
{{- end }}
{{- if $v.kafka.brokers }}
- name: FLOCK_KAFKA_BROKERS
  value: {{ $v.kafka.brokers | quote }}
{{- end }}
{{- if $v.clickhouse.existingSecret }}
{{ include "flock.secretEnv" (dict "name" "FLOCK_CLICKHOUSE_URL" "secret" $v.clickhouse.existingSecret "key" $v.clickhouse.key) }}
{{- else if $v.clickhouse.url }}
- name: FLOCK_CLICKHOUSE_URL
  value: {{ $v.clickhouse.url | quote }}
{{- end }}
{{- if $v.loki.url }}
- name: FLOCK_LOKI_URL
  value: {{ $v.loki.url | quote }}
{{- end }}
{{- if $v.registry.url }}
- name: FLOCK_REGISTRY_URL
  value: {{ $v.registry.url | quote }}
{{- end }}
{{- if $v.registry.username }}
- name: FLOCK_REGISTRY_USERNAME
  value: {{ $v.registry.username | quote }}
{{- end }}
{{- if $v.registry.password.existingSecret }}
{{ include "flock.secretEnv" (dict "name" "FLOCK_REGISTRY_PASSWORD" "secret" $v.registry.password.existingSecret "key" $v.registry.password.key) }}
{{- end }}
{{- if $v.registry.cacheSize }}
- name: FLOCK_REGISTRY_CACHE_SIZE
  value: {{ $v.registry.cacheSize | quote }}
{{- end }}
{{- if $v.registry.host }}
- name: FLOCK_REGISTRY_HOST
  value: {{ $v.registry.host | quote }}
{{- end }}
{{- if $v.s3.endpoint }}
- name: FLOCK_S3_ENDPOINT
  value: {{ $v.s3.endpoint | quote }}
{{- end }}
{{- if $v.s3.bucket }}
- name: FLOCK_S3_BUCKET
  value: {{ $v.s3.bucket | quote }}
{{- end }}
{{- if $v.s3.region }}
- name: FLOCK_S3_REGION
  value: {{ $v.s3.region | quote }}
{{- end }}
{{- if $v.s3.accessKey }}
- name: FLOCK_S3_ACCESS_KEY
  value: {{ $v.s3.accessKey | quote }}
{{- end }}
{{- if $v.s3.secretKey.existingSecret }}
{{ include "flock.secretEnv" (dict "name" "FLOCK_S3_SECRET_KEY" "secret" $v.s3.secretKey.existingSecret "key" $v.s3.secretKey.key) }}
{{- end }}
{{- if $v.deltaMaxRatio }}
- name: FLOCK_DELTA_MAX_RATIO
  value: {{ $v.deltaMaxRatio | toString | quote }}
{{- end }}
{{- if $v.oidc.issuer }}
- name: FLOCK_OIDC_ISSUER
  value: {{ $v.oidc.issuer | quote }}
{{- end }}
{{- if $v.oidc.audience }}
- name: FLOCK_OIDC_AUDIENCE
  value: {{ $v.oidc.audience | quote }}
{{- end }}
{{- if $v.mqtt.url }}
- name: FLOCK_MQTT_URL
  value: {{ $v.mqtt.url | quote }}
{{- else }}
- name: FLOCK_MQTT_LISTEN
  value: {{ printf ":%v" $v.mqtt.embedded.port | quote }}
{{- end }}
{{- if $v.mqtt.publicURL }}
- name: FLOCK_MQTT_PUBLIC_URL
  value: {{ $v.mqtt.publicURL | quote }}
{{- end }}
{{- if $v.mqtt.username }}
- name: FLOCK_MQTT_USERNAME
  value: {{ $v.mqtt.username | quote }}
{{- end }}
{{- if $v.mqtt.password.existingSecret }}
{{ include "flock.secretEnv" (dict "name" "FLOCK_MQTT_PASSWORD" "secret" $v.mqtt.password.existingSecret "key" $v.mqtt.password.key) }}
{{- end }}
{{- if $v.mqtt.hookToken.existingSecret }}
{{ include "flock.secretEnv" (dict "name" "FLOCK_MQTT_HOOK_TOKEN" "secret" $v.mqtt.hookToken.existingSecret "key" $v.mqtt.hookToken.key) }}
{{- end }}
{{- /* Remote access: the api tells devices where the tunnel is and
which public URL they have, so these are everyone's. The api reads only
whether FLOCK_PROXY_TLS_CERT is set (public URLs are then https://); the
files exist on the proxy's pods only (flock.remoteEnv). */}}
{{- if $v.tunnel.endpoint }}
- name: FLOCK_TUNNEL_ENDPOINT
  value: {{ $v.tunnel.endpoint | quote }}
{{- end }}
{{- if $v.tunnel.prefix }}
- name: FLOCK_TUNNEL_PREFIX
  value: {{ $v.tunnel.prefix | quote }}
{{- end }}
{{- if $v.proxy.domain }}
- name: FLOCK_DEVICE_URL_DOMAIN
  value: {{ $v.proxy.domain | quote }}
{{- end }}
{{- if $v.proxy.tls.secretName }}
- name: FLOCK_PROXY_TLS_CERT
  value: {{ printf "%s/tls.crt" (include "flock.proxyTLSDir" .) | quote }}
- name: FLOCK_PROXY_TLS_KEY
  value: {{ printf "%s/tls.key" (include "flock.proxyTLSDir" .) | quote }}
{{- end }}
{{- with $v.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Where the proxy's kubernetes.io/tls Secret is mounted. */}}
{{- define "flock.proxyTLSDir" -}}/etc/flock/proxy-tls{{- end -}}

{{/* The remote-access environment of one target, after flock.env: the
internal plane's token (api, tunnel, proxy: the api and proxy dial devices
through the tunnel replica holding them, at /internal/v1/tunnel/dial), the
WireGuard server key (api: its public key goes to devices; tunnel), and a
tunnel replica's own name and address (downward API), the listeners.
(dict "root" $ "target" "tunnel") */}}
{{- define "flock.remoteEnv" -}}
{{- $v := .root.Values -}}
{{- $tunnel := include "flock.runsTunnel" . -}}
{{- $proxy := include "flock.runsProxy" . -}}
{{- if and $v.internalToken.existingSecret (or $tunnel $proxy (eq .target "api")) }}
{{ include "flock.secretEnv" (dict "name" "FLOCK_INTERNAL_TOKEN" "secret" $v.internalToken.existingSecret "key" $v.internalToken.key) }}
{{- end }}
{{- if and $v.tunnel.privateKey.existingSecret (or $tunnel (eq .target "api")) }}
{{ include "flock.secretEnv" (dict "name" "FLOCK_TUNNEL_PRIVATE_KEY" "secret" $v.tunnel.privateKey.existingSecret "key" $v.tunnel.privateKey.key) }}
{{- end }}
{{- if $tunnel }}
- name: FLOCK_TUNNEL_LISTEN
  value: {{ printf ":%v" $v.tunnel.port | quote }}
# The replica's name in the KV directory of which replica holds each
# device, and where the api and proxy pods reach its HTTP port.
- name: FLOCK_TUNNEL_REPLICA
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
# The pod IP, v4 or v6: flock-api makes http://<ip>:<http port> of it
# (bracketing a v6 address, which $(POD_IP) in a URL here could not).
- name: FLOCK_INTERNAL_HOST
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
{{- end }}
{{- if $proxy }}
- name: FLOCK_PROXY_ADDR
  value: {{ printf ":%v" $v.proxy.port | quote }}
{{- end }}
{{- end -}}

{{/* Whether a target runs the events-gateway (consumer and outbox), and
whether it uses the key sealing event endpoints' secrets: the api creates
endpoints and sends test events, so it needs the key too.
(dict "root" $ "target" "api") */}}
{{- define "flock.runsEventsGateway" -}}
{{- if has .target (list "events-gateway" "all") -}}true{{- end -}}
{{- end -}}
{{- define "flock.usesEvents" -}}
{{- if has .target (list "api" "events-gateway" "all") -}}true{{- end -}}
{{- end -}}

{{/* Whether a target runs in flock-api's dev mode: FLOCK_DEV set true in
extraEnv or in the target's own env (the chart has no value of its own for
it). (dict "root" $ "target" "api") */}}
{{- define "flock.devMode" -}}
{{- $cfg := index .root.Values.targets .target | default dict -}}
{{- range (concat (.root.Values.extraEnv | default list) ($cfg.env | default list)) -}}
{{- if and (eq (toString .name) "FLOCK_DEV") (has (toString .value) (list "1" "t" "T" "true" "TRUE" "True")) -}}true{{- end -}}
{{- end -}}
{{- end -}}

{{/* The events environment of one target, after flock.env: the key sealing
endpoints' secrets and the delivery settings (api, events-gateway, all), the
gateway's own concurrency (events-gateway, all). Empty values stay unset.
(dict "root" $ "target" "events-gateway") */}}
{{- define "flock.eventsEnv" -}}
{{- $e := .root.Values.events -}}
{{- if include "flock.usesEvents" . }}
{{- if $e.encryptionKey.existingSecret }}
{{ include "flock.secretEnv" (dict "name" "FLOCK_EVENTS_ENCRYPTION_KEY" "secret" $e.encryptionKey.existingSecret "key" $e.encryptionKey.key) }}
{{- end }}
{{- if $e.allowPrivate }}
- name: FLOCK_EVENTS_ALLOW_PRIVATE
  value: "true"
{{- end }}
{{- if $e.retrySchedule }}
- name: FLOCK_EVENTS_RETRY_SCHEDULE
  value: {{ $e.retrySchedule | quote }}
{{- end }}
{{- if $e.disableAfter }}
- name: FLOCK_EVENTS_DISABLE_AFTER
  value: {{ $e.disableAfter | quote }}
{{- end }}
{{- if $e.retention }}
- name: FLOCK_EVENTS_RETENTION
  value: {{ $e.retention | quote }}
{{- end }}
{{- if $e.timeout }}
- name: FLOCK_EVENTS_TIMEOUT
  value: {{ $e.timeout | quote }}
{{- end }}
{{- end }}
{{- if include "flock.runsEventsGateway" . }}
{{- if $e.workers }}
- name: FLOCK_EVENTS_WORKERS
  value: {{ $e.workers | toString | quote }}
{{- end }}
{{- if $e.perEndpoint }}
- name: FLOCK_EVENTS_PER_ENDPOINT
  value: {{ $e.perEndpoint | toString | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{- /* The Deployments to render, by instance name: one per enabled target,
except that a builder with architectures becomes one Deployment per
architecture (builder-<arch>), pinned to nodes of that architecture and
told to build it, which is how a fleet of arm64 devices gets native
builds. Each value is {target: FLOCK_TARGET, cfg: the target's values}. */ -}}
{{- define "flock.instances" -}}
{{- $out := dict -}}
{{- range $target, $cfg := .Values.targets -}}
{{- if $cfg.enabled -}}
{{- if and (eq $target "builder") $cfg.architectures -}}
{{- range $arch := $cfg.architectures -}}
{{- $c := deepCopy $cfg -}}
{{- $ns := merge (dict "kubernetes.io/arch" (include "flock.kubeArch" $arch)) (deepCopy (default dict (default $.Values.nodeSelector $cfg.nodeSelector))) -}}
{{- $_ := set $c "nodeSelector" $ns -}}
{{- $_ := set $c "env" (append (default list $cfg.env) (dict "name" "FLOCK_BUILDER_ARCHITECTURES" "value" $arch)) -}}
{{- $_ := set $out (printf "builder-%s" $arch) (dict "target" "builder" "cfg" $c) -}}
{{- end -}}
{{- else -}}
{{- $_ := set $out $target (dict "target" $target "cfg" $cfg) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{- /* A Flock architecture's kubernetes.io/arch node label. */ -}}
{{- define "flock.kubeArch" -}}
{{- get (dict "amd64" "amd64" "arm64" "arm64" "armv7" "arm" "armv6" "arm" "i386" "386" "riscv64" "riscv64") . -}}
{{- end -}}
