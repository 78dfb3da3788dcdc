package charttest

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"

	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/cli/values"
	"helm.sh/helm/v3/pkg/getter"
	"helm.sh/helm/v3/pkg/lint"
	"helm.sh/helm/v3/pkg/lint/support"
	"helm.sh/helm/v3/pkg/release"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
)

// The targets that exist today, enabled by default (sorted), and those that
// will come, one values entry each.
var (
	defaultTargets = []string{"api", "delta", "events-gateway", "ingester", "registry-proxy", "scheduler"}
	laterTargets   = []string{"builder", "tunnel", "proxy"}
)

// Where the chart mounts FLOCK_DATA_DIR (values.yaml dataDir.path).
const dataDir = "/var/lib/flock"

func mustRender(t *testing.T, files []string, set ...string) *rendered {
	t.Helper()
	r, err := renderChart(t, files, set...)
	if err != nil {
		t.Fatalf("render %v %v: %v", files, set, err)
	}
	return r
}

func TestDefaultValues(t *testing.T) {
	r := mustRender(t, nil)
	t.Logf("default values: render %v, validate %v, %d objects", r.render, r.validate, len(r.objects))

	deps := byTarget(t, r)
	if got := sortedKeys(deps); !slices.Equal(got, defaultTargets) {
		t.Fatalf("Deployments for targets %v, want one each for %v:\n  %s", got, defaultTargets, kinds(r))
	}
	for target, d := range deps {
		checkWorkload(t, r, target, d)
	}
	if n := *deps["api"].Spec.Replicas; n != 2 {
		t.Errorf("api replicas %d, want 2", n)
	}
	if n := *deps["ingester"].Spec.Replicas; n != 1 {
		t.Errorf("ingester replicas %d, want 1 (embedded broker)", n)
	}
	checkPDBs(t, r, deps)
	checkMigrateJob(t, r)

	if n := *deps["scheduler"].Spec.Replicas; n != 2 {
		t.Errorf("scheduler replicas %d, want 2 (they share the work)", n)
	}
	if n := *deps["registry-proxy"].Spec.Replicas; n != 2 {
		t.Errorf("registry-proxy replicas %d, want 2", n)
	}
	if n := *deps["delta"].Spec.Replicas; n != 1 {
		t.Errorf("delta replicas %d, want 1", n)
	}
	if n := *deps["events-gateway"].Spec.Replicas; n != 2 {
		t.Errorf("events-gateway replicas %d, want 2", n)
	}
	// Split targets share the registry and S3 the defaults name, so only the
	// delta target (its scratch files) and the registry-proxy (its blob
	// cache) have a data volume, an emptyDir.
	for target, d := range deps {
		c := d.Spec.Template.Spec.Containers[0]
		for name, v := range map[string]string{"FLOCK_REGISTRY_URL": "http://flock-registry:5000", "FLOCK_S3_ENDPOINT": "http://flock-s3:9000"} {
			if e, ok := env(c, name); !ok || e.Value != v {
				t.Errorf("%s: %s = %+v, want %q", target, name, e, v)
			}
		}
		for _, name := range []string{"FLOCK_REGISTRY_USERNAME", "FLOCK_REGISTRY_PASSWORD", "FLOCK_REGISTRY_HOST", "FLOCK_REGISTRY_CACHE_SIZE", "FLOCK_S3_BUCKET",
			"FLOCK_S3_REGION", "FLOCK_S3_ACCESS_KEY", "FLOCK_S3_SECRET_KEY", "FLOCK_DELTA_MAX_RATIO",
			"FLOCK_TUNNEL_ENDPOINT", "FLOCK_TUNNEL_PREFIX", "FLOCK_TUNNEL_PRIVATE_KEY", "FLOCK_INTERNAL_TOKEN", "FLOCK_DEVICE_URL_DOMAIN",
			"FLOCK_PROXY_TLS_CERT", "FLOCK_PROXY_TLS_KEY", "FLOCK_TUNNEL_LISTEN", "FLOCK_PROXY_ADDR", "FLOCK_INTERNAL_URL", "FLOCK_TUNNEL_REPLICA",
			"FLOCK_EVENTS_ALLOW_PRIVATE", "FLOCK_EVENTS_RETRY_SCHEDULE", "FLOCK_EVENTS_DISABLE_AFTER", "FLOCK_EVENTS_RETENTION", "FLOCK_EVENTS_TIMEOUT",
			"FLOCK_EVENTS_WORKERS", "FLOCK_EVENTS_PER_ENDPOINT"} {
			if e, ok := env(c, name); ok {
				t.Errorf("%s: %s=%+v although its value is empty", target, name, e)
			}
		}
		if target == "delta" || target == "registry-proxy" || strings.HasPrefix(target, "builder-") {
			checkDataDir(t, d, "emptyDir", "10Gi")
		} else {
			checkDataDir(t, d, "", "")
		}
		checkEventsKey(t, target, c, "flock-events")
	}
	if !strings.Contains(r.notes, "FLOCK_EVENTS_ENCRYPTION_KEY from Secret flock-events (key events-encryption-key)") {
		t.Errorf("NOTES.txt does not name the events key's Secret:\n%s", r.notes)
	}
	if n := len(r.pvcs()); n != 0 {
		t.Errorf("%d PersistentVolumeClaims without targets.all", n)
	}
	// HTTP for every target; MQTT for the ingester's embedded broker.
	svcs := servicesByName(r)
	if got, want := sortedKeys(svcs), []string{"flock-api", "flock-delta", "flock-events-gateway", "flock-ingester", "flock-ingester-mqtt", "flock-registry-proxy", "flock-scheduler"}; !slices.Equal(got, want) {
		t.Errorf("Services %v, want %v", got, want)
	}
	if s, ok := svcs["flock-ingester-mqtt"]; ok {
		if p := s.Spec.Ports; len(p) != 1 || p[0].Port != 1883 || proto(p[0].Protocol) != corev1.ProtocolTCP {
			t.Errorf("flock-ingester-mqtt ports %+v, want TCP 1883", p)
		}
	}
	for _, name := range []string{"flock-api", "flock-delta", "flock-events-gateway", "flock-ingester", "flock-registry-proxy", "flock-scheduler"} {
		if s, ok := svcs[name]; ok && (len(s.Spec.Ports) != 1 || s.Spec.Ports[0].Name != "http") {
			t.Errorf("%s ports %+v, want http only", name, s.Spec.Ports)
		}
	}
	if env, ok := env(deps["ingester"].Spec.Template.Spec.Containers[0], "FLOCK_MQTT_LISTEN"); !ok || env.Value != ":1883" {
		t.Errorf("ingester FLOCK_MQTT_LISTEN %+v, want :1883 (the port its Service targets)", env)
	}
	if n := len(r.serviceMonitors()); n != 0 {
		t.Errorf("%d ServiceMonitors while metrics.serviceMonitor.enabled is false", n)
	}
	if !strings.Contains(r.notes, "oidc.issuer is empty") {
		t.Errorf("NOTES.txt does not warn that oidc.issuer is unset:\n%s", r.notes)
	}
	if !strings.Contains(r.notes, "route /v2/ and /registry/token") || !strings.Contains(r.notes, "flock-registry-proxy") {
		t.Errorf("NOTES.txt does not say where the registry's paths go:\n%s", r.notes)
	}
}

