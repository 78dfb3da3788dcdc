// Package broker is the embedded MQTT broker devices connect to when no
// external broker is configured: mochi-mqtt with one TCP listener, device-token
// authentication, per-topic ACLs, a per-device publish rate limit, and
// payloads checked against the AsyncAPI document before they are
// acknowledged.
//
// Who may connect and what each client may publish and subscribe to is
// decided by package mqttauth, which the API's hooks for an external broker
// ask too; this package is the mochi glue around it.
//
// A device's connection lives no longer than its token and no longer than
// the device: at the token's expiry the broker disconnects it (DISCONNECT
// 0x87) unless the device has renewed the token on the connection with MQTT
// v5 re-authentication (AUTH, method flock-device-token), and a device deleted in
// PostgreSQL is disconnected as soon as the deletion commits (the devices
// table notifies every broker; see sessions.go).
package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/flock-io/flock-api/asyncapi"
	"github.com/flock-io/flock-api/internal/devicetopic"
	"github.com/flock-io/flock-api/internal/mqtt/mqttauth"
)

// Config configures a Broker.
type Config struct {
	// Listen is the TCP address to serve, e.g. "127.0.0.1:0".
	Listen string
	// ServiceUsername and ServicePassword are the trusted service client's
	// (the ingester's) credentials. An empty ServiceUsername disables service
	// logins. The user name must not be a uuid, which would make it a device.
	ServiceUsername string
	ServicePassword string
	// MaxPacketSize bounds every MQTT packet a client sends; larger ones end
	// the connection. Default 256 KiB.
	MaxPacketSize uint32
	// MessagesPerSecond and Burst are each device's publish token bucket;
	// defaults 20 and 40. The service is not limited.
	MessagesPerSecond float64
	Burst             int
	// Devices is PostgreSQL, where the broker checks that a device still
	// exists when it connects or renews its token, and hears of devices
	// deleted while connected. Required.
	Devices *pgxpool.Pool
	// Validator checks what devices publish against the AsyncAPI document;
	// nil builds one.
	Validator *asyncapi.Validator
	// Log defaults to slog.Default().
	Log *slog.Logger
	// Metrics registers the broker's counters when not nil.
	Metrics prometheus.Registerer
}

const (
	defaultMaxPacketSize     = 256 << 10
	defaultMessagesPerSecond = 20
	defaultBurst             = 40

	// clientWritesPending bounds the queue of packets waiting to be
	// written to one client. In Flock's copy of mochi the queue grows on
	// demand and its writer goroutine runs only while it holds packets, so
	// the bound costs an idle connection nothing. The service client
	// receives the fan-in of every device, and mochi drops what does not
	// fit, so the ingester subscribes at QoS 1 with a Receive Maximum of at
	// most this value: mochi keeps the excess in the session's inflight
	// store (up to MaximumInflight) and sends it as acknowledgements return.
	//
	// Memory per idle connection, measured with TestMemoryPerIdleConnection
	// (2,000 idle authenticated MQTT v5 devices, clients in another process,
	// Go 1.26, amd64): 4.5 KB of heap and one 4 KB goroutine stack, 8.6 KB
	// in all. Upstream mochi 2.7.9 with its defaults took 71 KB of heap and
	// 24 KB of stacks (95 KB); see third_party/mochi-mqtt/FLOCK.md for what
	// the copy changes.
	clientWritesPending = 1024

	// readBufferSize is each connection's bufio.Reader, allocated at accept.
	// Larger packets are read straight into their own buffer, so a small
	// one only costs an extra read for packets between the two sizes.
	readBufferSize = 1024

	// writeBufferSize: while packets wait in a client's queue, mochi
	// gathers them into one buffer of up to this size per write, which it
	// allocates only while writing. The service client receives the fan-in
	// of every device; mochi's 2 KB made about six messages a system call.
	writeBufferSize = 32 << 10

	// maxSessionExpiry caps how long mochi keeps a disconnected persistent
	// session (and what it queued for it). A device fetches its target
	// state over REST on reconnect, so nothing is lost by forgetting; the
	// default, about 136 years, would keep every vanished device forever.
	maxSessionExpiry = 60 * 60

	// sysTopicInterval: mochi refreshes its $SYS topics on this tick, which
	// stops the world to read memory statistics; no client may subscribe to
	// $SYS here, so once a minute is plenty.
	sysTopicInterval = 60

	// connectTimeout bounds how long a new TCP connection may take to send
	// CONNECT; mochi sets no deadline before it has one, so an idle socket
	// would otherwise hold a goroutine and its buffers forever.
	connectTimeout = 30 * time.Second

	// authTimeout bounds token verification, which may read signing keys
	// from the database.
	authTimeout = 10 * time.Second
)

