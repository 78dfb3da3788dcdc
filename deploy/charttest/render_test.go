// Package charttest renders deploy/helm/flock as `helm install` would (Helm's
// own Go library, client-only: the values schema, hooks, NOTES.txt) and
// validates every manifest without a cluster or the network: each document
// is decoded strictly into its typed Kubernetes API object (unknown or
// duplicate fields, wrong types and unregistered kinds fail), then checked
// for what the API server's validation would refuse and the typed decode
// cannot see (names, labels, selectors that match, ports that exist). See
// deploy/README.md for why this stands in for kubeconform.
package charttest

import (
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/cli/values"
	"helm.sh/helm/v3/pkg/getter"
	"helm.sh/helm/v3/pkg/release"
	"helm.sh/helm/v3/pkg/releaseutil"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
)

const (
	chartDir = "../helm/flock"
	allInOne = chartDir + "/values-all-in-one.yaml"
	// The value an all-in-one install must add: "all" runs the proxy.
	allInOneDomain = "testdata/all-in-one-domain.yaml"
	// The values every install must add, whatever else it sets: the Secret
	// of the events encryption key, which the chart has no default for and
	// which the api and events-gateway (enabled by default) and all need.
	// renderChart reads it before any other file; a test clears it with
	// --set events.encryptionKey.existingSecret=.
	requiredValues = "testdata/required.yaml"
	releaseName    = "flock"
	namespace      = "flock-system"
	// The Kubernetes version the typed objects come from (k8s.io/api
	// v0.37): the render claims that version, so Chart.yaml's kubeVersion
	// range is checked too.
	kubeVersion = "v1.37.0"
)

// values-all-in-one.yaml as installed (with proxy.domain).
var allInOneFiles = []string{allInOne, allInOneDomain}

// The kinds the chart may produce. Anything else fails the decode: a new
// kind is added here together with its typed validation.
var scheme = func() *runtime.Scheme {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{
		corev1.AddToScheme, appsv1.AddToScheme, batchv1.AddToScheme, policyv1.AddToScheme, monitoringv1.AddToScheme,
	} {
		if err := add(s); err != nil {
			panic(err)
		}
	}
	return s
}()

// Strict: unknown and duplicate fields are errors, not silently dropped.
var decoder = serializer.NewCodecFactory(scheme, serializer.EnableStrict).UniversalDeserializer()

// object is one rendered manifest, decoded.
type object struct {
	source string // templates/... file
	hook   *release.Hook
	gvk    schema.GroupVersionKind
	obj    runtime.Object
}

func (o object) String() string {
	m, _ := o.obj.(interface{ GetName() string })
	name := "?"
	if m != nil {
		name = m.GetName()
	}
	return fmt.Sprintf("%s %s (%s)", o.gvk.Kind, name, o.source)
}

type rendered struct {
	objects []object
	notes   string
	// render is the time Helm took; validate, the decode and the checks.
	render, validate time.Duration
}

// renderChart renders the chart with value files and --set style values,
// as `helm install` (dry run, client only) does.
func renderChart(t testing.TB, files []string, set ...string) (*rendered, error) {
	t.Helper()
	start := time.Now()
	chrt, err := loader.Load(chartDir)
	if err != nil {
		t.Fatalf("load chart: %v", err)
	}
	files = append([]string{requiredValues}, files...)
	vals, err := (&values.Options{ValueFiles: files, Values: set}).MergeValues(getter.Providers{})
	if err != nil {
		t.Fatalf("values %v %v: %v", files, set, err)
	}
	kv, err := chartutil.ParseKubeVersion(kubeVersion)
	if err != nil {
		t.Fatal(err)
	}
	install := action.NewInstall(&action.Configuration{Log: func(string, ...any) {}})
	install.DryRun, install.DryRunOption, install.ClientOnly = true, "client", true
	install.Replace = true
	install.ReleaseName, install.Namespace = releaseName, namespace
	install.KubeVersion = kv
	rel, err := install.Run(chrt, vals)
	if err != nil {
		return nil, err
	}
	r := &rendered{notes: rel.Info.Notes, render: time.Since(start)}

	start = time.Now()
	docs := releaseutil.SplitManifests(rel.Manifest)
	keys := make([]string, 0, len(docs))
	for k := range docs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		r.objects = append(r.objects, decode(t, docs[k], nil))
	}
	for _, h := range rel.Hooks {
		r.objects = append(r.objects, decode(t, h.Manifest, h))
	}
	if len(r.objects) == 0 {
		t.Fatal("the chart rendered nothing")
	}
	for _, err := range validate(r.objects) {
		t.Errorf("invalid manifest: %v", err)
	}
	r.validate = time.Since(start)
	return r, nil
}

func decode(t testing.TB, doc string, hook *release.Hook) object {
	t.Helper()
	source := "?"
	for _, line := range strings.Split(doc, "\n") {
		if s, ok := strings.CutPrefix(line, "# Source: "); ok {
			source = s
			break
		}
	}
	obj, gvk, err := decoder.Decode([]byte(doc), nil, nil)
	if err != nil {
		// The whole document, so a failure in CI shows what was rendered.
		t.Fatalf("%s does not decode strictly into a Kubernetes object: %v\n%s", source, err, doc)
	}
	return object{source: source, hook: hook, gvk: *gvk, obj: obj}
}

// Typed views of a render.

func (r *rendered) deployments() []*appsv1.Deployment { return ofType[*appsv1.Deployment](r) }
func (r *rendered) services() []*corev1.Service       { return ofType[*corev1.Service](r) }
func (r *rendered) pdbs() []*policyv1.PodDisruptionBudget {
	return ofType[*policyv1.PodDisruptionBudget](r)
}
func (r *rendered) jobs() []*batchv1.Job { return ofType[*batchv1.Job](r) }
func (r *rendered) pvcs() []*corev1.PersistentVolumeClaim {
	return ofType[*corev1.PersistentVolumeClaim](r)
}
func (r *rendered) serviceMonitors() []*monitoringv1.ServiceMonitor {
	return ofType[*monitoringv1.ServiceMonitor](r)
}

func ofType[T runtime.Object](r *rendered) []T {
	var out []T
	for _, o := range r.objects {
		if v, ok := o.obj.(T); ok {
			out = append(out, v)
		}
	}
	return out
}

func (r *rendered) hookOf(obj runtime.Object) *release.Hook {
	for _, o := range r.objects {
		if o.obj == obj {
			return o.hook
		}
	}
	return nil
}

func env(c corev1.Container, name string) (corev1.EnvVar, bool) {
	for _, e := range c.Env {
		if e.Name == name {
			return e, true
		}
	}
	return corev1.EnvVar{}, false
}

func kinds(r *rendered) string {
	var s []string
	for _, o := range r.objects {
		s = append(s, o.String())
	}
	return strings.Join(s, "\n  ")
}