func TestAllInOne(t *testing.T) {
	r := mustRender(t, allInOneFiles)
	t.Logf("values-all-in-one.yaml: render %v, validate %v, %d objects", r.render, r.validate, len(r.objects))

	deps := byTarget(t, r)
	if len(r.deployments()) != 1 || deps["all"] == nil {
		t.Fatalf("want exactly one Deployment, with FLOCK_TARGET=all; got:\n  %s", kinds(r))
	}
	d := deps["all"]
	checkWorkload(t, r, "all", d)
	if *d.Spec.Replicas != 1 {
		t.Errorf("replicas %d, want 1: in-process engines serve one process", *d.Spec.Replicas)
	}
	c := d.Spec.Template.Spec.Containers[0]
	for _, name := range []string{"FLOCK_REDIS_URL", "FLOCK_KAFKA_BROKERS", "FLOCK_MQTT_URL", "FLOCK_REGISTRY_URL", "FLOCK_S3_ENDPOINT"} {
		if e, ok := env(c, name); ok {
			t.Errorf("%s=%q: all-in-one runs on the in-process engine", name, e.Value)
		}
	}
	// The embedded registry and S3 keep their files on a claim of the
	// chart's, which one pod at a time mounts.
	checkDataDir(t, d, "pvc", "flock-all-data")
	if d.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType {
		t.Errorf("strategy %q, want Recreate: two pods would share the embedded registry's volume", d.Spec.Strategy.Type)
	}
	pvcs := r.pvcs()
	if len(pvcs) != 1 || pvcs[0].Name != "flock-all-data" {
		t.Fatalf("PersistentVolumeClaims %v, want flock-all-data:\n  %s", pvcs, kinds(r))
	}
	pvc := pvcs[0]
	if got := pvc.Spec.Resources.Requests[corev1.ResourceStorage]; got.String() != "20Gi" {
		t.Errorf("flock-all-data requests %s, want 20Gi", got.String())
	}
	if !slices.Equal(pvc.Spec.AccessModes, []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}) || pvc.Spec.StorageClassName != nil {
		t.Errorf("flock-all-data: access modes %v, storage class %v; want ReadWriteOnce on the default class", pvc.Spec.AccessModes, pvc.Spec.StorageClassName)
	}
	if r.hookOf(pvc) != nil {
		t.Error("flock-all-data is a hook: it would be deleted and recreated with its data")
	}
	if strings.Contains(r.notes, "WARNING: persistence.enabled is false") || !strings.Contains(r.notes, "PersistentVolumeClaim flock-all-data") {
		t.Errorf("NOTES.txt about the data volume:\n%s", r.notes)
	}
	checkPDBs(t, r, deps)
	checkMigrateJob(t, r)
	svcs := servicesByName(r)
	if got, want := sortedKeys(svcs), []string{"flock-all", "flock-all-mqtt", "flock-all-public", "flock-all-wireguard"}; !slices.Equal(got, want) {
		t.Errorf("Services %v, want %v", got, want)
	}
	// "all" runs the tunnel and the proxy: their listeners, Services and
	// the replica's own address; the endpoint defaults to the public URL's
	// host in flock-api.
	for name, want := range map[string]string{"FLOCK_TUNNEL_LISTEN": ":51820", "FLOCK_PROXY_ADDR": ":8081",
		"FLOCK_DEVICE_URL_DOMAIN": "devices.example.com"} {
		if e, ok := env(c, name); !ok || e.Value != want {
			t.Errorf("all: %s = %+v, want %q", name, e, want)
		}
	}
	checkFieldEnv(t, c, "FLOCK_INTERNAL_HOST", "status.podIP")
	if e, ok := env(c, "FLOCK_TUNNEL_ENDPOINT"); ok {
		t.Errorf("all: FLOCK_TUNNEL_ENDPOINT=%q although tunnel.endpoint is empty", e.Value)
	}
	// "all" runs the api and the events-gateway.
	checkEventsKey(t, "all", c, "flock-events")
	checkServicePort(t, svcs["flock-all-wireguard"], corev1.ServiceTypeLoadBalancer, corev1.ProtocolUDP, 51820)
	checkServicePort(t, svcs["flock-all-public"], corev1.ServiceTypeLoadBalancer, corev1.ProtocolTCP, 80)
	if s := svcs["flock-all-mqtt"]; s != nil && s.Spec.Type != corev1.ServiceTypeLoadBalancer {
		t.Errorf("MQTT Service type %s, want LoadBalancer (devices are outside the cluster)", s.Spec.Type)
	}
}

