package charttest

import (
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// remoteSet enables the tunnel and proxy targets with what they need,
// then more (or overriding) --set values.
func remoteSet(more ...string) []string {
	return append([]string{
		"targets.tunnel.enabled=true", "targets.proxy.enabled=true",
		"tunnel.endpoint=tunnel.example.com:51820", "proxy.domain=devices.example.com",
		"internalToken.existingSecret=flock-internal",
	}, more...)
}

// The tunnel and proxy targets: one Deployment each on the same image, the
// tunnel's UDP load balancer with ClientIP affinity, the proxy's public
// Service on 80 (or 443 with its certificate mounted), each replica's
// address through the downward API, and the settings the api needs to
// answer devices.
func TestRemoteAccess(t *testing.T) {
	r := mustRender(t, nil, remoteSet()...)
	deps := byTarget(t, r)
	want := append(slices.Clone(defaultTargets), "proxy", "tunnel")
	slices.Sort(want)
	if got := sortedKeys(deps); !slices.Equal(got, want) {
		t.Fatalf("Deployments for %v, want %v", got, want)
	}
	for target, d := range deps {
		checkWorkload(t, r, target, d)
		c := d.Spec.Template.Spec.Containers[0]
		// The api answers device registrations with the endpoint and
		// shows public URLs: every target gets both.
		for name, v := range map[string]string{"FLOCK_TUNNEL_ENDPOINT": "tunnel.example.com:51820", "FLOCK_DEVICE_URL_DOMAIN": "devices.example.com"} {
			if e, ok := env(c, name); !ok || e.Value != v {
				t.Errorf("%s: %s = %+v, want %q", target, name, e, v)
			}
		}
		for _, name := range []string{"FLOCK_PROXY_TLS_CERT", "FLOCK_PROXY_TLS_KEY", "FLOCK_TUNNEL_PREFIX"} {
			if e, ok := env(c, name); ok {
				t.Errorf("%s: %s=%+v although its value is empty", target, name, e)
			}
		}
		checkRemoteSecrets(t, target, c, "flock-internal", "")
		if target == "tunnel" || target == "proxy" {
			checkDataDir(t, d, "", "") // they write no files
		}
	}
	checkPDBs(t, r, deps)

	// tunnel: WireGuard on UDP, the replica's name and internal address.
	tc := deps["tunnel"].Spec.Template.Spec.Containers[0]
	if n := *deps["tunnel"].Spec.Replicas; n != 2 {
		t.Errorf("tunnel replicas %d, want 2", n)
	}
	if e, _ := env(tc, "FLOCK_TUNNEL_LISTEN"); e.Value != ":51820" {
		t.Errorf("tunnel FLOCK_TUNNEL_LISTEN %q, want :51820", e.Value)
	}
	if p, ok := containerPort(deps["tunnel"], intstr.FromString("wireguard")); !ok || p.ContainerPort != 51820 || p.Protocol != corev1.ProtocolUDP {
		t.Errorf("tunnel wireguard port %+v, want UDP 51820", p)
	}
	checkFieldEnv(t, tc, "FLOCK_TUNNEL_REPLICA", "metadata.name")
	// The pod IP as a host, not spliced into a URL: flock-api brackets an
	// IPv6 address, which $(POD_IP) in a URL value could not.
	checkFieldEnv(t, tc, "FLOCK_INTERNAL_HOST", "status.podIP")
	if e, ok := env(tc, "FLOCK_INTERNAL_URL"); ok {
		t.Errorf("tunnel FLOCK_INTERNAL_URL %+v set; the replica makes it from FLOCK_INTERNAL_HOST", e)
	}
	for _, target := range []string{"api", "proxy", "ingester"} {
		c := deps[target].Spec.Template.Spec.Containers[0]
		for _, name := range []string{"FLOCK_TUNNEL_LISTEN", "FLOCK_TUNNEL_REPLICA", "FLOCK_INTERNAL_HOST", "FLOCK_INTERNAL_URL"} {
			if _, ok := env(c, name); ok {
				t.Errorf("%s: %s set on a target that runs no tunnel replica", target, name)
			}
		}
	}

	// proxy: its own port, plain HTTP on 80 without a certificate.
	pc := deps["proxy"].Spec.Template.Spec.Containers[0]
	if e, _ := env(pc, "FLOCK_PROXY_ADDR"); e.Value != ":8081" {
		t.Errorf("proxy FLOCK_PROXY_ADDR %q, want :8081", e.Value)
	}
	for _, target := range []string{"api", "tunnel"} {
		if _, ok := env(deps[target].Spec.Template.Spec.Containers[0], "FLOCK_PROXY_ADDR"); ok {
			t.Errorf("%s: FLOCK_PROXY_ADDR set", target)
		}
	}
	if vols := deps["proxy"].Spec.Template.Spec.Volumes; len(vols) != 1 {
		t.Errorf("proxy volumes %+v, want only tmp without proxy.tls.secretName", vols)
	}

	svcs := servicesByName(r)
	wg := svcs["flock-tunnel-wireguard"]
	checkServicePort(t, wg, corev1.ServiceTypeLoadBalancer, corev1.ProtocolUDP, 51820)
	if wg != nil && (wg.Spec.SessionAffinity != corev1.ServiceAffinityClientIP || wg.Spec.ExternalTrafficPolicy != "") {
		t.Errorf("flock-tunnel-wireguard: sessionAffinity %q externalTrafficPolicy %q, want ClientIP and the default", wg.Spec.SessionAffinity, wg.Spec.ExternalTrafficPolicy)
	}
	checkServicePort(t, svcs["flock-proxy-public"], corev1.ServiceTypeLoadBalancer, corev1.ProtocolTCP, 80)
	for _, name := range []string{"flock-tunnel", "flock-proxy"} {
		if s := svcs[name]; s == nil || s.Labels["flock.io/surface"] != "http" {
			t.Errorf("no HTTP Service %s (probes, /metrics)", name)
		}
	}
	for _, s := range []string{"Service flock-tunnel-wireguard", "tunnel.example.com:51820", "*.devices.example.com", "Service flock-proxy-public", "http://<device uuid>.devices.example.com"} {
		if !strings.Contains(r.notes, s) {
			t.Errorf("NOTES.txt does not mention %q:\n%s", s, r.notes)
		}
	}

	t.Run("tls, key, prefix, local traffic", func(t *testing.T) {
		r := mustRender(t, nil, remoteSet("proxy.tls.secretName=devices-wildcard", "tunnel.privateKey.existingSecret=flock-tunnel",
			"tunnel.prefix=100.64.0.0/10", "tunnel.service.externalTrafficPolicy=Local", "tunnel.service.type=NodePort",
			"proxy.service.type=ClusterIP", "tunnel.port=51900", "tunnel.service.port=443")...)
		deps := byTarget(t, r)
		for target, d := range deps {
			c := d.Spec.Template.Spec.Containers[0]
			for name, v := range map[string]string{"FLOCK_PROXY_TLS_CERT": "/etc/flock/proxy-tls/tls.crt", "FLOCK_PROXY_TLS_KEY": "/etc/flock/proxy-tls/tls.key",
				"FLOCK_TUNNEL_PREFIX": "100.64.0.0/10"} {
				if e, ok := env(c, name); !ok || e.Value != v {
					t.Errorf("%s: %s = %+v, want %q", target, name, e, v)
				}
			}
			checkRemoteSecrets(t, target, c, "flock-internal", "flock-tunnel")
			// Only the proxy holds the certificate's key.
			var mount *corev1.VolumeMount
			for i, m := range c.VolumeMounts {
				if m.Name == "proxy-tls" {
					mount = &c.VolumeMounts[i]
				}
			}
			if target != "proxy" {
				if mount != nil {
					t.Errorf("%s mounts the proxy's certificate", target)
				}
				continue
			}
			if mount == nil || mount.MountPath != "/etc/flock/proxy-tls" || !mount.ReadOnly || mount.SubPath != "" {
				t.Errorf("proxy: certificate mount %+v, want /etc/flock/proxy-tls read-only, no subPath (renewals must reach the pod)", mount)
			}
			var secret string
			for _, v := range d.Spec.Template.Spec.Volumes {
				if v.Name == "proxy-tls" && v.Secret != nil {
					secret = v.Secret.SecretName
				}
			}
			if secret != "devices-wildcard" {
				t.Errorf("proxy: certificate volume from Secret %q, want devices-wildcard", secret)
			}
		}
		tc := deps["tunnel"].Spec.Template.Spec.Containers[0]
		if e, _ := env(tc, "FLOCK_TUNNEL_LISTEN"); e.Value != ":51900" {
			t.Errorf("tunnel FLOCK_TUNNEL_LISTEN %q, want :51900", e.Value)
		}
		svcs := servicesByName(r)
		wg := svcs["flock-tunnel-wireguard"]
		checkServicePort(t, wg, corev1.ServiceTypeNodePort, corev1.ProtocolUDP, 443)
		if wg != nil && wg.Spec.ExternalTrafficPolicy != corev1.ServiceExternalTrafficPolicyLocal {
			t.Errorf("flock-tunnel-wireguard externalTrafficPolicy %q, want Local", wg.Spec.ExternalTrafficPolicy)
		}
		checkServicePort(t, svcs["flock-proxy-public"], corev1.ServiceTypeClusterIP, corev1.ProtocolTCP, 443)
		if !strings.Contains(r.notes, "https://<device uuid>.devices.example.com") || !strings.Contains(r.notes, "Secret devices-wildcard") {
			t.Errorf("NOTES.txt about TLS:\n%s", r.notes)
		}
	})
}

// checkRemoteSecrets: the internal token reaches the api, tunnel, proxy
// (and all) pods only, the WireGuard key the api and tunnel (and all) pods
// only; key "" means none is configured.
func checkRemoteSecrets(t *testing.T, target string, c corev1.Container, token, key string) {
	t.Helper()
	if slices.Contains([]string{"api", "tunnel", "proxy", "all"}, target) {
		checkSecretEnv(t, target, c, "FLOCK_INTERNAL_TOKEN", token, "internal-token")
	} else if _, ok := env(c, "FLOCK_INTERNAL_TOKEN"); ok {
		t.Errorf("%s: FLOCK_INTERNAL_TOKEN given to a target that neither dials nor serves the internal plane", target)
	}
	if key != "" && slices.Contains([]string{"api", "tunnel", "all"}, target) {
		checkSecretEnv(t, target, c, "FLOCK_TUNNEL_PRIVATE_KEY", key, "tunnel-private-key")
	} else if _, ok := env(c, "FLOCK_TUNNEL_PRIVATE_KEY"); ok {
		t.Errorf("%s: FLOCK_TUNNEL_PRIVATE_KEY set", target)
	}
}

func checkFieldEnv(t *testing.T, c corev1.Container, name, fieldPath string) {
	t.Helper()
	e, ok := env(c, name)
	if !ok || e.ValueFrom == nil || e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != fieldPath {
		t.Errorf("%s = %+v, want it from the downward API's %s", name, e, fieldPath)
	}
}

func envIndex(c corev1.Container, name string) int {
	return slices.IndexFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == name })
}

func checkServicePort(t *testing.T, s *corev1.Service, typ corev1.ServiceType, protocol corev1.Protocol, port int32) {
	t.Helper()
	if s == nil {
		t.Errorf("no Service for %s %d", protocol, port)
		return
	}
	if p := s.Spec.Ports; s.Spec.Type != typ || len(p) != 1 || proto(p[0].Protocol) != protocol || p[0].Port != port {
		t.Errorf("%s: %s %+v, want a %s on %s %d", s.Name, s.Spec.Type, p, typ, protocol, port)
	}
}
