package buildsrc

import (
	"fmt"
	"net"
	"path"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/compose-spec/compose-go/v2/template"
	"github.com/google/go-containerregistry/pkg/name"
	"go.yaml.in/yaml/v3"
)

var (
	serviceNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)
	volumeNameRE  = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]+$`)
	envKeyRE      = regexp.MustCompile(`^[^=\s]+$`)
	capRE         = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_]*$`)
)

// serviceKeys are the compose keys of a service that a fleet release can
// carry out; anything else is refused by name rather than silently dropped.
var serviceKeys = map[string]bool{
	"build": true, "image": true, "environment": true, "labels": true,
	"ports": true, "volumes": true, "restart": true, "privileged": true,
	"cap_add": true, "depends_on": true,
}

// composeParser collects every problem of a compose file, so that one upload
// reports them all instead of one per attempt.
type composeParser struct {
	file        string
	invalid     []FieldError
	unsupported []FieldError
	escapes     []FieldError
	noSource    []FieldError
}

func (p *composeParser) bad(field, format string, args ...any) {
	p.invalid = append(p.invalid, FieldError{field, fmt.Sprintf(format, args...)})
}

func (p *composeParser) unsup(field, detail string) {
	p.unsupported = append(p.unsupported, FieldError{field, detail})
}

// parseCompose reads a compose file. Services come out sorted by name: the
// compose model is a map, and docker compose does not keep file order either.
func parseCompose(file string, data []byte) ([]Service, *Error) {
	var doc any
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, newError(CodeComposeInvalid, err, "The compose file %s is not valid YAML.", file)
	}
	if doc == nil {
		return nil, newError(CodeComposeInvalid, nil, "The compose file %s is empty.", file)
	}
	p := &composeParser{file: file}
	top, ok := p.mapping(doc, "")
	if !ok {
		return nil, p.result()
	}
	top = p.interpolate(top, "").(map[string]any)
	if len(p.invalid) > 0 {
		return nil, p.result()
	}

	// Volume definitions first: services refer to them.
	volumes := map[string]bool{}
	p.volumeDefs(top["volumes"], volumes)
	var services []Service
	for _, k := range sortedKeys(top) {
		v := top[k]
		switch {
		case strings.HasPrefix(k, "x-"), k == "version":
			// Extensions are for anchors; version is obsolete and ignored
			// by docker compose too.
		case k == "name":
			if _, ok := v.(string); !ok {
				p.bad("name", "must be a string")
			}
		case k == "volumes":
		case k == "services":
			services = p.services(v, volumes)
		case k == "networks":
			p.unsup(k, "services share the device's default network; networks cannot be defined")
		default:
			p.unsup(k, "top-level key not supported")
		}
	}
	if _, ok := top["services"]; !ok {
		p.bad("services", "the compose file defines no services")
	}
	if len(p.invalid) == 0 {
		p.checkDependencies(services)
	}
	if e := p.result(); e != nil {
		return nil, e
	}
	return services, nil
}

func (p *composeParser) result() *Error {
	in := "The compose file " + p.file + " has "
	switch {
	case len(p.invalid) > 0:
		return listError(CodeComposeInvalid, in+"invalid values", p.invalid)
	case len(p.unsupported) > 0:
		return listError(CodeComposeUnsupported, in+"unsupported keys", p.unsupported)
	case len(p.escapes) > 0:
		return listError(CodePathEscapes, in+"paths outside the project", p.escapes)
	case len(p.noSource) > 0:
		return listError(CodeServiceInvalid, in+"services with neither build nor image", p.noSource)
	}
	return nil
}

// interpolate substitutes ${VAR}-style variables in every string value (not
// in keys), like docker compose does before it reads the model. The
// environment is empty: defaults apply and unset variables become "".
func (p *composeParser) interpolate(v any, field string) any {
	switch t := v.(type) {
	case string:
		s, err := template.SubstituteWithOptions(t, func(string) (string, bool) { return "", false }, template.WithoutLogging)
		if err != nil {
			p.bad(field, "interpolation failed: %v", err)
			return t
		}
		return s
	case map[string]any:
		for k, e := range t {
			t[k] = p.interpolate(e, join(field, k))
		}
	case []any:
		for i, e := range t {
			t[i] = p.interpolate(e, fmt.Sprintf("%s[%d]", field, i))
		}
	}
	return v
}