// Every later target is one values entry away, and every external system
// the chart knows reaches the pods, secrets by reference only.
func TestEveryTargetAndEveryStore(t *testing.T) {
	set := []string{
		"publicURL=https://flock.example.com",
		"redis.existingSecret=flock-redis", "kafka.brokers=kafka-0:9092\\,kafka-1:9092",
		"clickhouse.url=clickhouse://clickhouse:9000/flock", "loki.url=http://loki:3100/loki/api/v1/push",
		"registry.url=https://harbor.example.com", "registry.username=robot$flock",
		"registry.password.existingSecret=flock-registry", "registry.host=registry.example.com",
		"registry.cacheSize=20GiB",
		"s3.endpoint=https://s3.eu-west-1.amazonaws.com", "s3.bucket=flock-deltas", "s3.region=eu-west-1",
		"s3.accessKey=AKIAEXAMPLE", "s3.secretKey.existingSecret=flock-s3", "s3.secretKey.key=secret-access-key",
		"deltaMaxRatio=0.5",
		"oidc.issuer=https://auth.example.com", "oidc.audience=flock-project",
		"mqtt.url=mqtts://emqx:8883", "mqtt.publicURL=mqtts://mqtt.example.com:8883",
		"mqtt.password.existingSecret=flock-mqtt", "mqtt.hookToken.existingSecret=flock-mqtt",
		"targets.ingester.replicas=3",
		"metrics.serviceMonitor.enabled=true", "metrics.serviceMonitor.labels.release=prometheus",
		"tunnel.endpoint=tunnel.example.com:51820", "tunnel.prefix=fd00:1234::/64", "tunnel.privateKey.existingSecret=flock-tunnel",
		"internalToken.existingSecret=flock-internal", "proxy.domain=devices.example.com", "proxy.tls.secretName=devices-wildcard",
	}
	for _, tg := range laterTargets {
		set = append(set, "targets."+tg+".enabled=true")
	}
	r := mustRender(t, nil, set...)

	deps := byTarget(t, r)
	want := append(slices.Clone(defaultTargets), laterTargets...)
	// The builder runs one Deployment per architecture (values.yaml:
	// amd64 and arm64).
	want = slices.DeleteFunc(want, func(s string) bool { return s == "builder" })
	want = append(want, "builder-amd64", "builder-arm64")
	sort.Strings(want)
	if got := sortedKeys(deps); !slices.Equal(got, want) {
		t.Fatalf("Deployments for %v, want one for each of %v", got, want)
	}
	for target, d := range deps {
		checkWorkload(t, r, target, d)
	}
	checkPDBs(t, r, deps)

	svcs := servicesByName(r)
	if _, ok := svcs["flock-ingester-mqtt"]; ok {
		t.Error("an MQTT Service for the ingester although mqtt.url names an external broker")
	}
	wg, ok := svcs["flock-tunnel-wireguard"]
	if !ok {
		t.Fatalf("no UDP Service for the tunnel; Services: %v", sortedKeys(svcs))
	}
	if p := wg.Spec.Ports; len(p) != 1 || p[0].Protocol != corev1.ProtocolUDP || p[0].Port != 51820 || wg.Spec.Type != corev1.ServiceTypeLoadBalancer {
		t.Errorf("flock-tunnel-wireguard: %s %+v, want a LoadBalancer on UDP 51820", wg.Spec.Type, p)
	}
	if wg.Spec.SessionAffinity != corev1.ServiceAffinityClientIP {
		t.Errorf("flock-tunnel-wireguard: sessionAffinity %q, want ClientIP (a device keeps its replica)", wg.Spec.SessionAffinity)
	}
	checkServicePort(t, svcs["flock-proxy-public"], corev1.ServiceTypeLoadBalancer, corev1.ProtocolTCP, 443)

	sms := r.serviceMonitors()
	if len(sms) != 1 {
		t.Fatalf("%d ServiceMonitors, want 1", len(sms))
	}
	sm := sms[0]
	if sm.Labels["release"] != "prometheus" {
		t.Errorf("ServiceMonitor labels %v lack release=prometheus", sm.Labels)
	}
	if ep := sm.Spec.Endpoints; len(ep) != 1 || ep[0].Path != "/metrics" || ep[0].Port != "http" {
		t.Errorf("ServiceMonitor endpoints %+v, want port http path /metrics", ep)
	}
	// It selects the HTTP Service of every target and nothing else.
	var selected []string
	for name, s := range svcs {
		if s.Labels["flock.io/surface"] == "http" && matches(sm.Spec.Selector.MatchLabels, s.Labels) {
			selected = append(selected, name)
		}
		if s.Labels["flock.io/surface"] != "http" && matches(sm.Spec.Selector.MatchLabels, s.Labels) {
			t.Errorf("ServiceMonitor selects %s, which does not serve /metrics", name)
		}
	}
	if len(selected) != len(want) {
		t.Errorf("ServiceMonitor selects %d HTTP Services, want %d", len(selected), len(want))
	}

	plain := map[string]string{
		"FLOCK_PUBLIC_URL":          "https://flock.example.com",
		"FLOCK_KAFKA_BROKERS":       "kafka-0:9092,kafka-1:9092",
		"FLOCK_CLICKHOUSE_URL":      "clickhouse://clickhouse:9000/flock",
		"FLOCK_LOKI_URL":            "http://loki:3100/loki/api/v1/push",
		"FLOCK_REGISTRY_URL":        "https://harbor.example.com",
		"FLOCK_REGISTRY_USERNAME":   "robot$flock",
		"FLOCK_REGISTRY_HOST":       "registry.example.com",
		"FLOCK_REGISTRY_CACHE_SIZE": "20GiB",
		"FLOCK_S3_ENDPOINT":         "https://s3.eu-west-1.amazonaws.com",
		"FLOCK_S3_BUCKET":           "flock-deltas",
		"FLOCK_S3_REGION":           "eu-west-1",
		"FLOCK_S3_ACCESS_KEY":       "AKIAEXAMPLE",
		"FLOCK_DELTA_MAX_RATIO":     "0.5",
		"FLOCK_OIDC_ISSUER":         "https://auth.example.com",
		"FLOCK_OIDC_AUDIENCE":       "flock-project",
		"FLOCK_MQTT_URL":            "mqtts://emqx:8883",
		"FLOCK_MQTT_PUBLIC_URL":     "mqtts://mqtt.example.com:8883",
		"FLOCK_TUNNEL_ENDPOINT":     "tunnel.example.com:51820",
		"FLOCK_TUNNEL_PREFIX":       "fd00:1234::/64",
		"FLOCK_DEVICE_URL_DOMAIN":   "devices.example.com",
		"FLOCK_PROXY_TLS_CERT":      "/etc/flock/proxy-tls/tls.crt",
		"FLOCK_PROXY_TLS_KEY":       "/etc/flock/proxy-tls/tls.key",
	}
	secret := map[string][2]string{
		"FLOCK_DATABASE_URL":      {"flock-database", "database-url"},
		"FLOCK_REDIS_URL":         {"flock-redis", "redis-url"},
		"FLOCK_MQTT_PASSWORD":     {"flock-mqtt", "mqtt-password"},
		"FLOCK_MQTT_HOOK_TOKEN":   {"flock-mqtt", "mqtt-hook-token"},
		"FLOCK_REGISTRY_PASSWORD": {"flock-registry", "registry-password"},
		"FLOCK_S3_SECRET_KEY":     {"flock-s3", "secret-access-key"},
	}
	for target, d := range deps {
		c := d.Spec.Template.Spec.Containers[0]
		for name, v := range plain {
			if e, ok := env(c, name); !ok || e.Value != v {
				t.Errorf("%s: %s = %+v, want %q", target, name, e, v)
			}
		}
		for name, ref := range secret {
			checkSecretEnv(t, target, c, name, ref[0], ref[1])
		}
		if _, ok := env(c, "FLOCK_MQTT_LISTEN"); ok {
			t.Errorf("%s: FLOCK_MQTT_LISTEN set although the broker is external", target)
		}
		checkRemoteSecrets(t, target, c, "flock-internal", "flock-tunnel")
		// Credentials reach flock-api as its own settings (redacted by
		// --print-config), not as the AWS SDK's variables.
		for _, name := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} {
			if _, ok := env(c, name); ok {
				t.Errorf("%s: %s set; the chart passes FLOCK_S3_ACCESS_KEY and FLOCK_S3_SECRET_KEY", target, name)
			}
		}
		if target == "delta" || target == "registry-proxy" || strings.HasPrefix(target, "builder-") {
			checkDataDir(t, d, "emptyDir", "10Gi")
		} else {
			checkDataDir(t, d, "", "")
		}
		checkEventsKey(t, target, c, "flock-events")
	}
	if strings.Contains(r.notes, "oidc.issuer is empty") {
		t.Errorf("NOTES.txt warns about an issuer that is set")
	}
}

