{{/* Combinations that render valid objects but cannot work: refused at
render time with the setting to change, instead of pods that start and
quietly lose data between processes. Included once, from deployment.yaml. */}}
{{- define "flock.validate" -}}
{{- $v := .Values -}}
{{- $enabled := list -}}
{{- $pods := 0 -}}
{{- range $name, $t := $v.targets -}}
{{- if $t.enabled -}}
{{- $enabled = append $enabled $name -}}
{{- $pods = add $pods $t.replicas -}}
{{- if and (include "flock.embeddedBroker" (dict "root" $ "target" $name)) (gt (int $t.replicas) 1) -}}
{{- fail (printf "targets.%s.replicas is %v, but the embedded MQTT broker serves one process (devices and the commands relay would be split between pods): set mqtt.url to an external broker cluster, or replicas to 1" $name $t.replicas) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if not $enabled -}}
{{- fail "no target is enabled: enable targets.<name>.enabled (api and ingester), or use values-all-in-one.yaml" -}}
{{- end -}}
{{- if and (has "all" $enabled) (gt (len $enabled) 1) -}}
{{- fail (printf "targets.all runs every target in one process, but %s are enabled too: disable them, or disable all" (without $enabled "all" | join ", ")) -}}
{{- end -}}
{{- /* Remote access as targets of their own: the api and proxy pods reach
a device through the tunnel replica holding it, found in the KV store and
dialled over the internal plane with the shared token. */ -}}
{{- $remote := list -}}
{{- range $name := list "tunnel" "proxy" -}}
{{- if (index $v.targets $name).enabled -}}{{- $remote = append $remote (printf "targets.%s" $name) -}}{{- end -}}
{{- end -}}
{{- if $remote -}}
{{- if not (or $v.redis.url $v.redis.existingSecret) -}}
{{- fail (printf "%s need a shared Redis: which tunnel replica holds each device is kept in the KV store, and the in-process one serves one process; set redis.url or redis.existingSecret" (join " and " $remote)) -}}
{{- end -}}
{{- if not $v.internalToken.existingSecret -}}
{{- fail (printf "%s need internalToken.existingSecret (and key): the api and proxy pods dial devices through the tunnel replicas at /internal/v1/tunnel/dial with that shared token (FLOCK_INTERNAL_TOKEN): a Secret holding a random value, e.g. from openssl rand -hex 32" (join " and " $remote)) -}}
{{- end -}}
{{- end -}}
{{- if and $v.targets.tunnel.enabled (not $v.tunnel.endpoint) -}}
{{- fail "targets.tunnel needs tunnel.endpoint: the host:port of the wireguard Service's load balancer, which the api tells devices to send WireGuard to (FLOCK_TUNNEL_ENDPOINT)" -}}
{{- end -}}
{{- /* Events for customers: the api (endpoints, test events), the
events-gateway and all seal and open endpoints' secrets with one key, which
flock-api generates only in dev mode. */ -}}
{{- $needsKey := list -}}
{{- range $name := list "api" "events-gateway" "all" -}}
{{- $t := index $v.targets $name -}}
{{- if and $t $t.enabled (not (include "flock.devMode" (dict "root" $ "target" $name))) -}}
{{- $needsKey = append $needsKey (printf "targets.%s" $name) -}}
{{- end -}}
{{- end -}}
{{- if and $needsKey (not $v.events.encryptionKey.existingSecret) -}}
{{- fail (printf "%s need events.encryptionKey.existingSecret (and key): the key sealing event endpoints' signing secrets and Kafka passwords at rest (FLOCK_EVENTS_ENCRYPTION_KEY, 32 bytes base64); outside dev mode flock-api refuses to start the events-gateway without it and the api answers event-endpoint operations 503. Create it with kubectl create secret generic flock-events --from-literal=events-encryption-key=\"$(openssl rand -base64 32)\" and set events.encryptionKey.existingSecret=flock-events" (join " and " $needsKey)) -}}
{{- end -}}
{{- if and (or $v.targets.proxy.enabled $v.targets.all.enabled) (not $v.proxy.domain) -}}
{{- fail (printf "%s needs proxy.domain: devices' public URLs are <device uuid>.<proxy.domain> (FLOCK_DEVICE_URL_DOMAIN), and flock-api refuses to run the proxy without it; point a wildcard DNS record *.<proxy.domain> at the proxy's public Service" (ternary "targets.proxy" "targets.all (which runs the proxy)" $v.targets.proxy.enabled)) -}}
{{- end -}}
{{- if gt (int $pods) 1 -}}
{{- if not (or $v.redis.url $v.redis.existingSecret) -}}
{{- fail (printf "%d pods (%s) need a shared Redis: in-process live state serves one process; set redis.url or redis.existingSecret" (int $pods) (join ", " $enabled)) -}}
{{- end -}}
{{- if not $v.kafka.brokers -}}
{{- fail (printf "%d pods (%s) need a shared Kafka: the in-process cluster serves one process; set kafka.brokers" (int $pods) (join ", " $enabled)) -}}
{{- end -}}
{{- end -}}
{{- /* The embedded registry and S3 store live inside one process (on its
data volume): the api checks release images in the registry the
registry-proxy pushes to and the delta target reads, and serves the deltas
the delta target writes to S3, so outside targets.all they must be shared. */ -}}
{{- $imagePods := list -}}
{{- $imageTargets := list "api" "registry-proxy" "delta" "builder" "all" -}}
{{- $split := false -}}
{{- $regPods := 0 -}}
{{- $s3Pods := 0 -}}
{{- range $name := $imageTargets -}}
{{- $t := index $v.targets $name -}}
{{- if and $t $t.enabled -}}
{{- $imagePods = append $imagePods (printf "%s ×%v" $name $t.replicas) -}}
{{- $regPods = add $regPods $t.replicas -}}
{{- if ne $name "registry-proxy" -}}{{- $s3Pods = add $s3Pods $t.replicas -}}{{- end -}}
{{- if has $name (list "registry-proxy" "delta" "builder") -}}{{- $split = true -}}{{- end -}}
{{- end -}}
{{- end -}}
{{- if and (not $v.registry.url) (or $split (gt (int $regPods) 1)) -}}
{{- fail (printf "registry.url is empty, but the embedded registry serves only the process it runs in, and the api, registry-proxy and delta pods must share one (enabled: %s): set registry.url to Harbor or another distribution-API registry (with registry.username and registry.password.existingSecret for its robot account), or run targets.all alone (values-all-in-one.yaml)" (join ", " $imagePods)) -}}
{{- end -}}
{{- if and (not $v.s3.endpoint) (or $split (gt (int $s3Pods) 1)) -}}
{{- fail (printf "s3.endpoint is empty, but the embedded S3 store serves only the process it runs in, and the delta pods write the deltas the api pods serve (enabled: %s): set s3.endpoint to an S3-compatible store, or run targets.all alone (values-all-in-one.yaml)" (join ", " $imagePods)) -}}
{{- end -}}
{{- if and $v.registry.username (not $v.registry.password.existingSecret) -}}
{{- fail "registry.username is set without its password: set registry.password.existingSecret (and key) to the Secret holding the robot account's secret" -}}
{{- end -}}
{{- if and $v.registry.password.existingSecret (not $v.registry.username) -}}
{{- fail "registry.password.existingSecret is set without registry.username: name the robot account (Harbor: robot$...)" -}}
{{- end -}}
{{- if and $v.s3.accessKey (not $v.s3.secretKey.existingSecret) -}}
{{- fail "s3.accessKey is set without its secret key: set s3.secretKey.existingSecret (and key), or leave both empty for the AWS SDK's default chain (workload identity)" -}}
{{- end -}}
{{- if and $v.s3.secretKey.existingSecret (not $v.s3.accessKey) -}}
{{- fail "s3.secretKey.existingSecret is set without s3.accessKey: set the access key id, or leave both empty for the AWS SDK's default chain (workload identity)" -}}
{{- end -}}
{{- /* Values of earlier chart versions, named with their replacement. */ -}}
{{- if hasKey $v "harbor" -}}
{{- fail "harbor.url is now registry.url (with registry.username, registry.password and registry.host)" -}}
{{- end -}}
{{- if or (hasKey $v.s3 "existingSecret") (hasKey $v.s3 "accessKeyIDKey") (hasKey $v.s3 "secretAccessKeyKey") -}}
{{- fail "s3.existingSecret, s3.accessKeyIDKey and s3.secretAccessKeyKey are gone: flock-api reads its own FLOCK_S3_ACCESS_KEY and FLOCK_S3_SECRET_KEY; set s3.accessKey and s3.secretKey.existingSecret (and key)" -}}
{{- end -}}
{{- if and $v.mqtt.url (not $v.mqtt.password.existingSecret) -}}
{{- fail "mqtt.url names an external broker: flock-api needs the ingester's password there; set mqtt.password.existingSecret (and key)" -}}
{{- end -}}
{{- end -}}