// Broker is an embedded MQTT broker. Create it with New and serve with Run.
type Broker struct {
	cfg  Config
	auth *mqttauth.Authenticator
	log  *slog.Logger

	server    *mqtt.Server
	ln        *listener
	limits    *deviceLimits
	sessions  *sessions
	validator *asyncapi.Validator
	// listening is true while revocations are heard (readiness).
	listening atomic.Bool
	// listener goroutine of Run
	revocations sync.WaitGroup

	authRefused           *prometheus.CounterVec
	publishRefusedACL     prometheus.Counter
	publishRefusedRate    prometheus.Counter
	publishRefusedPayload prometheus.Counter
	disconnected          *prometheus.CounterVec
	// Messages accepted from a publisher that a subscriber never got.
	droppedQueueFull   prometheus.Counter
	droppedPacketIDs   prometheus.Counter
	droppedUndelivered prometheus.Counter

	// ctx bounds authentications in progress; Run cancels it when it stops
	// so that closing does not wait for them.
	ctx    context.Context
	cancel context.CancelFunc
	ran    atomic.Bool
}

// New builds the broker and binds its listener, so a taken port fails here.
// Run must be called to serve and, when it returns, to release the port.
func New(cfg Config, v mqttauth.Verifier) (*Broker, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	// It checks the service credentials, the verifier and the pool.
	auth, err := mqttauth.NewAuthenticator(cfg.ServiceUsername, cfg.ServicePassword, v, cfg.Devices)
	if err != nil {
		return nil, fmt.Errorf("broker: %w", err)
	}
	// Not derived from a caller's context: Run's ctx arrives later, and
	// Run cancels this one when it returns.
	ctx, cancel := context.WithCancel(context.Background())
	b := &Broker{
		cfg:    cfg,
		auth:   auth,
		log:    cfg.Log,
		limits: newDeviceLimits(cfg.MessagesPerSecond, cfg.Burst),
		ctx:    ctx,
		cancel: cancel,
		authRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flock_mqtt_auth_refused_total",
			Help: "MQTT connections refused by the embedded broker, by reason.",
		}, []string{"reason"}),
		disconnected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flock_mqtt_devices_disconnected_total",
			Help: "Device connections the embedded broker ended: token_expired (not renewed by re-authentication), revoked (the device was deleted), reauth_failed (a renewal did not verify).",
		}, []string{"reason"}),
	}
	b.sessions = newSessions(b.end)
	b.validator = cfg.Validator
	if b.validator == nil {
		v, err := asyncapi.NewValidator()
		if err != nil {
			cancel()
			return nil, fmt.Errorf("broker: %w", err)
		}
		b.validator = v
	}
	for _, r := range []string{reasonTokenExpired, reasonRevoked, reasonReauthFailed} {
		b.disconnected.WithLabelValues(r)
	}
	publishRefused := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "flock_mqtt_publish_refused_total",
		Help: "MQTT publishes dropped by the embedded broker: acl (topic not allowed), rate (over the device's rate limit) or payload (not JSON, or not matching its channel's schema).",
	}, []string{"reason"})
	b.publishRefusedACL = publishRefused.WithLabelValues("acl")
	b.publishRefusedRate = publishRefused.WithLabelValues("rate")
	b.publishRefusedPayload = publishRefused.WithLabelValues("payload")
	dropped := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "flock_mqtt_messages_dropped_total",
		Help: "Messages the embedded broker accepted but did not deliver to a subscriber: queue_full (the client's outbound queue, or its store of unacknowledged messages, was full), packet_ids (the client had 65535 messages unacknowledged), undelivered (a QoS 1/2 message removed unacknowledged: expired, or its session ended).",
	}, []string{"reason"})
	b.droppedQueueFull = dropped.WithLabelValues("queue_full")
	b.droppedPacketIDs = dropped.WithLabelValues("packet_ids")
	b.droppedUndelivered = dropped.WithLabelValues("undelivered")
	for _, r := range mqttauth.Reasons {
		b.authRefused.WithLabelValues(r)
	}

	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumClientWritesPending = clientWritesPending
	caps.MaximumPacketSize = cfg.MaxPacketSize
	caps.MaximumSessionExpiryInterval = maxSessionExpiry
	// Mochi does not announce topic aliases in CONNACK (so v5 clients assume
	// none), and it checks the ACL before resolving an alias, so a publish
	// by alias alone could never pass; refuse aliases outright.
	caps.TopicAliasMaximum = 0
	b.server = mqtt.New(&mqtt.Options{
		Capabilities:             caps,
		ClientNetReadBufferSize:  readBufferSize,
		ClientNetWriteBufferSize: writeBufferSize,
		SysTopicResendInterval:   sysTopicInterval,
		Logger:                   slog.New(&mochiHandler{h: cfg.Log.Handler()}).With("component", "mochi-mqtt"),
	})
	if err := b.server.AddHook(&hook{b: b}, nil); err != nil {
		return nil, fmt.Errorf("broker: add hook: %w", err)
	}

	ln, err := listen(cfg.Listen, cfg.Log)
	if err != nil {
		return nil, err
	}
	if err := b.server.AddListener(ln); err != nil {
		_ = ln.ln.Close()
		return nil, fmt.Errorf("broker: add listener: %w", err)
	}
	b.ln = ln

	if cfg.Metrics != nil {
		var registered []prometheus.Collector
		for _, c := range []prometheus.Collector{b.authRefused, publishRefused, dropped, b.disconnected} {
			if err := cfg.Metrics.Register(c); err != nil {
				for _, r := range registered {
					cfg.Metrics.Unregister(r)
				}
				_ = ln.ln.Close()
				return nil, fmt.Errorf("broker: register metrics: %w", err)
			}
			registered = append(registered, c)
		}
	}
	return b, nil
}