// Combinations that would deploy but not work are refused at render time,
// naming the value to change; so are values the schema does not know.
func TestRefusedValues(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files []string
		set   []string
		want  string
	}{
		{"embedded broker on two ingesters", nil, []string{"targets.ingester.replicas=2"}, "targets.ingester.replicas is 2, but the embedded MQTT broker serves one process"},
		{"embedded broker on two all-in-one pods", allInOneFiles, []string{"targets.all.replicas=2"}, "targets.all.replicas is 2"},
		{"split targets without Redis", nil, []string{"redis.url="}, "need a shared Redis"},
		{"split targets without Kafka", nil, []string{"kafka.brokers="}, "need a shared Kafka"},
		{"all beside api", allInOneFiles, []string{"targets.api.enabled=true"}, "targets.all runs every target in one process, but api are enabled too"},
		{"no target", nil, only(), "no target is enabled"},
		{"external broker without its password", nil, []string{"mqtt.url=mqtt://emqx:1883", "targets.ingester.replicas=2"}, "set mqtt.password.existingSecret"},
		// The embedded registry and S3 serve one process: split targets
		// need the shared ones.
		{"split targets without a registry", nil, []string{"registry.url="}, "registry.url is empty, but the embedded registry serves only the process it runs in"},
		{"split targets without a registry names them", nil, []string{"registry.url="}, "enabled: api ×2, registry-proxy ×2, delta ×1"},
		{"split targets without S3", nil, []string{"s3.endpoint="}, "s3.endpoint is empty, but the embedded S3 store serves only the process it runs in"},
		{"delta alone without a registry", nil, append(only("delta"), "registry.url="), "set registry.url"},
		{"delta alone without S3", nil, append(only("delta"), "s3.endpoint="), "set s3.endpoint"},
		{"registry-proxy alone without a registry", nil, append(only("registry-proxy"), "registry.url="), "enabled: registry-proxy ×2"},
		{"registry-proxy alone without S3", nil, append(only("registry-proxy"), "s3.endpoint="), "set s3.endpoint"},
		{"two api pods without a registry", nil, append(only("api"), "targets.api.replicas=2", "registry.url="), "enabled: api ×2"},
		{"two api pods without S3", nil, append(only("api"), "targets.api.replicas=2", "s3.endpoint="), "set s3.endpoint"},
		{"two all-in-one pods without a registry", allInOneFiles, []string{"targets.all.replicas=2", "mqtt.url=mqtt://emqx:1883", "mqtt.password.existingSecret=m",
			"redis.url=redis://redis:6379/0", "kafka.brokers=kafka:9092", "s3.endpoint=http://minio:9000"}, "enabled: all ×2"},
		{"two all-in-one pods without S3", allInOneFiles, []string{"targets.all.replicas=2", "mqtt.url=mqtt://emqx:1883", "mqtt.password.existingSecret=m",
			"redis.url=redis://redis:6379/0", "kafka.brokers=kafka:9092", "registry.url=http://registry:5000"}, "set s3.endpoint"},
		{"registry user without password", nil, []string{"registry.username=robot$flock"}, "set registry.password.existingSecret"},
		{"registry password without user", nil, []string{"registry.password.existingSecret=flock-registry"}, "without registry.username"},
		{"registry password without key", nil, []string{"registry.username=robot$flock", "registry.password.existingSecret=flock-registry", "registry.password.key="}, "FLOCK_REGISTRY_PASSWORD: the Secret's key must not be empty"},
		{"S3 access key without secret key", nil, []string{"s3.accessKey=AKIA"}, "set s3.secretKey.existingSecret"},
		{"S3 secret key without access key", nil, []string{"s3.secretKey.existingSecret=flock-s3"}, "without s3.accessKey"},
		{"harbor.url of chart 0.1", nil, []string{"harbor.url=https://harbor.example.com"}, "harbor.url is now registry.url"},
		{"s3.existingSecret of chart 0.1", nil, []string{"s3.existingSecret=flock-s3"}, "set s3.accessKey and s3.secretKey.existingSecret"},
		{"registry URL without scheme", nil, []string{"registry.url=harbor.example.com"}, "/registry/url"},
		{"S3 endpoint without scheme", nil, []string{"s3.endpoint=minio:9000"}, "/s3/endpoint"},
		{"registry host with a scheme", nil, []string{"registry.host=https://registry.example.com"}, "/registry/host"},
		{"registry cache size in Kubernetes units", nil, []string{"registry.cacheSize=8Gi"}, "/registry/cacheSize"},
		{"delta ratio zero", nil, []string{"deltaMaxRatio=0"}, "deltaMaxRatio"},
		{"delta ratio above one", nil, []string{"deltaMaxRatio=1.5"}, "deltaMaxRatio"},
		{"delta ratio not a number", nil, []string{"deltaMaxRatio=most"}, "deltaMaxRatio"},
		{"data dir not absolute", nil, []string{"dataDir.path=data"}, "/dataDir/path"},
		{"data dir size not a quantity", nil, []string{"dataDir.sizeLimit=ten gigs"}, "/dataDir/sizeLimit"},
		{"persistence size not a quantity", allInOneFiles, []string{"persistence.size=lots"}, "/persistence/size"},
		{"misspelt value", nil, []string{"targets.api.replica=3"}, "replica"},
		{"unknown target", nil, []string{"targets.sheduler.enabled=true"}, "sheduler"},
		{"no database Secret", nil, []string{"postgresql.existingSecret="}, "existingSecret"},
		{"wrong type", nil, []string{"targets.api.replicas=two"}, "replicas"},
		// Zitadel project ids are digits: unquoted, YAML makes them a
		// number, and a large one loses digits as a float.
		{"numeric audience", nil, []string{"oidc.audience=312345678901234567"}, "/oidc/audience': got number, want string"},
		{"bad duration", nil, []string{"shutdownDelay=5 seconds"}, "shutdownDelay"},
		// Remote access: the tunnel and proxy pods need what makes them
		// reachable and each other's plane.
		{"tunnel without its endpoint", nil, remoteSet("tunnel.endpoint="), "targets.tunnel needs tunnel.endpoint"},
		{"tunnel without the internal token", nil, remoteSet("internalToken.existingSecret="), "targets.tunnel and targets.proxy need internalToken.existingSecret"},
		{"proxy alone without the internal token", nil, []string{"targets.proxy.enabled=true", "proxy.domain=devices.example.com"}, "targets.proxy need internalToken.existingSecret"},
		{"proxy without its domain", nil, remoteSet("proxy.domain="), "targets.proxy needs proxy.domain"},
		{"all-in-one without a device URL domain", []string{allInOne}, nil, "targets.all (which runs the proxy) needs proxy.domain"},
		{"tunnel without Redis", nil, append(only(), "targets.tunnel.enabled=true", "targets.tunnel.replicas=1", "tunnel.endpoint=t.example.com:51820",
			"internalToken.existingSecret=i", "redis.url="), "targets.tunnel need a shared Redis"},
		{"internal token without key", nil, remoteSet("internalToken.key="), "FLOCK_INTERNAL_TOKEN: the Secret's key must not be empty"},
		{"tunnel endpoint with a scheme", nil, remoteSet("tunnel.endpoint=udp://tunnel.example.com:51820"), "/tunnel/endpoint"},
		{"tunnel endpoint without a port", nil, remoteSet("tunnel.endpoint=tunnel.example.com"), "/tunnel/endpoint"},
		{"proxy domain with a wildcard", nil, remoteSet("proxy.domain=*.devices.example.com"), "/proxy/domain"},
		{"proxy Service port", nil, remoteSet("proxy.service.port=8443"), "port"},
		// Events for customers: the key sealing endpoints' secrets is
		// required while the api, events-gateway or all runs outside dev
		// mode.
		{"default targets without the events key", nil, []string{"events.encryptionKey.existingSecret="},
			"targets.api and targets.events-gateway need events.encryptionKey.existingSecret"},
		{"events key error says how to make one", nil, []string{"events.encryptionKey.existingSecret="}, "openssl rand -base64 32"},
		{"events-gateway alone without the events key", nil, append(only("events-gateway"), "events.encryptionKey.existingSecret="), "targets.events-gateway need events.encryptionKey.existingSecret"},
		{"api alone without the events key", nil, append(only("api"), "events.encryptionKey.existingSecret="), "targets.api need events.encryptionKey.existingSecret"},
		{"all-in-one without the events key", allInOneFiles, []string{"events.encryptionKey.existingSecret="}, "targets.all need events.encryptionKey.existingSecret"},
		{"dev mode of another target only", nil, []string{"events.encryptionKey.existingSecret=", "targets.ingester.env[0].name=FLOCK_DEV", "targets.ingester.env[0].value=true"},
			"targets.api and targets.events-gateway need"},
		{"events key without key name", nil, []string{"events.encryptionKey.key="}, "FLOCK_EVENTS_ENCRYPTION_KEY: the Secret's key must not be empty"},
		{"events retry schedule not durations", nil, []string{"events.retrySchedule=5s;5m"}, "/events/retrySchedule"},
		{"events timeout not a duration", nil, []string{"events.timeout=10"}, "/events/timeout"},
		{"events workers zero", nil, []string{"events.workers=0"}, "/events/workers"},
		{"events per endpoint not a number", nil, []string{"events.perEndpoint=many"}, "/events/perEndpoint"},
		{"events allowPrivate not a boolean", nil, []string{"events.allowPrivate=yes"}, "/events/allowPrivate"},
		{"unknown events value", nil, []string{"events.encryptionKeySecret=x"}, "encryptionKeySecret"},
		{"local traffic policy on a ClusterIP", nil, remoteSet("tunnel.service.type=ClusterIP", "tunnel.service.externalTrafficPolicy=Local"),
			"externalTrafficPolicy Local needs type LoadBalancer or NodePort"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := renderChart(t, tc.files, tc.set...)
			if err == nil {
				t.Fatalf("rendered with %v; want an error mentioning %q", tc.set, tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not mention %q", err, tc.want)
			}
		})
	}
}

