package deviceproxy

import (
	"bytes"
	"encoding/json"
	"html/template"
	"net/http"
	"strconv"
	"strings"

	"github.com/flock-io/flock-api/internal/http/problem"
	"github.com/flock-io/flock-api/internal/http/reqinfo"
)

// page is one of the proxy's own answers. Its text is fixed per kind: it
// never includes the Host or anything else the visitor sent, so that every
// "no device here" answer is the same whatever the address.
type page struct {
	status int
	code   string
	title  string
	detail string
}

var (
	pageNotFound = page{http.StatusNotFound, "not_found",
		"No device serves this address",
		"Check the address. A device answers here only while its owner has enabled its public URL."}
	pageOffline = page{http.StatusBadGateway, "device_offline",
		"The device is offline",
		"The device behind this address is not connected right now. Try again once it is back online."}
	pageUnreachable = page{http.StatusBadGateway, "device_unreachable",
		"The device did not answer on its port",
		"The device is online, but the web server it publishes here did not accept the request or broke off. Check that the app on the device is running."}
	pageTimeout = page{http.StatusGatewayTimeout, "device_timeout",
		"The device did not answer in time",
		"The device did not accept a connection in time. Its connection may be slow or unstable; try again."}
	pageUnavailable = page{http.StatusServiceUnavailable, "unavailable",
		"This address is temporarily unavailable",
		"The device proxy could not look up this address. Try again shortly."}
)

var pageHTML = template.Must(template.New("page").Parse(`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{.Status}} · {{.Title}}</title>
<style>body{font:16px/1.5 system-ui,sans-serif;max-width:36rem;margin:4rem auto;padding:0 1rem;color:#222}h1{font-size:1.4rem}small{color:#666}</style>
</head>
<body>
<h1>{{.Title}}</h1>
<p>{{.Detail}}</p>
<p><small>Error {{.Status}} · request id <code>{{.RequestID}}</code></small></p>
</body>
</html>
`))

// writeError sends pg as HTML, or as problem+json to clients that prefer
// JSON (API clients and scripts calling the device's API).
func (p *Proxy) writeError(w http.ResponseWriter, r *http.Request, pg page) {
	id := reqinfo.ID(r.Context())
	var body bytes.Buffer
	contentType := "text/html; charset=utf-8"
	if prefersJSON(r.Header.Values("Accept")) {
		contentType = problem.ContentType
		_ = json.NewEncoder(&body).Encode(problem.Problem{
			Type:      "urn:flock:problem:" + pg.code,
			Title:     pg.title,
			Status:    pg.status,
			Detail:    pg.detail,
			Code:      pg.code,
			RequestID: id,
		})
	} else if err := pageHTML.Execute(&body, map[string]any{
		"Status": pg.status, "Title": pg.title, "Detail": pg.detail, "RequestID": id,
	}); err != nil {
		// The template and its data are fixed; this cannot fail at run time.
		panic(err)
	}
	h := w.Header()
	h.Set("Content-Type", contentType)
	h.Set("Content-Length", strconv.Itoa(body.Len()))
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(pg.status)
	_, _ = w.Write(body.Bytes())
}

// prefersJSON reports whether Accept ranks a JSON type above HTML (RFC 9110
// §12.5.1: the most specific matching range gives each type its weight). No
// Accept, or a tie as with */*, means a browser or curl: HTML.
func prefersJSON(accept []string) bool {
	weights := parseAccept(accept)
	html := weightOf(weights, "text", "html")
	jsn := max(weightOf(weights, "application", "json"), weightOf(weights, "application", "problem+json"))
	return jsn > html
}

type mediaRange struct {
	typ, sub string
	q        float64
}

func parseAccept(values []string) []mediaRange {
	var out []mediaRange
	for _, v := range values {
		for part := range strings.SplitSeq(v, ",") {
			params := strings.Split(part, ";")
			typ, sub, ok := strings.Cut(strings.ToLower(strings.TrimSpace(params[0])), "/")
			if !ok || typ == "" || sub == "" {
				continue
			}
			mr := mediaRange{typ: strings.TrimSpace(typ), sub: strings.TrimSpace(sub), q: 1}
			for _, param := range params[1:] {
				k, val, _ := strings.Cut(strings.TrimSpace(param), "=")
				if strings.EqualFold(strings.TrimSpace(k), "q") {
					q, err := strconv.ParseFloat(strings.TrimSpace(val), 64)
					if err != nil || q < 0 || q > 1 {
						q = 0
					}
					mr.q = q
				}
			}
			out = append(out, mr)
		}
	}
	return out
}

// weightOf returns the q of the most specific range that matches typ/sub,
// 0 when none does.
func weightOf(ranges []mediaRange, typ, sub string) float64 {
	best, specificity := 0.0, -1
	for _, mr := range ranges {
		s := -1
		switch {
		case mr.typ == typ && mr.sub == sub:
			s = 2
		case mr.typ == typ && mr.sub == "*":
			s = 1
		case mr.typ == "*" && mr.sub == "*":
			s = 0
		}
		if s > specificity || s == specificity && s >= 0 && mr.q > best {
			best, specificity = mr.q, s
		}
	}
	if specificity < 0 {
		return 0
	}
	return best
}