func (c *Config) setDefaults() error {
	if c.Listen == "" {
		return errors.New("broker: Listen is empty")
	}
	if c.MessagesPerSecond < 0 || c.Burst < 0 {
		return fmt.Errorf("broker: negative rate limit (%v/s, burst %d)", c.MessagesPerSecond, c.Burst)
	}
	if c.MaxPacketSize == 0 {
		c.MaxPacketSize = defaultMaxPacketSize
	}
	if c.MessagesPerSecond == 0 {
		c.MessagesPerSecond = defaultMessagesPerSecond
	}
	if c.Burst == 0 {
		c.Burst = defaultBurst
	}
	if c.Log == nil {
		c.Log = slog.Default()
	}
	return nil
}

// Addr is the address the listener is bound to.
func (b *Broker) Addr() string { return b.ln.Address() }

// Run serves until ctx is done, then disconnects every client (MQTT v5
// clients get DISCONNECT 0x8B Server shutting down), closes the listener and
// returns nil once every connection's goroutines have ended.
func (b *Broker) Run(ctx context.Context) error {
	if !b.ran.CompareAndSwap(false, true) {
		return errors.New("broker: Run called more than once")
	}
	defer b.cancel()
	if err := b.server.Serve(); err != nil {
		b.cancel()
		_ = b.server.Close()
		return fmt.Errorf("broker: serve: %w", err)
	}
	b.log.Info("mqtt broker listening", "addr", b.Addr(),
		"max_packet_size", b.cfg.MaxPacketSize, "device_messages_per_second", b.cfg.MessagesPerSecond, "device_burst", b.cfg.Burst)
	b.revocations.Go(func() { b.listenRevocations(b.ctx) })
	<-ctx.Done()
	b.cancel()
	b.revocations.Wait()
	if err := b.server.Close(); err != nil {
		return fmt.Errorf("broker: close: %w", err)
	}
	b.log.Info("mqtt broker stopped", "addr", b.Addr())
	return nil
}

// Ready reports whether the broker hears device revocations: until it
// does, a deleted device could stay connected.
func (b *Broker) Ready(context.Context) error {
	if !b.listening.Load() {
		return errors.New("not listening for device revocations in PostgreSQL")
	}
	return nil
}

// end disconnects a device's connection for good: DISCONNECT with code to an
// MQTT v5 client (3.1.1 has no DISCONNECT from the server; the connection
// just closes), and the will goes out.
func (b *Broker) end(cl *mqtt.Client, code packets.Code) {
	reason := reasonRevoked
	switch code {
	case codeTokenExpired:
		reason = reasonTokenExpired
	case codeReauthFailed, codeBadMethod:
		reason = reasonReauthFailed
	}
	b.disconnected.WithLabelValues(reason).Inc()
	b.log.Info("mqtt device disconnected", "device", cl.ID, "reason", reason)
	if cl.Properties.ProtocolVersion == 5 {
		_ = b.server.DisconnectClient(cl, code)
		return
	}
	cl.Stop(code)
}