// targets.all on an emptyDir (images lost on restart, NOTES.txt says so),
// on an existing claim, and on a claim of the chart's with no storage class.
func TestAllInOnePersistence(t *testing.T) {
	t.Run("disabled", func(t *testing.T) {
		r := mustRender(t, allInOneFiles, "persistence.enabled=false", "dataDir.sizeLimit=50Gi")
		d := byTarget(t, r)["all"]
		checkDataDir(t, d, "emptyDir", "50Gi")
		if n := len(r.pvcs()); n != 0 {
			t.Errorf("%d PersistentVolumeClaims with persistence disabled", n)
		}
		if d.Spec.Strategy.Type == appsv1.RecreateDeploymentStrategyType {
			t.Errorf("strategy Recreate without a claim to protect")
		}
		if !strings.Contains(r.notes, "every pushed image and computed delta is lost when the pod restarts") {
			t.Errorf("NOTES.txt does not warn that the emptyDir loses images:\n%s", r.notes)
		}
	})
	t.Run("disabled, external registry and S3", func(t *testing.T) {
		r := mustRender(t, allInOneFiles, "persistence.enabled=false", "registry.url=http://registry:5000", "s3.endpoint=http://minio:9000")
		checkDataDir(t, byTarget(t, r)["all"], "emptyDir", "10Gi")
		if strings.Contains(r.notes, "WARNING: persistence.enabled is false") {
			t.Errorf("NOTES.txt warns of lost images kept elsewhere:\n%s", r.notes)
		}
	})
	t.Run("existing claim", func(t *testing.T) {
		r := mustRender(t, allInOneFiles, "persistence.existingClaim=flock-images")
		d := byTarget(t, r)["all"]
		checkDataDir(t, d, "pvc", "flock-images")
		if n := len(r.pvcs()); n != 0 {
			t.Errorf("%d PersistentVolumeClaims besides the existing one", n)
		}
		if d.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType {
			t.Errorf("strategy %q, want Recreate", d.Spec.Strategy.Type)
		}
	})
	t.Run("storage class", func(t *testing.T) {
		for class, want := range map[string]string{"-": "", "fast-ssd": "fast-ssd"} {
			r := mustRender(t, allInOneFiles, "persistence.storageClass="+class, "persistence.size=100Gi",
				"persistence.annotations.backup\\.velero\\.io/backup-volumes=data")
			pvcs := r.pvcs()
			if len(pvcs) != 1 {
				t.Fatalf("%d PersistentVolumeClaims, want 1", len(pvcs))
			}
			p := pvcs[0]
			if p.Spec.StorageClassName == nil || *p.Spec.StorageClassName != want {
				t.Errorf("storageClass %q: storageClassName %v, want %q", class, p.Spec.StorageClassName, want)
			}
			if got := p.Spec.Resources.Requests[corev1.ResourceStorage]; got.String() != "100Gi" {
				t.Errorf("size %s, want 100Gi", got.String())
			}
			if p.Annotations["backup.velero.io/backup-volumes"] != "data" {
				t.Errorf("annotations %v", p.Annotations)
			}
		}
	})
	t.Run("no claim without all", func(t *testing.T) {
		if n := len(mustRender(t, nil, "persistence.enabled=true").pvcs()); n != 0 {
			t.Errorf("%d PersistentVolumeClaims for split targets", n)
		}
	})
}

// A single api pod may run on the embedded registry and S3 (nothing else
// opens them): it gets a data volume, since the default FLOCK_DATA_DIR is
// relative to a read-only root.
func TestEmbeddedEnginesGetADataDir(t *testing.T) {
	r := mustRender(t, nil, append(only("api", "ingester", "scheduler"), "targets.api.replicas=1", "registry.url=", "s3.endpoint=")...)
	deps := byTarget(t, r)
	checkDataDir(t, deps["api"], "emptyDir", "10Gi")
	checkDataDir(t, deps["ingester"], "", "")
	checkDataDir(t, deps["scheduler"], "", "")
	for _, name := range []string{"FLOCK_REGISTRY_URL", "FLOCK_S3_ENDPOINT"} {
		if e, ok := env(deps["api"].Spec.Template.Spec.Containers[0], name); ok {
			t.Errorf("api: %s=%q although it is empty", name, e.Value)
		}
	}
	// registry-proxy alone is refused without registry.url (see
	// TestRefusedValues); with one, the api writes no files and the
	// registry-proxy keeps its blob cache on its data volume.
	r = mustRender(t, nil, "dataDir.path=/data")
	deps = byTarget(t, r)
	checkDataDir(t, deps["api"], "", "")
	checkDataDir(t, deps["registry-proxy"], "emptyDir", "10Gi")
	if e, _ := env(deps["delta"].Spec.Template.Spec.Containers[0], "FLOCK_DATA_DIR"); e.Value != "/data" {
		t.Errorf("delta FLOCK_DATA_DIR %q, want dataDir.path /data", e.Value)
	}
}

