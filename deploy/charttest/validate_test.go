package charttest

import (
	"fmt"
	"strings"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apivalidation "k8s.io/apimachinery/pkg/api/validation"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	metav1validation "k8s.io/apimachinery/pkg/apis/meta/v1/validation"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
	psapi "k8s.io/pod-security-admission/api"
	"k8s.io/pod-security-admission/policy"
)

// The Pod Security Standards' checks as the API server's admission plugin
// runs them: every pod the chart makes must pass the restricted level (non
// root, no privilege escalation, capabilities dropped, seccomp), so the
// chart installs into a namespace labelled
// pod-security.kubernetes.io/enforce=restricted.
var podSecurity = func() policy.Evaluator {
	e, err := policy.NewEvaluator(policy.DefaultChecks(), nil)
	if err != nil {
		panic(err)
	}
	return e
}()

func checkRestricted(meta *metav1.ObjectMeta, spec *corev1.PodSpec) error {
	lv := psapi.LevelVersion{Level: psapi.LevelRestricted, Version: psapi.LatestVersion()}
	res := policy.AggregateCheckResults(podSecurity.EvaluatePod(lv, meta, spec))
	if !res.Allowed {
		return fmt.Errorf("violates the restricted Pod Security Standard: %s", res.ForbiddenDetail())
	}
	return nil
}