// identityOf is who an accepted client is. It is derived from what the
// connection authenticated with rather than stored per client, so nothing
// outlives a connection that fails between authentication and CONNACK (mochi
// calls no hook then). The service user name is never a uuid and a device's
// client id is its uuid, so the two cannot be confused.
func (b *Broker) identityOf(cl *mqtt.Client) (mqttauth.Identity, bool) {
	if b.cfg.ServiceUsername != "" && string(cl.Properties.Username) == b.cfg.ServiceUsername {
		return mqttauth.Identity{Service: true}, true
	}
	id, err := uuid.Parse(cl.ID)
	if err != nil {
		return mqttauth.Identity{}, false
	}
	return mqttauth.Identity{DeviceID: id}, true
}

// refuse answers a refused CONNECT. Mochi can only refuse with 0x86 from
// OnConnectAuthenticate, so the hook refuses from OnConnect and writes the
// CONNACK itself; mochi then closes the connection.
func (b *Broker) refuse(cl *mqtt.Client, username, reason string, err error) packets.Code {
	b.authRefused.WithLabelValues(reason).Inc()
	subject := slog.String("username", devicetopic.Truncate(username))
	if devicetopic.IsCanonicalUUID(username) {
		subject = slog.String("device", username)
	}
	level := slog.LevelInfo
	if reason == mqttauth.ReasonUnavailable {
		level = slog.LevelWarn
	}
	b.log.Log(b.ctx, level, "mqtt connection refused", subject, "client_id", devicetopic.Truncate(cl.ID),
		"remote", cl.Net.Remote, "reason", reason, "error", err)

	// The v3.1.1 codes are the spec's equivalents; mochi's own table maps
	// 0x86 to 0x05 Not authorized, which would hide the difference.
	v5, v3 := packets.ErrServerUnavailable, packets.Err3ServerUnavailable
	switch {
	case errors.Is(err, mqttauth.ErrBadCredentials):
		v5, v3 = packets.ErrBadUsernameOrPassword, packets.ErrMalformedUsernameOrPassword
	case errors.Is(err, mqttauth.ErrNotAuthorized):
		v5, v3 = packets.ErrNotAuthorized, packets.Err3NotAuthorized
	case errors.Is(err, mqttauth.ErrBadAuthMethod):
		v5, v3 = packets.ErrBadAuthenticationMethod, packets.Err3NotAuthorized
	}
	ack := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connack}, ReasonCode: v3.Code}
	if cl.Properties.ProtocolVersion == 5 {
		ack.ReasonCode = v5.Code
		ack.Properties.ReasonString = v5.Reason
	}
	if werr := cl.WritePacket(ack); werr != nil {
		b.log.Debug("mqtt: write refusing CONNACK", "remote", cl.Net.Remote, "error", werr)
	}
	return v5
}

// hook carries the broker's rules into mochi.
type hook struct {
	mqtt.HookBase
	b *Broker
}

func (h *hook) ID() string { return "flock" }

func (h *hook) Provides(b byte) bool {
	switch b {
	case mqtt.OnConnect, mqtt.OnConnectAuthenticate, mqtt.OnACLCheck,
		mqtt.OnPublish, mqtt.OnDisconnect, mqtt.OnPacketEncode, mqtt.OnAuthPacket,
		mqtt.OnPublishDropped, mqtt.OnPacketIDExhausted, mqtt.OnQosDropped:
		return true
	}
	return false
}