// deltaMaxRatio from a values file is a YAML number; it reaches flock-api
// as the same number.
func TestDeltaMaxRatio(t *testing.T) {
	for in, want := range map[string]string{"1": "1", "0.25": "0.25", "0.8": "0.8", `"0.6"`: "0.6"} {
		r := mustRender(t, []string{valuesFile(t, "deltaMaxRatio: "+in+"\n")})
		for target, d := range byTarget(t, r) {
			if e, _ := env(d.Spec.Template.Spec.Containers[0], "FLOCK_DELTA_MAX_RATIO"); e.Value != want {
				t.Errorf("deltaMaxRatio: %s: %s FLOCK_DELTA_MAX_RATIO %q, want %q", in, target, e.Value, want)
			}
		}
	}
	if _, err := renderChart(t, []string{valuesFile(t, "deltaMaxRatio: 0\n")}); err == nil || !strings.Contains(err.Error(), "deltaMaxRatio") {
		t.Errorf("deltaMaxRatio: 0 rendered (err %v); flock-api refuses it", err)
	}
}

// helm lint's rules (Chart.yaml, values, template conventions, deprecated
// APIs): warnings fail too.
func TestLint(t *testing.T) {
	kv, err := chartutil.ParseKubeVersion(kubeVersion)
	if err != nil {
		t.Fatal(err)
	}
	for _, files := range [][]string{nil, allInOneFiles} {
		vals, err := (&values.Options{ValueFiles: append([]string{requiredValues}, files...)}).MergeValues(getter.Providers{})
		if err != nil {
			t.Fatal(err)
		}
		l := lint.AllWithKubeVersion(chartDir, vals, namespace, kv)
		for _, m := range l.Messages {
			if m.Severity >= support.WarningSev {
				t.Errorf("helm lint %v: %v", files, m)
			} else {
				t.Logf("helm lint %v: %v", files, m)
			}
		}
	}
}

// The environment the chart gives each process is what flock-api reads: the
// binary resolves it (--print-config) and must say every FLOCK_* variable
// came from the environment, so a misspelt name or a value it refuses (a
// duration, an address) fails here and not in a cluster.
func TestFlockAPIAcceptsTheEnvironment(t *testing.T) {
	bin := flockAPI(t)
	// Settings of targets that have not landed yet would go here: flock-api
	// ignores them until then. Each leaves this list when the binary reads
	// it; none is waiting today.
	notYetRead := map[string]bool{}
	renders := map[string]*rendered{
		"default":    mustRender(t, nil),
		"all-in-one": mustRender(t, allInOneFiles),
		"external": mustRender(t, nil, "redis.existingSecret=r", "clickhouse.existingSecret=c", "loki.url=http://loki:3100/loki/api/v1/push",
			"registry.url=https://harbor", "registry.username=robot$flock", "registry.password.existingSecret=h", "registry.host=registry.example.com:5443",
			"s3.endpoint=https://s3", "s3.bucket=b", "s3.region=eu-west-1", "s3.accessKey=AKIA", "s3.secretKey.existingSecret=s", "deltaMaxRatio=0.35",
			"oidc.issuer=https://auth.example.com", "oidc.audience=a",
			"mqtt.url=mqtts://emqx:8883", "mqtt.password.existingSecret=m", "mqtt.hookToken.existingSecret=m", "publicURL=https://flock.example.com"),
		"ratio-from-file": mustRender(t, []string{valuesFile(t, "deltaMaxRatio: 1\n")}),
		"remote":          mustRender(t, nil, remoteSet("tunnel.privateKey.existingSecret=k", "tunnel.prefix=100.64.0.0/10", "proxy.tls.secretName=w")...),
		"remote-http":     mustRender(t, nil, remoteSet()...),
		"builders": mustRender(t, nil, "targets.builder.enabled=true", "registry.url=https://harbor", "registry.username=robot$flock", "registry.password.existingSecret=h",
			"s3.endpoint=https://s3"),
		"events":            mustRender(t, nil, eventsSet...),
		"events-all-in-one": mustRender(t, allInOneFiles, eventsSet...),
		"events-dev":        mustRender(t, []string{devValues(t)}, "events.encryptionKey.existingSecret="),
	}
	for name, r := range renders {
		for _, d := range r.deployments() {
			c := d.Spec.Template.Spec.Containers[0]
			t.Run(name+"/"+d.Name, func(t *testing.T) { checkPrintConfig(t, bin, c, notYetRead) })
		}
		for _, j := range r.jobs() {
			c := j.Spec.Template.Spec.Containers[0]
			t.Run(name+"/"+j.Name, func(t *testing.T) { checkPrintConfig(t, bin, c, notYetRead) })
		}
	}
}

func checkPrintConfig(t *testing.T, bin string, c corev1.Container, notYetRead map[string]bool) {
	var environ []string
	set := map[string]bool{}
	for _, e := range c.Env {
		v := e.Value
		if e.ValueFrom != nil {
			v = placeholder(e.Name)
		}
		environ = append(environ, e.Name+"="+v)
		if strings.HasPrefix(e.Name, "FLOCK_") && !notYetRead[e.Name] {
			set[e.Name] = true
		}
	}
	cmd := exec.Command(bin, "--print-config")
	cmd.Env = environ
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("flock-api --print-config with %v: %v\n%s", environ, err, out)
	}
	sources := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) >= 3 && strings.HasPrefix(f[1], "FLOCK_") {
			sources[f[1]] = f[2]
		}
	}
	if len(sources) == 0 {
		t.Fatalf("--print-config printed no settings:\n%s", out)
	}
	for name := range set {
		if sources[name] != "env" {
			t.Errorf("%s: flock-api reports source %q, want env (is it a flock-api setting?)", name, sources[name])
		}
	}
}

// placeholder stands in for a value that would come from a Secret, in the
// form flock-api checks.
func placeholder(name string) string {
	switch name {
	case "FLOCK_DATABASE_URL":
		return "postgres://flock:secret@postgres:5432/flock?sslmode=require"
	case "FLOCK_REDIS_URL":
		return "redis://:secret@redis:6379/0"
	case "FLOCK_CLICKHOUSE_URL":
		return "clickhouse://flock:secret@clickhouse:9000/flock"
	}
	return "secret"
}