func join(field, key string) string {
	if field == "" {
		return key
	}
	return field + "." + key
}

// mapping accepts a YAML mapping; yaml.v3 gives map[string]any only when
// every key is a string, so anything else is a type error here.
func (p *composeParser) mapping(v any, field string) (map[string]any, bool) {
	if m, ok := v.(map[string]any); ok {
		return m, true
	}
	where := field
	if where == "" {
		where = "(document)"
	}
	if _, ok := v.(map[any]any); ok {
		p.bad(where, "mapping keys must be strings")
	} else {
		p.bad(where, "must be a mapping, not %s", typeName(v))
	}
	return nil, false
}

func typeName(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case string:
		return "a string"
	case bool:
		return "a boolean"
	case int, int64, uint64, float64:
		return "a number"
	case []any:
		return "a list"
	default:
		return "a mapping"
	}
}

// scalar gives the text of a string, number or boolean, which compose
// accepts interchangeably where a string is expected in maps like
// environment or args.
func scalar(v any) (string, bool) {
	switch t := v.(type) {
	case string:
		return t, true
	case bool:
		return strconv.FormatBool(t), true
	case int:
		return strconv.Itoa(t), true
	case int64:
		return strconv.FormatInt(t, 10), true
	case uint64:
		return strconv.FormatUint(t, 10), true
	case float64:
		return strconv.FormatFloat(t, 'f', -1, 64), true
	}
	return "", false
}