// validate checks what the API server (or the operator, for the
// ServiceMonitor) would refuse but a typed decode accepts, object by object
// and across objects: a Service whose selector matches no pod, or a probe
// on a port that does not exist, are valid YAML of the right types and
// still a broken chart.
func validate(objs []object) []error {
	var errs []error
	add := func(o object, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", o, fmt.Sprintf(format, args...)))
	}
	seen := map[string]bool{}
	var deps []*appsv1.Deployment
	var svcs []*corev1.Service
	for _, o := range objs {
		if o.gvk.Kind == "" || o.gvk.Version == "" {
			add(o, "no apiVersion/kind")
		}
		meta, ok := o.obj.(metav1.Object)
		if !ok {
			add(o, "has no object metadata")
			continue
		}
		key := o.gvk.Kind + "/" + meta.GetName()
		if seen[key] {
			add(o, "a second %s with the same name", o.gvk.Kind)
		}
		seen[key] = true
		if meta.GetNamespace() != namespace {
			add(o, "namespace %q, want the release's %q", meta.GetNamespace(), namespace)
		}
		nameFn := apivalidation.NameIsDNSSubdomain
		if _, isSvc := o.obj.(*corev1.Service); isSvc {
			nameFn = apivalidation.NameIsDNS1035Label
		}
		om := o.obj.(metav1.ObjectMetaAccessor).GetObjectMeta().(*metav1.ObjectMeta)
		for _, e := range apivalidation.ValidateObjectMeta(om, true, nameFn, field.NewPath("metadata")) {
			add(o, "%v", e)
		}
		for _, e := range metav1validation.ValidateLabels(meta.GetLabels(), field.NewPath("metadata", "labels")) {
			add(o, "%v", e)
		}
		switch v := o.obj.(type) {
		case *appsv1.Deployment:
			deps = append(deps, v)
			if v.Spec.Replicas == nil {
				add(o, "no replicas")
			}
			for _, e := range checkSelector(v.Spec.Selector, v.Spec.Template.Labels) {
				add(o, "%v", e)
			}
			for _, e := range checkPod(&v.Spec.Template.Spec, field.NewPath("spec", "template", "spec")) {
				add(o, "%v", e)
			}
			if err := checkRestricted(&v.Spec.Template.ObjectMeta, &v.Spec.Template.Spec); err != nil {
				add(o, "%v", err)
			}
		case *batchv1.Job:
			if p := v.Spec.Template.Spec.RestartPolicy; p != corev1.RestartPolicyNever && p != corev1.RestartPolicyOnFailure {
				add(o, "restartPolicy %q: a Job's pods take Never or OnFailure", p)
			}
			for _, e := range checkPod(&v.Spec.Template.Spec, field.NewPath("spec", "template", "spec")) {
				add(o, "%v", e)
			}
			if err := checkRestricted(&v.Spec.Template.ObjectMeta, &v.Spec.Template.Spec); err != nil {
				add(o, "%v", err)
			}
		case *corev1.Service:
			svcs = append(svcs, v)
			if len(v.Spec.Ports) == 0 {
				add(o, "no ports")
			}
			for i, p := range v.Spec.Ports {
				for _, m := range validation.IsValidPortNum(int(p.Port)) {
					add(o, "ports[%d].port: %s", i, m)
				}
				for _, m := range validation.IsValidPortName(p.Name) {
					add(o, "ports[%d].name %q: %s", i, p.Name, m)
				}
			}
		case *policyv1.PodDisruptionBudget:
			if (v.Spec.MinAvailable == nil) == (v.Spec.MaxUnavailable == nil) {
				add(o, "exactly one of minAvailable and maxUnavailable must be set")
			}
			if v.Spec.Selector == nil || len(v.Spec.Selector.MatchLabels)+len(v.Spec.Selector.MatchExpressions) == 0 {
				add(o, "an empty selector would cover every pod of the namespace")
			}
		case *monitoringv1.ServiceMonitor:
			if len(v.Spec.Endpoints) == 0 {
				add(o, "no endpoints")
			}
		case *corev1.PersistentVolumeClaim:
			if len(v.Spec.AccessModes) == 0 {
				add(o, "no accessModes")
			}
			if q, ok := v.Spec.Resources.Requests[corev1.ResourceStorage]; !ok || q.Sign() <= 0 {
				add(o, "no positive resources.requests.storage")
			}
		case *corev1.ServiceAccount:
		default:
			add(o, "no validation for kind %s: add it to validate()", o.gvk.Kind)
		}
	}

	// Across objects: every selector finds what it is meant to, and every
	// claim the chart makes is mounted by one Deployment that never runs two
	// pods on it at once (a ReadWriteOnce claim would keep a rolling
	// update's new pod pending on another node).
	for _, o := range objs {
		switch v := o.obj.(type) {
		case *corev1.PersistentVolumeClaim:
			var users []*appsv1.Deployment
			for _, d := range deps {
				for _, vol := range d.Spec.Template.Spec.Volumes {
					if c := vol.PersistentVolumeClaim; c != nil && c.ClaimName == v.Name {
						users = append(users, d)
					}
				}
			}
			if len(users) != 1 {
				add(o, "mounted by %d Deployments, want 1", len(users))
				continue
			}
			if d := users[0]; d.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType || d.Spec.Replicas == nil || *d.Spec.Replicas > 1 {
				add(o, "mounted by %s with strategy %q and %v replicas: want Recreate and at most one", d.Name, d.Spec.Strategy.Type, d.Spec.Replicas)
			}
		case *corev1.Service:
			d := matchingDeployments(deps, v.Spec.Selector)
			if len(d) != 1 {
				add(o, "selector %v matches %d Deployments, want 1", v.Spec.Selector, len(d))
				continue
			}
			for _, p := range v.Spec.Ports {
				if cp, ok := containerPort(d[0], p.TargetPort); !ok {
					add(o, "port %s: targetPort %s is no container port of %s", p.Name, p.TargetPort.String(), d[0].Name)
				} else if proto(cp.Protocol) != proto(p.Protocol) {
					add(o, "port %s is %s, container port %s is %s", p.Name, proto(p.Protocol), cp.Name, proto(cp.Protocol))
				}
			}
		case *policyv1.PodDisruptionBudget:
			sel, err := metav1.LabelSelectorAsSelector(v.Spec.Selector)
			if err != nil {
				add(o, "selector: %v", err)
				continue
			}
			if n := len(selectDeployments(deps, sel)); n != 1 {
				add(o, "selector %v matches %d Deployments, want 1", sel, n)
			}
		case *monitoringv1.ServiceMonitor:
			sel, err := metav1.LabelSelectorAsSelector(&v.Spec.Selector)
			if err != nil {
				add(o, "selector: %v", err)
				continue
			}
			var matched []*corev1.Service
			for _, s := range svcs {
				if sel.Matches(labels.Set(s.Labels)) {
					matched = append(matched, s)
				}
			}
			if len(matched) == 0 {
				add(o, "selector %v matches no Service", sel)
			}
			for _, s := range matched {
				for _, ep := range v.Spec.Endpoints {
					if !hasServicePort(s, ep.Port) {
						add(o, "endpoint port %q is not a port of Service %s", ep.Port, s.Name)
					}
				}
			}
		}
	}
	return errs
}