var (
	buildOnce sync.Once
	builtBin  string
	buildErr  error
	buildOut  []byte
)

// flockAPI builds the main module's binary once for the package.
func flockAPI(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "flock-charttest-")
		if err != nil {
			buildErr = err
			return
		}
		builtBin = filepath.Join(dir, "flock-api")
		cmd := exec.Command("go", "build", "-o", builtBin, ".")
		cmd.Dir = "../.."
		buildOut, buildErr = cmd.CombinedOutput()
	})
	if buildErr != nil {
		t.Fatalf("build flock-api: %v\n%s", buildErr, buildOut)
	}
	return builtBin
}

func TestMain(m *testing.M) {
	code := m.Run()
	if builtBin != "" {
		os.RemoveAll(filepath.Dir(builtBin))
	}
	os.Exit(code)
}

// only is the --set list that enables exactly these targets of the
// default values.
func only(targets ...string) []string {
	var set []string
	for _, tg := range defaultTargets {
		set = append(set, fmt.Sprintf("targets.%s.enabled=%t", tg, slices.Contains(targets, tg)))
	}
	return set
}

// valuesFile writes a values file for one test.
func valuesFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "values.yaml")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// checkDataDir checks a Deployment's FLOCK_DATA_DIR: kind "" means none
// (no variable, no data volume); "emptyDir" one of sizeLimit detail; "pvc"
// one on the claim named detail. Either way the variable names the mount.
func checkDataDir(t *testing.T, d *appsv1.Deployment, kind, detail string) {
	t.Helper()
	spec := d.Spec.Template.Spec
	c := spec.Containers[0]
	e, hasEnv := env(c, "FLOCK_DATA_DIR")
	var vol *corev1.Volume
	for i, v := range spec.Volumes {
		if v.Name == "data" {
			vol = &spec.Volumes[i]
		}
	}
	var mount *corev1.VolumeMount
	for i, m := range c.VolumeMounts {
		if m.Name == "data" {
			mount = &c.VolumeMounts[i]
		}
	}
	if kind == "" {
		if hasEnv || vol != nil || mount != nil {
			t.Errorf("%s: FLOCK_DATA_DIR %+v, volume %+v, mount %+v; want none", d.Name, e, vol, mount)
		}
		return
	}
	if !hasEnv || vol == nil || mount == nil {
		t.Fatalf("%s: FLOCK_DATA_DIR %+v, volume %+v, mount %+v; want all three", d.Name, e, vol, mount)
	}
	if mount.MountPath != e.Value || mount.ReadOnly {
		t.Errorf("%s: FLOCK_DATA_DIR %q but the data volume is mounted at %q (read-only %v)", d.Name, e.Value, mount.MountPath, mount.ReadOnly)
	}
	if !strings.HasPrefix(e.Value, "/") {
		t.Errorf("%s: FLOCK_DATA_DIR %q is relative: the working directory is the read-only root", d.Name, e.Value)
	}
	switch kind {
	case "emptyDir":
		if vol.EmptyDir == nil || vol.EmptyDir.SizeLimit == nil || vol.EmptyDir.SizeLimit.String() != detail {
			t.Errorf("%s: data volume %+v, want an emptyDir of %s", d.Name, vol.VolumeSource, detail)
		}
	case "pvc":
		if vol.PersistentVolumeClaim == nil || vol.PersistentVolumeClaim.ClaimName != detail {
			t.Errorf("%s: data volume %+v, want claim %s", d.Name, vol.VolumeSource, detail)
		}
	}
}

// checkWorkload holds for every target's Deployment.
func checkWorkload(t *testing.T, r *rendered, target string, d *appsv1.Deployment) {
	t.Helper()
	if d.Name != "flock-"+target {
		t.Errorf("Deployment %s for target %s, want flock-%s", d.Name, target, target)
	}
	spec := d.Spec.Template.Spec
	if len(spec.Containers) != 1 {
		t.Fatalf("%s: %d containers, want 1", d.Name, len(spec.Containers))
	}
	c := spec.Containers[0]
	if !strings.HasPrefix(c.Image, "registry.example.com/flock/flock-api:") && !(strings.HasPrefix(target, "builder-") && strings.HasPrefix(c.Image, "registry.example.com/flock/flock-api-builder:")) {
		t.Errorf("%s: image %q", d.Name, c.Image)
	}
	if len(c.Command) != 0 || len(c.Args) != 0 {
		t.Errorf("%s: command %q args %q: the image's entrypoint runs FLOCK_TARGET", d.Name, c.Command, c.Args)
	}
	var http *corev1.ContainerPort
	for i, p := range c.Ports {
		if p.Name == "http" {
			http = &c.Ports[i]
		}
	}
	if http == nil {
		t.Fatalf("%s: no container port named http", d.Name)
	}
	if e, _ := env(c, "FLOCK_HTTP_ADDR"); e.Value != fmt.Sprintf(":%d", http.ContainerPort) {
		t.Errorf("%s: FLOCK_HTTP_ADDR %q but the http port is %d", d.Name, e.Value, http.ContainerPort)
	}
	for _, p := range []struct {
		name  string
		probe *corev1.Probe
		path  string
	}{{"liveness", c.LivenessProbe, "/healthz"}, {"readiness", c.ReadinessProbe, "/readyz"}, {"startup", c.StartupProbe, "/healthz"}} {
		if p.probe == nil || p.probe.HTTPGet == nil {
			t.Errorf("%s: no HTTP %s probe", d.Name, p.name)
			continue
		}
		if g := p.probe.HTTPGet; g.Path != p.path || g.Port.String() != "http" {
			t.Errorf("%s: %s probe GET %s on port %s, want %s on http", d.Name, p.name, g.Path, g.Port.String(), p.path)
		}
	}
	checkNonRoot(t, d.Name, spec, c)
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
		t.Errorf("%s: resources %+v, want cpu and memory requests and a memory limit", d.Name, c.Resources)
	}
	checkSecretEnv(t, d.Name, c, "FLOCK_DATABASE_URL", "flock-database", "database-url")
	if g := spec.TerminationGracePeriodSeconds; g == nil || *g < 30 {
		t.Errorf("%s: terminationGracePeriodSeconds %v, want it to cover shutdownDelay + shutdownGrace (30s)", d.Name, g)
	}
	// FLOCK_TARGET is set once, to this target.
	n := 0
	for _, e := range c.Env {
		if e.Name == "FLOCK_TARGET" {
			n++
			// builder-<arch> is the builder for one architecture.
			if want, _, _ := strings.Cut(target, "-"); e.Value != target && !(want == "builder" && e.Value == want) {
				t.Errorf("%s: FLOCK_TARGET=%q, want %q", d.Name, e.Value, target)
			}
		}
	}
	if n != 1 {
		t.Errorf("%s: FLOCK_TARGET set %d times", d.Name, n)
	}
	if r.hookOf(d) != nil {
		t.Errorf("%s is a hook", d.Name)
	}
}