// OnConnect authenticates. A non-nil error makes mochi end the connection
// without a CONNACK of its own.
func (h *hook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	ctx, cancel := context.WithTimeout(h.b.ctx, authTimeout)
	defer cancel()
	username := string(pk.Connect.Username)
	id, err := h.b.auth.Authenticate(ctx, pk.Connect.ClientIdentifier, username, pk.Connect.Password)
	reason := mqttauth.ReasonOf(err)
	if err == nil && pk.Connect.WillFlag && !mqttauth.CanWill(id, pk.Connect.WillTopic) {
		reason = mqttauth.ReasonWill
		err = fmt.Errorf("%w: will on topic %q", mqttauth.ErrNotAuthorized, devicetopic.Truncate(pk.Connect.WillTopic))
	}
	if m := pk.Properties.AuthenticationMethod; err == nil && m != "" && (m != devicetopic.ReauthMethod || id.Service) {
		reason = mqttauth.ReasonAuthMethod
		err = fmt.Errorf("%w: %q", mqttauth.ErrBadAuthMethod, devicetopic.Truncate(m))
	}
	if err != nil {
		return h.b.refuse(cl, username, reason, err)
	}
	if !id.Service {
		// Retained messages live in broker memory until they expire, and the
		// ingester's shared subscriptions never receive them, so a device
		// could only use them to grow the heap.
		cl.Properties.Will.Retain = false
		if !h.b.sessions.add(id.DeviceID, cl, id.Expiry) {
			return h.b.refuse(cl, username, reasonRevoked, fmt.Errorf("%w: device %s was deleted", mqttauth.ErrNotAuthorized, id.DeviceID))
		}
	}
	return nil
}

// OnAuthPacket renews a device's token on its open connection (MQTT v5
// re-authentication, §4.12.1): an AUTH with reason 0x19, method
// devicetopic.ReauthMethod (which CONNECT must have named) and the new
// token as data.
// A renewal that verifies answers AUTH 0x00 and moves the connection's end
// to the new token's expiry; anything else ends the connection (mochi sends
// the DISCONNECT with the returned code).
func (h *hook) OnAuthPacket(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	id, ok := h.b.identityOf(cl)
	if !ok || id.Service || pk.ReasonCode != packets.CodeReAuthenticate.Code ||
		pk.Properties.AuthenticationMethod != devicetopic.ReauthMethod || cl.Properties.Props.AuthenticationMethod != devicetopic.ReauthMethod {
		h.b.disconnected.WithLabelValues(reasonReauthFailed).Inc()
		return pk, codeBadMethod
	}
	ctx, cancel := context.WithTimeout(h.b.ctx, authTimeout)
	defer cancel()
	renewed, err := h.b.auth.Authenticate(ctx, cl.ID, cl.ID, pk.Properties.AuthenticationData)
	if err != nil || !h.b.sessions.renew(id.DeviceID, cl, renewed.Expiry) {
		h.b.disconnected.WithLabelValues(reasonReauthFailed).Inc()
		h.b.log.Info("mqtt re-authentication refused", "device", cl.ID, "error", err)
		return pk, codeReauthFailed
	}
	ack := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Auth}, ReasonCode: packets.CodeSuccess.Code,
		Properties: packets.Properties{AuthenticationMethod: devicetopic.ReauthMethod}}
	if err := cl.WritePacket(ack); err != nil {
		return pk, err
	}
	h.b.log.Debug("mqtt device renewed its token", "device", cl.ID, "expires", renewed.Expiry)
	return pk, nil
}

// OnConnectAuthenticate accepts: OnConnect has already refused every
// connection that should not get here.
func (h *hook) OnConnectAuthenticate(*mqtt.Client, packets.Packet) bool { return true }

// OnACLCheck is asked with write for every publish, and without it both for
// subscription filters and for each message about to be delivered.
func (h *hook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	id, ok := h.b.identityOf(cl)
	if !ok {
		return false
	}
	if !write {
		return mqttauth.CanReceive(id, topic) || mqttauth.CanSubscribe(id, topic)
	}
	if mqttauth.CanPublish(id, topic) {
		return true
	}
	h.b.publishRefusedACL.Inc()
	h.b.log.Debug("mqtt publish refused", who(id, cl), "topic", devicetopic.Truncate(topic))
	return false
}

// OnPublish applies the device's rate limit. Mochi turns an error code
// returned here into a negative PUBACK only for MQTT v5 at QoS 1 and lets the
// message through otherwise, and logs it as an error; so the hook answers
// itself and returns ErrRejectPacket, which drops the message quietly.
func (h *hook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	id, ok := h.b.identityOf(cl)
	if !ok || id.Service {
		return pk, nil
	}
	pk.FixedHeader.Retain = false // see OnConnect
	if !h.b.limits.allow(id.DeviceID, cl) {
		h.b.publishRefusedRate.Inc()
		h.nack(cl, id, pk, packets.ErrQuotaExceeded)
		return pk, packets.ErrRejectPacket
	}
	// The ACL check passed, so the topic is one of the device's channels.
	_, kind, _ := devicetopic.Parse(pk.TopicName)
	if _, err := h.b.validator.Decode(kind, pk.Payload); err != nil {
		h.b.publishRefusedPayload.Inc()
		h.b.log.Debug("mqtt publish refused: invalid payload", who(id, cl), "kind", kind, "error", err)
		h.nack(cl, id, pk, packets.Code{Code: packets.ErrPayloadFormatInvalid.Code, Reason: reasonString(err.Error())})
		return pk, packets.ErrRejectPacket
	}
	return pk, nil
}

