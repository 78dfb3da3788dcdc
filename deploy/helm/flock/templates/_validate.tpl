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
{{- if gt (int $pods) 1 -}}
{{- if not (or $v.redis.url $v.redis.existingSecret) -}}
{{- fail (printf "%d pods (%s) need a shared Redis: in-process live state serves one process; set redis.url or redis.existingSecret" (int $pods) (join ", " $enabled)) -}}
{{- end -}}
{{- if not $v.kafka.brokers -}}
{{- fail (printf "%d pods (%s) need a shared Kafka: the in-process cluster serves one process; set kafka.brokers" (int $pods) (join ", " $enabled)) -}}
{{- end -}}
{{- end -}}
{{- if and $v.mqtt.url (not $v.mqtt.password.existingSecret) -}}
{{- fail "mqtt.url names an external broker: flock-api needs the ingester's password there; set mqtt.password.existingSecret (and key)" -}}
{{- end -}}
{{- end -}}