func (p *composeParser) str(v any, field string) (string, bool) {
	s, ok := v.(string)
	if !ok {
		p.bad(field, "must be a string, not %s", typeName(v))
	}
	return s, ok
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// volumeDefs accepts named volumes without options: the device supervisor
// creates them with the default driver, so no option could be honoured.
func (p *composeParser) volumeDefs(v any, names map[string]bool) {
	if v == nil {
		return
	}
	m, ok := p.mapping(v, "volumes")
	if !ok {
		return
	}
	for _, n := range sortedKeys(m) {
		field := join("volumes", n)
		if !volumeNameRE.MatchString(n) {
			p.bad(field, "volume name must match %s", volumeNameRE)
			continue
		}
		names[n] = true
		if m[n] == nil {
			continue
		}
		opts, ok := p.mapping(m[n], field)
		if !ok {
			continue
		}
		for _, k := range sortedKeys(opts) {
			if !strings.HasPrefix(k, "x-") {
				p.unsup(join(field, k), "volume options are not supported; volumes use the default driver")
			}
		}
	}
}

func (p *composeParser) services(v any, volumes map[string]bool) []Service {
	m, ok := p.mapping(v, "services")
	if !ok {
		return nil
	}
	if len(m) == 0 {
		p.bad("services", "the compose file defines no services")
	}
	var out []Service
	for _, n := range sortedKeys(m) {
		field := join("services", n)
		if !serviceNameRE.MatchString(n) {
			p.bad(field, "service name must match %s", serviceNameRE)
			continue
		}
		svc := Service{Name: n}
		var def map[string]any
		if m[n] != nil {
			if def, ok = p.mapping(m[n], field); !ok {
				continue
			}
		}
		for _, k := range sortedKeys(def) {
			if !serviceKeys[k] && !strings.HasPrefix(k, "x-") {
				p.unsup(join(field, k), "service key not supported")
			}
		}
		if b, ok := def["build"]; ok {
			svc.Build = p.build(b, join(field, "build"))
		}
		if v, ok := def["image"]; ok {
			if s, ok := p.str(v, join(field, "image")); ok {
				if _, err := name.ParseReference(s); err != nil {
					p.bad(join(field, "image"), "%q is not a valid image reference", s)
				}
				svc.Image = s
			}
		}
		svc.Environment = p.keyValues(def["environment"], join(field, "environment"), false)
		svc.Labels = p.keyValues(def["labels"], join(field, "labels"), true)
		svc.Ports = p.ports(def["ports"], join(field, "ports"))
		svc.Volumes = p.volumes(def["volumes"], join(field, "volumes"), volumes)
		if v, ok := def["restart"]; ok {
			svc.Restart = p.restart(v, join(field, "restart"))
		}
		if v, ok := def["privileged"]; ok {
			svc.Privileged = p.boolean(v, join(field, "privileged"))
		}
		svc.CapAdd = p.caps(def["cap_add"], join(field, "cap_add"))
		svc.DependsOn = p.dependsOn(def["depends_on"], join(field, "depends_on"))
		if def["build"] == nil && def["image"] == nil {
			p.noSource = append(p.noSource, FieldError{field, "a service needs build or image"})
		}
		out = append(out, svc)
	}
	return out
}

func (p *composeParser) build(v any, field string) *Build {
	b := &Build{Context: ".", Dockerfile: "Dockerfile"}
	ctx := "."
	switch t := v.(type) {
	case string:
		ctx = t
	case map[string]any:
		for _, k := range sortedKeys(t) {
			f := join(field, k)
			switch {
			case k == "context":
				if s, ok := p.str(t[k], f); ok {
					ctx = s
				}
			case k == "dockerfile":
				if s, ok := p.str(t[k], f); ok {
					b.Dockerfile = s
				}
			case k == "target":
				if s, ok := p.str(t[k], f); ok {
					b.Target = s
				}
			case k == "args":
				b.Args = p.keyValues(t[k], f, false)
			case strings.HasPrefix(k, "x-"):
			default:
				p.unsup(f, "build key not supported")
			}
		}
	default:
		p.bad(field, "must be a string or a mapping, not %s", typeName(v))
		return b
	}
	if strings.Contains(ctx, "://") || strings.HasPrefix(ctx, "git@") {
		p.unsup(join(field, "context"), "remote build contexts are not supported; the context must be a directory of the upload")
		return b
	}
	if ctx == "" {
		ctx = "."
	}
	if path.IsAbs(ctx) || leaves(path.Clean(ctx)) {
		p.escapes = append(p.escapes, FieldError{join(field, "context"), fmt.Sprintf("%q is outside the project", ctx)})
		return b
	}
	b.Context = path.Clean(ctx)
	if b.Dockerfile == "" || path.IsAbs(b.Dockerfile) || leaves(path.Join(b.Context, b.Dockerfile)) {
		p.escapes = append(p.escapes, FieldError{join(field, "dockerfile"), fmt.Sprintf("%q is outside the project", b.Dockerfile)})
	}
	return b
}

func leaves(p string) bool { return p == ".." || strings.HasPrefix(p, "../") }

// keyValues reads the map and the list ("K=V") forms compose allows for
// environment, labels and build args. A key without a value means "take it
// from the environment" in compose; the environment here is empty, so the
// key is left out, except for labels where compose makes it "".
func (p *composeParser) keyValues(v any, field string, keepEmpty bool) map[string]string {
	if v == nil {
		return nil
	}
	out := map[string]string{}
	set := func(k, val string, has bool, f string) {
		if !envKeyRE.MatchString(k) {
			p.bad(f, "%q is not a valid name", k)
			return
		}
		if has || keepEmpty {
			out[k] = val
		}
	}
	switch t := v.(type) {
	case map[string]any:
		for _, k := range sortedKeys(t) {
			if t[k] == nil {
				set(k, "", false, join(field, k))
				continue
			}
			s, ok := scalar(t[k])
			if !ok {
				p.bad(join(field, k), "must be a string, number or boolean, not %s", typeName(t[k]))
				continue
			}
			set(k, s, true, join(field, k))
		}
	case []any:
		for i, e := range t {
			f := fmt.Sprintf("%s[%d]", field, i)
			s, ok := e.(string)
			if !ok {
				p.bad(f, "must be a KEY=VALUE string, not %s", typeName(e))
				continue
			}
			k, val, has := strings.Cut(s, "=")
			set(k, val, has, f)
		}
	default:
		p.bad(field, "must be a mapping or a list of KEY=VALUE strings, not %s", typeName(v))
	}
	return out
}

func (p *composeParser) list(v any, field string) []any {
	if v == nil {
		return nil
	}
	l, ok := v.([]any)
	if !ok {
		p.bad(field, "must be a list, not %s", typeName(v))
	}
	return l
}

func (p *composeParser) ports(v any, field string) []string {
	var out []string
	for i, e := range p.list(v, field) {
		f := fmt.Sprintf("%s[%d]", field, i)
		if _, ok := e.(map[string]any); ok {
			p.unsup(f, "the long port syntax is not supported; use \"published:target/protocol\"")
			continue
		}
		s, ok := scalar(e)
		if !ok {
			p.bad(f, "must be a string, not %s", typeName(e))
			continue
		}
		if err := checkPort(s); err != nil {
			p.bad(f, "%q: %v", s, err)
			continue
		}
		out = append(out, s)
	}
	return out
}

// checkPort validates the short syntax [[ip:]published:]target[/protocol],
// where published and target may be ranges.
func checkPort(s string) error {
	spec, proto, hasProto := strings.Cut(s, "/")
	if hasProto && proto != "tcp" && proto != "udp" && proto != "sctp" {
		return fmt.Errorf("protocol must be tcp, udp or sctp")
	}
	var ip, published, target string
	i := strings.LastIndex(spec, ":")
	target = spec[i+1:]
	if i >= 0 {
		rest := spec[:i]
		j := strings.LastIndex(rest, ":")
		published = rest[j+1:]
		if j >= 0 {
			ip = strings.TrimSuffix(strings.TrimPrefix(rest[:j], "["), "]")
			if net.ParseIP(ip) == nil {
				return fmt.Errorf("%q is not an IP address", ip)
			}
		}
	}
	tn, err := portRange(target)
	if err != nil {
		return fmt.Errorf("container port: %w", err)
	}
	if published != "" {
		pn, err := portRange(published)
		if err != nil {
			return fmt.Errorf("published port: %w", err)
		}
		if pn != tn && tn != 1 {
			return fmt.Errorf("published and container port ranges differ in size")
		}
	}
	return nil
}

// portRange checks "N" or "N-M" and returns how many ports it covers.
func portRange(s string) (int, error) {
	lo, hi, isRange := strings.Cut(s, "-")
	a, err := strconv.Atoi(lo)
	if err != nil || a < 1 || a > 65535 {
		return 0, fmt.Errorf("%q is not a port number", lo)
	}
	if !isRange {
		return 1, nil
	}
	b, err := strconv.Atoi(hi)
	if err != nil || b < a || b > 65535 {
		return 0, fmt.Errorf("%q is not a port range", s)
	}
	return b - a + 1, nil
}

// volumes reads the short syntax [source:]target[:mode]. Only named volumes
// and anonymous ones make sense on a device: a bind mount would name a
// directory of the developer's machine.
func (p *composeParser) volumes(v any, field string, defined map[string]bool) []string {
	var out []string
	for i, e := range p.list(v, field) {
		f := fmt.Sprintf("%s[%d]", field, i)
		if _, ok := e.(map[string]any); ok {
			p.unsup(f, "the long volume syntax is not supported; use \"name:/path[:ro]\"")
			continue
		}
		s, ok := e.(string)
		if !ok {
			p.bad(f, "must be a string, not %s", typeName(e))
			continue
		}
		parts := strings.Split(s, ":")
		var source, target, mode string
		switch len(parts) {
		case 1:
			target = parts[0]
		case 2:
			source, target = parts[0], parts[1]
		case 3:
			source, target, mode = parts[0], parts[1], parts[2]
		default:
			p.bad(f, "%q is not source:target[:mode]", s)
			continue
		}
		if strings.HasPrefix(source, "/") || strings.HasPrefix(source, ".") || strings.HasPrefix(source, "~") {
			p.unsup(f, fmt.Sprintf("%q is a bind mount; only named volumes are supported", s))
			continue
		}
		switch {
		case !path.IsAbs(target):
			p.bad(f, "%q: the container path must be absolute", s)
		case source != "" && !volumeNameRE.MatchString(source):
			p.bad(f, "%q: %q is not a valid volume name", s, source)
		case source != "" && !defined[source]:
			p.bad(f, "%q: volume %q is not defined under the top-level volumes", s, source)
		case mode != "" && slices.ContainsFunc(strings.Split(mode, ","), func(m string) bool {
			return m != "ro" && m != "rw" && m != "nocopy"
		}):
			p.bad(f, "%q: mode must be ro, rw or nocopy", s)
		default:
			out = append(out, s)
		}
	}
	return out
}

func (p *composeParser) restart(v any, field string) string {
	s, ok := p.str(v, field)
	if !ok {
		return ""
	}
	switch s {
	case "no", "always", "on-failure", "unless-stopped":
		return s
	}
	if n, ok := strings.CutPrefix(s, "on-failure:"); ok {
		if i, err := strconv.Atoi(n); err == nil && i > 0 {
			return s
		}
	}
	p.bad(field, "%q is not one of \"no\", always, on-failure[:N], unless-stopped", s)
	return ""
}

// boolean also takes the strings true and false, which is what an
// interpolated value like ${PRIVILEGED:-false} becomes.
func (p *composeParser) boolean(v any, field string) bool {
	switch t := v.(type) {
	case bool:
		return t
	case string:
		if b, err := strconv.ParseBool(t); err == nil && t != "1" && t != "0" && t != "t" && t != "f" {
			return b
		}
	}
	p.bad(field, "must be true or false")
	return false
}

func (p *composeParser) caps(v any, field string) []string {
	var out []string
	for i, e := range p.list(v, field) {
		f := fmt.Sprintf("%s[%d]", field, i)
		s, ok := e.(string)
		if !ok || !capRE.MatchString(s) {
			p.bad(f, "must be a capability name like NET_ADMIN")
			continue
		}
		out = append(out, s)
	}
	return out
}

func (p *composeParser) dependsOn(v any, field string) []string {
	var out []string
	switch t := v.(type) {
	case nil:
	case []any:
		for i, e := range t {
			if s, ok := p.str(e, fmt.Sprintf("%s[%d]", field, i)); ok {
				out = append(out, s)
			}
		}
	case map[string]any:
		for _, n := range sortedKeys(t) {
			f := join(field, n)
			out = append(out, n)
			if t[n] == nil {
				continue
			}
			opts, ok := p.mapping(t[n], f)
			if !ok {
				continue
			}
			for _, k := range sortedKeys(opts) {
				switch {
				case k == "condition":
					if c, ok := p.str(opts[k], join(f, k)); ok && c != "service_started" {
						p.unsup(join(f, k), fmt.Sprintf("condition %q is not supported; only service_started is", c))
					}
				case strings.HasPrefix(k, "x-"):
				default:
					p.unsup(join(f, k), "depends_on key not supported")
				}
			}
		}
	default:
		p.bad(field, "must be a list or a mapping, not %s", typeName(v))
	}
	return out
}

// checkDependencies refuses depends_on entries naming no service and cycles,
// which the supervisor could never start.
func (p *composeParser) checkDependencies(services []Service) {
	byName := map[string]*Service{}
	for i := range services {
		byName[services[i].Name] = &services[i]
	}
	for _, s := range services {
		for _, d := range s.DependsOn {
			if byName[d] == nil {
				p.bad(join("services", s.Name)+".depends_on", "service %q is not defined", d)
			}
		}
	}
	if len(p.invalid) > 0 {
		return
	}
	const (
		visiting = 1
		done     = 2
	)
	state := map[string]int{}
	var stack []string
	var visit func(n string) bool
	visit = func(n string) bool {
		switch state[n] {
		case visiting:
			i := slices.Index(stack, n)
			p.bad(join("services", n)+".depends_on", "dependency cycle: %s", strings.Join(append(stack[i:], n), " -> "))
			return false
		case done:
			return true
		}
		state[n] = visiting
		stack = append(stack, n)
		for _, d := range byName[n].DependsOn {
			if !visit(d) {
				return false
			}
		}
		stack = stack[:len(stack)-1]
		state[n] = done
		return true
	}
	for _, s := range services {
		if !visit(s.Name) {
			return
		}
	}
}