// nack refuses a QoS 1/2 publish with code; a QoS 0 one is dropped without
// a word. MQTT 3.1.1 has no negative acknowledgement: the PUBACK (or PUBREC)
// encodes without the reason code, so a v3 device sees its message
// accepted. Leaving it unacknowledged instead would stall a client whose
// inflight window fills.
func (h *hook) nack(cl *mqtt.Client, id mqttauth.Identity, pk packets.Packet, code packets.Code) {
	if pk.FixedHeader.Qos == 0 {
		return
	}
	ack := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Puback},
		PacketID:    pk.PacketID,
		ReasonCode:  code.Code,
		Properties:  packets.Properties{ReasonString: code.Reason},
	}
	if pk.FixedHeader.Qos == 2 {
		ack.FixedHeader.Type = packets.Pubrec
	}
	if err := cl.WritePacket(ack); err != nil {
		h.b.log.Debug("mqtt: write negative ack", who(id, cl), "reason_code", code.Code, "error", err)
	}
}

// reasonString bounds a reason string: it tells the device what was wrong,
// and must fit comfortably in its receive limit.
func reasonString(s string) string {
	const max = 512
	if len(s) <= max {
		return s
	}
	return s[:max] + "…"
}

// who names the client in logs: a device by its uuid, the service by its
// client id.
func who(id mqttauth.Identity, cl *mqtt.Client) slog.Attr {
	if id.Service {
		return slog.String("service_client_id", cl.ID)
	}
	return slog.String("device", id.DeviceID.String())
}

func (h *hook) OnDisconnect(cl *mqtt.Client, _ error, _ bool) {
	if id, ok := h.b.identityOf(cl); ok && !id.Service {
		h.b.limits.release(id.DeviceID, cl)
		h.b.sessions.remove(id.DeviceID, cl)
	}
}

// OnPacketEncode announces the packet size limit in a successful CONNACK,
// which mochi leaves out, so v5 clients refuse oversized messages themselves
// instead of losing the connection.
// OnPublishDropped counts a message mochi could not queue for a client:
// its outbound queue (clientWritesPending) was full, or, at QoS 1/2, its
// inflight store held mochi's MaximumInflight messages.
func (h *hook) OnPublishDropped(cl *mqtt.Client, pk packets.Packet) {
	h.b.droppedQueueFull.Inc()
	h.b.log.Debug("mqtt message dropped: client's queue is full", "client_id", cl.ID, "topic", devicetopic.Truncate(pk.TopicName))
}

// OnPacketIDExhausted counts a message mochi could not number for a client.
func (h *hook) OnPacketIDExhausted(cl *mqtt.Client, pk packets.Packet) {
	h.b.droppedPacketIDs.Inc()
	h.b.log.Debug("mqtt message dropped: client's packet identifiers are exhausted", "client_id", cl.ID, "topic", devicetopic.Truncate(pk.TopicName))
}

// OnQosDropped counts an unacknowledged QoS 1/2 message mochi removed.
func (h *hook) OnQosDropped(*mqtt.Client, packets.Packet) {
	h.b.droppedUndelivered.Inc()
}

func (h *hook) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if pk.FixedHeader.Type == packets.Connack && pk.ReasonCode < packets.ErrUnspecifiedError.Code {
		pk.Properties.MaximumPacketSize = h.b.cfg.MaxPacketSize
		// A CONNACK accepting a CONNECT that named an authentication method
		// names the same method (MQTT 5.0 §3.2.2.3.17).
		pk.Properties.AuthenticationMethod = cl.Properties.Props.AuthenticationMethod
	}
	return pk
}