func checkNonRoot(t *testing.T, name string, spec corev1.PodSpec, c corev1.Container) {
	t.Helper()
	psc, sc := spec.SecurityContext, c.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser == 0 {
		t.Errorf("%s: pod securityContext %+v, want runAsNonRoot and a non-zero runAsUser", name, psc)
	}
	if psc != nil && (psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault) {
		t.Errorf("%s: seccompProfile %+v, want RuntimeDefault", name, psc.SeccompProfile)
	}
	if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
		sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
		sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") {
		t.Errorf("%s: container securityContext %+v, want readOnlyRootFilesystem, no privilege escalation, all capabilities dropped", name, sc)
	}
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
		t.Errorf("%s: the service account token is mounted", name)
	}
}

func checkSecretEnv(t *testing.T, where string, c corev1.Container, name, secret, key string) {
	t.Helper()
	e, ok := env(c, name)
	switch {
	case !ok:
		t.Errorf("%s: no %s", where, name)
	case e.Value != "" || e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil:
		t.Errorf("%s: %s is not taken from a Secret: %+v", where, name, e)
	case e.ValueFrom.SecretKeyRef.Name != secret || e.ValueFrom.SecretKeyRef.Key != key:
		t.Errorf("%s: %s from Secret %s key %s, want %s key %s", where, name, e.ValueFrom.SecretKeyRef.Name, e.ValueFrom.SecretKeyRef.Key, secret, key)
	}
}

func checkPDBs(t *testing.T, r *rendered, deps map[string]*appsv1.Deployment) {
	t.Helper()
	covered := map[string]int{}
	for _, p := range r.pdbs() {
		for target, d := range deps {
			if matches(p.Spec.Selector.MatchLabels, d.Spec.Template.Labels) {
				covered[target]++
			}
		}
		if p.Spec.MaxUnavailable == nil || p.Spec.MaxUnavailable.IntValue() != 1 {
			t.Errorf("PDB %s: maxUnavailable %v, want 1", p.Name, p.Spec.MaxUnavailable)
		}
	}
	for target := range deps {
		if covered[target] != 1 {
			t.Errorf("target %s is covered by %d PodDisruptionBudgets, want 1", target, covered[target])
		}
	}
	if len(r.pdbs()) != len(deps) {
		t.Errorf("%d PodDisruptionBudgets for %d Deployments", len(r.pdbs()), len(deps))
	}
}

func checkMigrateJob(t *testing.T, r *rendered) {
	t.Helper()
	jobs := r.jobs()
	if len(jobs) != 1 {
		t.Fatalf("%d Jobs, want the migrate Job", len(jobs))
	}
	j := jobs[0]
	h := r.hookOf(j)
	if h == nil {
		t.Fatalf("Job %s is not a Helm hook", j.Name)
	}
	if !slices.Contains(h.Events, release.HookPreInstall) || !slices.Contains(h.Events, release.HookPreUpgrade) || len(h.Events) != 2 {
		t.Errorf("Job %s runs on %v, want pre-install and pre-upgrade", j.Name, h.Events)
	}
	c := j.Spec.Template.Spec.Containers
	if len(c) != 1 || !slices.Equal(c[0].Args, []string{"migrate", "up"}) || len(c[0].Command) != 0 {
		t.Fatalf("Job %s runs %+v, want the image's flock-api with args migrate up", j.Name, c)
	}
	checkSecretEnv(t, j.Name, c[0], "FLOCK_DATABASE_URL", "flock-database", "database-url")
	checkNonRoot(t, j.Name, j.Spec.Template.Spec, c[0])
	if j.Spec.BackoffLimit == nil || j.Spec.ActiveDeadlineSeconds == nil {
		t.Errorf("Job %s: backoffLimit %v activeDeadlineSeconds %v: want both bounded", j.Name, j.Spec.BackoffLimit, j.Spec.ActiveDeadlineSeconds)
	}
}

// byTarget maps FLOCK_TARGET to its Deployment, failing on a Deployment
// without it or two with the same one.
func byTarget(t *testing.T, r *rendered) map[string]*appsv1.Deployment {
	t.Helper()
	out := map[string]*appsv1.Deployment{}
	for _, d := range r.deployments() {
		if len(d.Spec.Template.Spec.Containers) == 0 {
			t.Fatalf("%s has no container", d.Name)
		}
		e, ok := env(d.Spec.Template.Spec.Containers[0], "FLOCK_TARGET")
		if !ok {
			t.Fatalf("Deployment %s sets no FLOCK_TARGET", d.Name)
		}
		key := e.Value
		if a, ok := env(d.Spec.Template.Spec.Containers[0], "FLOCK_BUILDER_ARCHITECTURES"); ok {
			key += "-" + a.Value // one builder Deployment per architecture
		}
		if out[key] != nil {
			t.Fatalf("Deployments %s and %s both run %s", out[key].Name, d.Name, key)
		}
		out[key] = d
	}
	return out
}

func servicesByName(r *rendered) map[string]*corev1.Service {
	out := map[string]*corev1.Service{}
	for _, s := range r.services() {
		out[s.Name] = s
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func matches(selector, lbls map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if lbls[k] != v {
			return false
		}
	}
	return true
}

// One builder Deployment per architecture, on nodes of it, each told to
// build its own, with the builder's own image.
func TestBuilderPerArchitecture(t *testing.T) {
	r := mustRender(t, nil, "targets.builder.enabled=true", "targets.builder.image=registry.example.com/flock/flock-api-builder:1",
		"targets.builder.architectures={arm64,armv7}", "targets.builder.nodeSelector.pool=builders",
		"registry.url=https://harbor", "registry.username=robot$flock", "registry.password.existingSecret=h", "s3.endpoint=https://s3")
	deps := byTarget(t, r)
	for arch, kube := range map[string]string{"arm64": "arm64", "armv7": "arm"} {
		d, ok := deps["builder-"+arch]
		if !ok {
			t.Fatalf("no builder Deployment for %s; Deployments: %v", arch, sortedKeys(deps))
		}
		if d.Name != "flock-builder-"+arch {
			t.Errorf("%s: name %s", arch, d.Name)
		}
		ns := d.Spec.Template.Spec.NodeSelector
		if ns["kubernetes.io/arch"] != kube || ns["pool"] != "builders" {
			t.Errorf("%s: nodeSelector %v, want kubernetes.io/arch=%s and the target's own", arch, ns, kube)
		}
		c := d.Spec.Template.Spec.Containers[0]
		if c.Image != "registry.example.com/flock/flock-api-builder:1" {
			t.Errorf("%s: image %s, want the builder's", arch, c.Image)
		}
		if e, _ := env(c, "FLOCK_TARGET"); e.Value != "builder" {
			t.Errorf("%s: FLOCK_TARGET %q", arch, e.Value)
		}
		checkWorkload(t, r, "builder-"+arch, d)
	}
	if _, ok := deps["builder-amd64"]; ok {
		t.Error("a builder for amd64, which the values do not list")
	}
	checkPDBs(t, r, deps)
}
