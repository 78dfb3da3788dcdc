// Package webhook delivers CloudEvents to customers' webhook URLs following
// the Standard Webhooks specification (https://www.standardwebhooks.com, v1),
// and refuses to deliver to anything but public internet addresses.
//
// # Verifying a delivery
//
// Every delivery is an HTTP POST whose body is one CloudEvent
// (Content-Type: application/cloudevents+json) with three headers:
//
//	webhook-id:        msg_2Zx...          unique per message; the same on every retry
//	webhook-timestamp: 1614265330          unix seconds when this attempt was signed
//	webhook-signature: v1,g0hM9SsE+OTP...  one or more space-separated signatures
//
// Your endpoint's secret looks like "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".
// To verify a delivery:
//
//  1. Take the part of the secret after "whsec_" and base64-decode it
//     (standard alphabet, with padding); the result is the HMAC key.
//  2. Build the signed content: the webhook-id header, ".", the
//     webhook-timestamp header exactly as received, ".", and the raw request
//     body, byte for byte, before any JSON parsing or re-encoding.
//  3. Compute HMAC-SHA256 of the signed content with the key and
//     base64-encode it (standard alphabet, with padding).
//  4. Split webhook-signature on spaces. Each entry is "<version>,<signature>";
//     ignore versions other than "v1". The delivery is authentic if any v1
//     signature equals yours; compare in constant time.
//  5. Reject the delivery if webhook-timestamp is more than a few minutes
//     (we suggest 5) from your clock, in either direction, so that a captured
//     request cannot be replayed later. Use webhook-id to discard duplicates:
//     a delivery may arrive more than once.
//
// While a secret is being rotated, each delivery carries one signature per
// active secret, so a receiver holding either the old or the new secret
// accepts it.
//
// Answer with any 2xx status within 10 seconds to acknowledge a delivery.
// Anything else — another status, a timeout, a redirect — counts as a failed
// attempt and the delivery is retried later with a fresh timestamp and
// signature. Redirects are never followed: configure the final URL.
//
// Example test vector: secret "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
// webhook-id "msg_p5jXN8AQM9LWM0D4loKWxJek", webhook-timestamp "1614265330"
// and body {"test": 2432232314} give the signature
// "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=".
//
// [Verify] is the reference implementation of these steps.
package webhook