// checkPod covers what the API server checks in a pod template and the
// chart controls: containers, ports, probes, environment, volumes,
// resources.
func checkPod(spec *corev1.PodSpec, path *field.Path) field.ErrorList {
	var errs field.ErrorList
	if len(spec.Containers) == 0 {
		errs = append(errs, field.Required(path.Child("containers"), "a pod needs a container"))
	}
	volumes := map[string]bool{}
	for _, v := range spec.Volumes {
		volumes[v.Name] = true
		for _, m := range validation.IsDNS1123Label(v.Name) {
			errs = append(errs, field.Invalid(path.Child("volumes"), v.Name, m))
		}
	}
	for i, c := range spec.Containers {
		cp := path.Child("containers").Index(i)
		for _, m := range validation.IsDNS1123Label(c.Name) {
			errs = append(errs, field.Invalid(cp.Child("name"), c.Name, m))
		}
		if c.Image == "" {
			errs = append(errs, field.Required(cp.Child("image"), ""))
		}
		ports := map[string]bool{}
		for j, p := range c.Ports {
			pp := cp.Child("ports").Index(j)
			for _, m := range validation.IsValidPortName(p.Name) {
				errs = append(errs, field.Invalid(pp.Child("name"), p.Name, m))
			}
			for _, m := range validation.IsValidPortNum(int(p.ContainerPort)) {
				errs = append(errs, field.Invalid(pp.Child("containerPort"), p.ContainerPort, m))
			}
			if ports[p.Name] {
				errs = append(errs, field.Duplicate(pp.Child("name"), p.Name))
			}
			ports[p.Name] = true
		}
		for name, pr := range map[string]*corev1.Probe{"livenessProbe": c.LivenessProbe, "readinessProbe": c.ReadinessProbe, "startupProbe": c.StartupProbe} {
			if pr == nil {
				continue
			}
			if pr.HTTPGet == nil {
				errs = append(errs, field.Required(cp.Child(name, "httpGet"), "flock-api's probes are HTTP"))
				continue
			}
			if port := pr.HTTPGet.Port; port.Type == intstr.String && !ports[port.StrVal] {
				errs = append(errs, field.NotFound(cp.Child(name, "httpGet", "port"), port.StrVal))
			}
			if !strings.HasPrefix(pr.HTTPGet.Path, "/") {
				errs = append(errs, field.Invalid(cp.Child(name, "httpGet", "path"), pr.HTTPGet.Path, "must be absolute"))
			}
		}
		for j, e := range c.Env {
			ep := cp.Child("env").Index(j)
			for _, m := range validation.IsEnvVarName(e.Name) {
				errs = append(errs, field.Invalid(ep.Child("name"), e.Name, m))
			}
			if e.ValueFrom != nil {
				if e.Value != "" {
					errs = append(errs, field.Invalid(ep, e.Name, "value and valueFrom are exclusive"))
				}
				if r := e.ValueFrom.SecretKeyRef; r != nil && (r.Name == "" || r.Key == "") {
					errs = append(errs, field.Required(ep.Child("valueFrom", "secretKeyRef"), "name and key"))
				}
			}
		}
		for j, m := range c.VolumeMounts {
			if !volumes[m.Name] {
				errs = append(errs, field.NotFound(cp.Child("volumeMounts").Index(j).Child("name"), m.Name))
			}
		}
		for res, req := range c.Resources.Requests {
			if lim, ok := c.Resources.Limits[res]; ok && lim.Cmp(req) < 0 {
				errs = append(errs, field.Invalid(cp.Child("resources", "limits", string(res)), lim.String(), "below the request "+req.String()))
			}
		}
	}
	return errs
}

func checkSelector(sel *metav1.LabelSelector, podLabels map[string]string) field.ErrorList {
	p := field.NewPath("spec", "selector")
	if sel == nil || len(sel.MatchLabels)+len(sel.MatchExpressions) == 0 {
		return field.ErrorList{field.Required(p, "")}
	}
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		return field.ErrorList{field.Invalid(p, sel, err.Error())}
	}
	if !s.Matches(labels.Set(podLabels)) {
		return field.ErrorList{field.Invalid(p, sel, "does not match the pod template's labels")}
	}
	return nil
}

func matchingDeployments(deps []*appsv1.Deployment, sel map[string]string) []*appsv1.Deployment {
	if len(sel) == 0 {
		return nil
	}
	return selectDeployments(deps, labels.SelectorFromSet(sel))
}

func selectDeployments(deps []*appsv1.Deployment, sel labels.Selector) []*appsv1.Deployment {
	var out []*appsv1.Deployment
	for _, d := range deps {
		if sel.Matches(labels.Set(d.Spec.Template.Labels)) {
			out = append(out, d)
		}
	}
	return out
}

func containerPort(d *appsv1.Deployment, target intstr.IntOrString) (corev1.ContainerPort, bool) {
	for _, c := range d.Spec.Template.Spec.Containers {
		for _, p := range c.Ports {
			if (target.Type == intstr.String && p.Name == target.StrVal) || (target.Type == intstr.Int && p.ContainerPort == target.IntVal) {
				return p, true
			}
		}
	}
	return corev1.ContainerPort{}, false
}

func hasServicePort(s *corev1.Service, name string) bool {
	for _, p := range s.Spec.Ports {
		if p.Name == name {
			return true
		}
	}
	return false
}

func proto(p corev1.Protocol) corev1.Protocol {
	if p == "" {
		return corev1.ProtocolTCP
	}
	return p
}
