// Package deviceproxy is the proxy target's HTTP handler: it serves the
// public device URLs, https://<uuid>.<domain>, that let a device publish one
// of its local web servers when its owner has enabled it (off by default).
//
// Each request is routed by the uuid label of its Host: Config.Resolve says
// which port the device publishes (or ErrNotPublic), and the request is
// relayed over a tunnel connection from Config.Dial to that port, streaming
// both ways and passing WebSocket and other Upgrade requests through. The
// device's app sees its public Host and the X-Forwarded-* headers.
//
// An unknown device, a device whose URL is disabled and another
// organisation's device all get the same 404 page, so that scanning uuids
// tells nobody which devices exist. Failures past that point (offline, the
// port not answering, a timeout) get pages of their own, because by then the
// address is known to be public and the visitor needs to know whom to blame.
//
// CertReloader serves the wildcard certificate from files that cert-manager
// rotates, so that renewals need no restart.
package deviceproxy