// listener is a TCP listener for mochi. Mochi's own shares one error variable
// between its accept loop and connection goroutines (a data race), leaves a
// connection without a deadline until CONNECT arrives, and does not close
// connections that have not finished connecting when it stops.
type listener struct {
	ln  net.Listener
	log *slog.Logger

	mu     sync.Mutex
	closed bool
	done   chan struct{} // closed by Close
	conns  map[net.Conn]struct{}
	// wg counts the accept loop and connection goroutines; Close waits for
	// them, which makes Close (and so Run) their owner.
	wg sync.WaitGroup
}

var _ listeners.Listener = (*listener)(nil)

func listen(addr string, log *slog.Logger) (*listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("broker: listen on %s: %w", addr, err)
	}
	return &listener{ln: ln, log: log, done: make(chan struct{}), conns: make(map[net.Conn]struct{})}, nil
}

func (l *listener) ID() string       { return "tcp" }
func (l *listener) Address() string  { return l.ln.Addr().String() }
func (l *listener) Protocol() string { return "tcp" }

// Init does nothing: the socket is bound in listen, so New reports a taken
// port.
func (l *listener) Init(*slog.Logger) error { return nil }

// Serve accepts until Close. Mochi runs it on a goroutine of its own.
func (l *listener) Serve(establish listeners.EstablishFn) {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	l.wg.Add(1)
	l.mu.Unlock()
	defer l.wg.Done()

	var backoff time.Duration
	for {
		conn, err := l.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like pass; retry as net/http
			// does rather than stop serving.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			l.log.Warn("mqtt accept failed; retrying", "addr", l.Address(), "error", err, "retry_in", backoff)
			select {
			case <-l.done:
				return
			case <-time.After(backoff):
			}
			continue
		}
		backoff = 0
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			_ = conn.Close()
			return
		}
		l.conns[conn] = struct{}{}
		l.wg.Add(1)
		l.mu.Unlock()

		go func() {
			defer l.wg.Done()
			defer func() {
				l.mu.Lock()
				delete(l.conns, conn)
				l.mu.Unlock()
			}()
			// Mochi replaces this with the client's keepalive once CONNECT
			// has been read and authenticated.
			_ = conn.SetDeadline(time.Now().Add(connectTimeout))
			if err := establish("tcp", conn); err != nil {
				l.log.Debug("mqtt connection ended", "remote", conn.RemoteAddr().String(), "error", err)
			}
		}()
	}
}

// Close stops accepting, lets mochi disconnect its clients, closes whatever
// connections are left (those still connecting) and waits for every
// goroutine Serve started.
func (l *listener) Close(closeClients listeners.CloseFn) {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		l.wg.Wait()
		return
	}
	l.closed = true
	close(l.done)
	l.mu.Unlock()

	_ = l.ln.Close()
	closeClients(l.ID())

	l.mu.Lock()
	for c := range l.conns {
		_ = c.Close()
	}
	l.mu.Unlock()
	l.wg.Wait()
}

// mochiHandler passes mochi's logs to ours one level lower, since mochi logs
// routine events (hooks added, client protocol errors) at Info and Warn, and
// without the packets and wills it attaches, which carry device payloads.
type mochiHandler struct{ h slog.Handler }

var droppedMochiAttrs = map[string]bool{"pk": true, "packet": true, "will": true}

func demote(l slog.Level) slog.Level { return l - 4 }

func (m *mochiHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return m.h.Enabled(ctx, demote(l))
}

func (m *mochiHandler) Handle(ctx context.Context, r slog.Record) error {
	out := slog.NewRecord(r.Time, demote(r.Level), r.Message, r.PC)
	r.Attrs(func(a slog.Attr) bool {
		if !droppedMochiAttrs[a.Key] {
			out.AddAttrs(a)
		}
		return true
	})
	return m.h.Handle(ctx, out)
}

func (m *mochiHandler) WithAttrs(as []slog.Attr) slog.Handler {
	kept := make([]slog.Attr, 0, len(as))
	for _, a := range as {
		if !droppedMochiAttrs[a.Key] {
			kept = append(kept, a)
		}
	}
	return &mochiHandler{h: m.h.WithAttrs(kept)}
}

func (m *mochiHandler) WithGroup(name string) slog.Handler {
	return &mochiHandler{h: m.h.WithGroup(name)}
}

// Authenticate decides whether a client may connect, as the embedded broker
// does for every CONNECT (see mqttauth.Authenticator.Authenticate).
func (b *Broker) Authenticate(ctx context.Context, clientID, username string, password []byte) (mqttauth.Identity, error) {
	return b.auth.Authenticate(ctx, clientID, username, password)
}
