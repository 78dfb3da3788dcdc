package simulate

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"
	"github.com/google/uuid"

	"github.com/flock-io/flock-api/gen/client"
	"github.com/flock-io/flock-api/gen/events"
	"github.com/flock-io/flock-api/internal/devicetoken"
	"github.com/flock-io/flock-api/internal/devicetopic"
)

const (
	// assertionTTL is how long a signed assertion is valid; the server
	// accepts at most 5 minutes.
	assertionTTL = time.Minute
	// keepAlive is the MQTT keepalive in seconds.
	keepAlive = 60
	// receiveMaximum bounds the QoS 1 messages the broker sends a device
	// unacknowledged; paho sizes its inbound queue by it (65535 by default,
	// too much memory for a thousand devices that get a rare nudge).
	receiveMaximum = 16
	// commandQueue bounds the commands waiting for the loop.
	commandQueue = 16
	// registerAttempts is how often a registration failing for a transient
	// reason (network, 5xx, 429) is tried.
	registerAttempts = 3
)

// device is one simulated device. The fields below the line are owned by
// its loop goroutine; the rest are set before the connection starts or are
// safe for concurrent use.
type device struct {
	s    *simulation
	id   uuid.UUID
	name string
	priv ed25519.PrivateKey
	log  *slog.Logger

	tokenEndpoint string
	broker        *url.URL

	tokMu     sync.Mutex
	token     string
	refreshAt time.Time

	// noReauth is set once a broker refused the re-authentication method
	// (an external broker that does not know it): the device then connects
	// without it and reconnects when its token expires.
	noReauth atomic.Bool

	// connSeq is the connection_seq of the last CONNECT built, which is the
	// current connection's once it is up.
	connSeq      atomic.Int64
	online       atomic.Bool
	everUp       atomic.Bool
	firstAttempt chan struct{} // closed when the first connection attempt ends
	firstOnce    sync.Once

	connected chan struct{} // a connection came up and announced itself
	nudged    chan struct{} // a target nudge arrived
	commands  chan command  // commands that arrived, for the loop

	// Owned by the loop.
	payloads  *Payloads // also holds what the device runs, as its states report it
	rng       *mrand.Rand
	etag      string
	update    *update           // the update in progress, nil when none
	stepTimer *time.Timer       // fires when the update's next step is due
	resync    bool              // a nudge or reconnect came mid-update: look at the target once it ends
	attempts  int               // updates begun, which make their events' ids unique
	answered  map[string][]byte // command id -> the outcome sent, for repeats
	rebooting string            // the reboot command under way, "" when none

	// images holds the images and layers the device fetched (nil without
	// Config.PullImages); an update's fetch, on a goroutine of fetches,
	// uses it while the loop goes on.
	images  *imageStore
	fetches sync.WaitGroup
}

// runDevice runs the device with index i until ctx ends. It returns an
// error only for what makes the whole run pointless (a refused registration,
// no broker); everything else is counted and retried.
func runDevice(ctx context.Context, s *simulation, i int) error {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return fmt.Errorf("simulate: generate device key: %w", err)
	}
	d := &device{
		s: s, id: uuid.New(), name: fmt.Sprintf("%s-%05d", s.cfg.Name, i+1), priv: priv,
		firstAttempt: make(chan struct{}),
		connected:    make(chan struct{}, 1),
		nudged:       make(chan struct{}, 1),
		commands:     make(chan command, commandQueue),
		answered:     map[string][]byte{},
	}
	d.log = s.log.With("device", d.id.String(), "name", d.name)
	seed := mrand.Uint64()
	d.payloads = NewPayloads(d.id, seed)
	d.rng = mrand.New(mrand.NewPCG(seed, ^seed))
	d.stepTimer = time.NewTimer(0)
	d.stepTimer.Stop()
	defer d.stepTimer.Stop()
	if s.cfg.PullImages {
		if d.images, err = newImageStore(s.cfg.LayerDir, d.id); err != nil {
			return fmt.Errorf("simulate: %s: %w", d.name, err)
		}
		defer func() {
			d.fetches.Wait() // ctx has ended: the fetch under way stops
			if err := d.images.layers.close(); err != nil {
				d.s.warn("layer-dir", "removing a device's layers failed", "device", d.id.String(), "error", err)
			}
		}()
	}

	// Registration, the first token and the first connection take a slot.
	select {
	case s.sem <- struct{}{}:
	case <-ctx.Done():
		return nil
	}
	slot := true
	release := func() {
		if slot {
			<-s.sem
			slot = false
		}
	}
	defer release()

	if err := d.register(ctx, pub); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("simulate: register %s (%s): %w", d.name, d.id, err)
	}
	if _, err := d.currentToken(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("simulate: token for %s (%s): %w", d.name, d.id, err)
	}

	if s.cfg.Tunnel {
		var tunnels sync.WaitGroup
		defer tunnels.Wait()
		tctx, stopTunnel := context.WithCancel(ctx)
		defer stopTunnel()
		tunnels.Go(func() { d.runTunnel(tctx) })
	}

	// The connection outlives ctx by the offline status of a clean stop;
	// stop cancels it.
	mqttCtx, stopMQTT := context.WithCancel(context.WithoutCancel(ctx))
	defer stopMQTT()
	cm, err := autopaho.NewConnection(mqttCtx, d.mqttConfig(ctx, mqttCtx))
	if err != nil {
		return fmt.Errorf("simulate: MQTT connection of %s: %w", d.name, err)
	}
	// A reboot replaces the connection; stop the one current at the end.
	conn := &mqttConn{cm: cm, stop: stopMQTT}
	defer func() { d.stop(conn.cm, conn.stop) }()

	wait := time.NewTimer(firstConnectWait)
	select {
	case <-d.firstAttempt:
	case <-wait.C:
	case <-ctx.Done():
	}
	wait.Stop()
	release()
	d.loop(ctx, conn)
	return nil
}

// register registers the device, retrying transient failures; a retry of
// the same registration is answered 200 with the same device.
func (d *device) register(ctx context.Context, pub ed25519.PublicKey) error {
	body := client.DeviceRegister{
		ProvisioningKey: d.s.cfg.ProvisioningKey,
		Uuid:            d.id,
		PublicKey:       base64.RawURLEncoding.EncodeToString(pub),
		Name:            d.name,
		DeviceType:      "simulated",
	}
	if a := d.s.cfg.Architecture; a != "" {
		body.Architecture = ptr(client.Architecture(a))
	}
	var err error
	for attempt := range registerAttempts {
		if attempt > 0 {
			select {
			case <-time.After(time.Duration(attempt) * 500 * time.Millisecond):
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		var resp *client.DeviceRegisterResponse
		resp, err = d.s.api.DeviceRegisterWithResponse(ctx, body)
		if err != nil {
			err = fmt.Errorf("POST /device/v1/register: %w", err)
			continue
		}
		reg := resp.JSON201
		if reg == nil {
			reg = resp.JSON200
		}
		if reg != nil {
			return d.registered(reg)
		}
		err = apiError("POST /device/v1/register", resp.StatusCode(), resp.ApplicationproblemJSONDefault, resp.Body)
		if code := resp.StatusCode(); code < 500 && code != http.StatusTooManyRequests {
			return err
		}
	}
	return err
}

func (d *device) registered(reg *client.DeviceRegistration) error {
	if reg.TokenEndpoint == "" {
		return errors.New("the registration names no token_endpoint")
	}
	d.tokenEndpoint = reg.TokenEndpoint
	switch {
	case d.s.mqttURL != nil:
		d.broker = d.s.mqttURL
	case reg.MqttUrl != nil && *reg.MqttUrl != "":
		u, err := parseMQTTURL(*reg.MqttUrl)
		if err != nil {
			return fmt.Errorf("the registration's mqtt_url: %w", err)
		}
		d.broker = u
	default:
		return errors.New("the registration has no mqtt_url (this deployment tells devices of no MQTT broker) and no MQTT URL was given (--mqtt)")
	}
	d.s.stats.registered.Add(1)
	return nil
}

// currentToken returns a device token with at least a quarter of its life
// left, trading a new assertion for one when needed. The request goes to
// the API URL the simulation was given; the assertion names the
// registration's token_endpoint as its audience, as the server requires.
// (The two are the same URL unless the deployment's public URL is not
// reachable from here, as with a dev server.)
func (d *device) currentToken(ctx context.Context) (string, error) {
	d.tokMu.Lock()
	defer d.tokMu.Unlock()
	if d.token != "" && time.Now().Before(d.refreshAt) {
		return d.token, nil
	}
	assertion, err := devicetoken.SignAssertion(d.priv, d.id, d.tokenEndpoint, assertionTTL)
	if err != nil {
		return "", err
	}
	resp, err := d.s.api.DeviceTokenWithResponse(ctx, client.DeviceTokenRequest{Assertion: assertion})
	if err != nil {
		return "", fmt.Errorf("POST /device/v1/token: %w", err)
	}
	if resp.JSON200 == nil {
		return "", apiError("POST /device/v1/token", resp.StatusCode(), resp.ApplicationproblemJSONDefault, resp.Body)
	}
	now := time.Now()
	d.token = resp.JSON200.AccessToken
	d.refreshAt = now.Add(resp.JSON200.ExpiresAt.Sub(now) * 3 / 4)
	if r := d.s.cfg.TokenRefresh; r > 0 {
		d.refreshAt = now.Add(r)
	}
	d.s.stats.tokens.Add(1)
	return d.token, nil
}

// untilRefresh is how long the current token stays fresh.
func (d *device) untilRefresh() time.Duration {
	d.tokMu.Lock()
	defer d.tokMu.Unlock()
	return max(time.Until(d.refreshAt), time.Second)
}

// renew gets a new token before the current one expires and, on a broker
// that takes it, hands it over on the open connection (MQTT v5
// re-authentication), so the connection outlives the old token. Without
// that the broker disconnects the device at expiry and autopaho reconnects
// with the new token.
func (d *device) renew(ctx context.Context, cm *autopaho.ConnectionManager) {
	tok, err := d.currentToken(ctx)
	if err != nil {
		if ctx.Err() == nil {
			d.s.warn("renew", "renewing the device token failed", "device", d.id.String(), "error", err)
		}
		return
	}
	if d.noReauth.Load() || !d.online.Load() {
		return
	}
	actx, cancel := context.WithTimeout(ctx, publishTimeout)
	defer cancel()
	ar, err := cm.Authenticate(actx, &paho.Auth{ReasonCode: reauthenticate,
		Properties: &paho.AuthProperties{AuthMethod: devicetopic.ReauthMethod, AuthData: []byte(tok)}})
	switch {
	case err != nil:
		d.s.warn("reauth", "re-authentication failed", "device", d.id.String(), "error", err)
	case !ar.Success:
		d.s.warn(fmt.Sprintf("reauth:%d", ar.ReasonCode), "re-authentication refused", "device", d.id.String(),
			"reason_code", fmt.Sprintf("0x%02x", ar.ReasonCode))
	default:
		d.s.stats.reauths.Add(1)
		d.log.Debug("token renewed on the connection")
	}
}

// noAuthSteps is the paho AuthHandler of a connection that names
// devicetopic.ReauthMethod: the broker accepts or refuses in one step, so it never asks.
type noAuthSteps struct{}

func (noAuthSteps) Authenticate(a *paho.Auth) *paho.Auth { return a }
func (noAuthSteps) Authenticated()                       {}

// dropToken forgets the token, so the next use gets a new one.
func (d *device) dropToken() {
	d.tokMu.Lock()
	d.token = ""
	d.tokMu.Unlock()
}

func (d *device) mqttConfig(ctx, mqttCtx context.Context) autopaho.ClientConfig {
	id := d.id.String()
	return autopaho.ClientConfig{
		ServerUrls:                    []*url.URL{d.broker},
		KeepAlive:                     keepAlive,
		CleanStartOnInitialConnection: true,
		ReconnectBackoff:              autopaho.NewExponentialBackoff(500*time.Millisecond, 30*time.Second, 2*time.Second, 2),
		ConnectTimeout:                10 * time.Second,
		ConnectPacketBuilder: func(cp *paho.Connect, _ *url.URL) (*paho.Connect, error) {
			return d.buildConnect(ctx, cp)
		},
		OnConnectionUp: func(cm *autopaho.ConnectionManager, _ *paho.Connack) {
			d.connectionUp(mqttCtx, cm)
		},
		OnConnectionDown: func() bool {
			if d.online.Swap(false) {
				d.s.stats.online.Add(-1)
			}
			d.log.Debug("mqtt connection lost; reconnecting")
			return true
		},
		OnConnectError: d.connectError,
		// See stop.
		DisconnectPacketBuilder: func() *paho.Disconnect { return &paho.Disconnect{ReasonCode: disconnectWithWill} },
		ClientConfig: paho.ClientConfig{
			ClientID: id,
			// paho needs one when CONNECT names an authentication method;
			// the broker never asks it anything.
			AuthHandler:       noAuthSteps{},
			OnPublishReceived: []func(paho.PublishReceived) (bool, error){d.received},
			OnServerDisconnect: func(dc *paho.Disconnect) {
				reason := ""
				if dc.Properties != nil {
					reason = dc.Properties.ReasonString
				}
				d.s.warn(fmt.Sprintf("disconnect:%d", dc.ReasonCode), "mqtt broker disconnected device",
					"device", id, "reason_code", fmt.Sprintf("0x%02x", dc.ReasonCode), "reason", reasonText(dc.ReasonCode, reason))
			},
			OnClientError: func(err error) {
				d.log.Debug("mqtt client error", "error", err)
			},
		},
	}
}

// buildConnect makes each CONNECT with a valid token and a will carrying the
// new connection's seq.
func (d *device) buildConnect(ctx context.Context, cp *paho.Connect) (*paho.Connect, error) {
	tok, err := d.currentToken(ctx)
	if err != nil {
		return nil, fmt.Errorf("device token: %w", err)
	}
	seq := time.Now().UnixMilli()
	if last := d.connSeq.Load(); seq <= last {
		seq = last + 1
	}
	d.connSeq.Store(seq)
	id := d.id.String()
	cp.ClientID = id
	cp.Username, cp.UsernameFlag = id, true
	cp.Password, cp.PasswordFlag = []byte(tok), true
	if cp.Properties == nil {
		cp.Properties = &paho.ConnectProperties{}
	}
	cp.Properties.AuthMethod = ""
	if !d.noReauth.Load() {
		cp.Properties.AuthMethod = devicetopic.ReauthMethod
	}
	cp.WillMessage = &paho.WillMessage{Topic: devicetopic.Topic(d.id, devicetopic.Status), QoS: 1, Payload: Status(false, seq)}
	cp.WillProperties = &paho.WillProperties{}
	rm := uint16(receiveMaximum)
	cp.Properties.ReceiveMaximum = &rm
	return cp, nil
}

// connectionUp announces the connection and subscribes, on autopaho's
// goroutine before it serves anything else, then lets the loop fetch the
// target state.
func (d *device) connectionUp(mqttCtx context.Context, cm *autopaho.ConnectionManager) {
	d.firstOnce.Do(func() { close(d.firstAttempt) })
	if d.everUp.Swap(true) {
		d.s.stats.reconnects.Add(1)
	} else {
		d.s.stats.connected.Add(1)
	}
	ctx, cancel := context.WithTimeout(mqttCtx, publishTimeout)
	defer cancel()
	seq := d.connSeq.Load()
	// Subscribed before announcing itself: Flock sends the device's open
	// commands again when it sees it online.
	sub, err := cm.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{
		{Topic: devicetopic.Topic(d.id, "target"), QoS: 1},
		{Topic: devicetopic.Topic(d.id, "commands"), QoS: 1},
	}})
	if err != nil {
		d.s.warn("subscribe", "mqtt subscribe failed", "device", d.id.String(), "error", err)
	} else {
		for i, code := range sub.Reasons {
			if code >= 0x80 {
				d.s.warn(fmt.Sprintf("suback:%d", code), "mqtt subscription refused", "device", d.id.String(),
					"filter", []string{"target", "commands"}[min(i, 1)], "reason_code", fmt.Sprintf("0x%02x", code))
			}
		}
	}
	d.publish(ctx, cm, devicetopic.Status, Status(true, seq))
	if !d.online.Swap(true) {
		d.s.stats.online.Add(1)
	}
	d.log.Debug("mqtt connected", "connection_seq", seq)
	signal(d.connected)
}

// connectError counts a failed connection attempt. A refusal says why in its
// CONNACK; autopaho retries either way, after a growing delay.
func (d *device) connectError(err error) {
	d.firstOnce.Do(func() { close(d.firstAttempt) })
	var ce *autopaho.ConnackError
	if errors.As(err, &ce) {
		d.s.stats.connectRefused.Add(1)
		switch ce.ReasonCode {
		case 0x86, 0x87: // bad credentials, not authorized: try a new token
			d.dropToken()
		case 0x8c: // bad authentication method: a broker without re-authentication
			d.noReauth.Store(true)
		}
		d.s.warn(fmt.Sprintf("connack:%d", ce.ReasonCode), "mqtt connection refused; retrying",
			"device", d.id.String(), "reason_code", fmt.Sprintf("0x%02x", ce.ReasonCode), "reason", reasonText(ce.ReasonCode, ce.Reason))
		return
	}
	d.s.stats.connectErrors.Add(1)
	key := "connect"
	if strings.Contains(err.Error(), "device token") {
		key = "connect-token"
	}
	d.s.warn(key, "mqtt connection failed; retrying", "device", d.id.String(), "error", err)
}

// received handles messages from the cloud on paho's goroutine, so it only
// counts and signals.
func (d *device) received(pr paho.PublishReceived) (bool, error) {
	topic := pr.Packet.Topic
	switch {
	case strings.HasSuffix(topic, "/target"):
		var n events.TargetNudge
		if err := json.Unmarshal(pr.Packet.Payload, &n); err != nil || n.Version == "" {
			d.s.warn("bad-nudge", "ignoring a target nudge without a version", "device", d.id.String(), "payload", string(pr.Packet.Payload))
			return true, nil
		}
		d.s.stats.nudges.Add(1)
		d.log.Debug("target nudge", "version", n.Version)
		signal(d.nudged)
	case strings.HasSuffix(topic, "/commands"):
		d.s.stats.commands.Add(1)
		d.log.Debug("command received", "payload", string(pr.Packet.Payload))
		d.commandArrived(pr.Packet.Payload)
	}
	return true, nil
}

// signal wakes the loop; a wake-up already pending covers this one.
func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// loop publishes the device's share of the traffic and follows its target
// until ctx ends.
func (d *device) loop(ctx context.Context, conn *mqttConn) {
	var tick <-chan time.Time // nil, so never ready, without a rate
	var t *time.Timer
	if d.s.interval > 0 {
		t = time.NewTimer(time.Duration(d.rng.Float64() * float64(d.s.interval)))
		defer t.Stop()
		tick = t.C
	}
	renew := time.NewTimer(d.untilRefresh())
	defer renew.Stop()
	for {
		cm := conn.cm                // a reboot replaces it
		var stepDue <-chan time.Time // nil, so never ready, without an update
		var fetched <-chan error     // nil unless the update's images are being fetched
		if u := d.update; u != nil {
			if !u.awaitsImages() {
				stepDue = d.stepTimer.C
			}
			if u.fetch != nil && !u.fetched {
				fetched = u.fetch
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-renew.C:
			d.renew(ctx, cm)
			renew.Reset(d.untilRefresh())
		case <-d.connected:
			d.rebooted(ctx, conn)
			d.syncTarget(ctx, cm, true)
		case c := <-d.commands:
			d.command(ctx, conn, c)
		case <-d.nudged:
			d.syncTarget(ctx, cm, false)
		case <-stepDue:
			d.advance(ctx, cm)
		case err := <-fetched:
			d.imagesFetched(ctx, d.update, err)
		case <-tick:
			if d.online.Load() {
				kind, payload := d.payloads.Next()
				d.publish(ctx, cm, kind, payload)
			}
			// Jitter of ±20% keeps the devices from falling into step.
			t.Reset(time.Duration((0.8 + 0.4*d.rng.Float64()) * float64(d.s.interval)))
		}
	}
}

// syncTarget fetches the target state and, when it names a release the
// device does not run, starts updating to it (see plan). After a connect
// the device reports its state in any case. An update under way is
// finished first and the target looked at again after; one that has changed
// nothing yet (waiting on its lock) gives way at once, and is dropped when
// the target is the running release again.
func (d *device) syncTarget(ctx context.Context, cm *autopaho.ConnectionManager, connected bool) {
	if d.update != nil && !d.update.untouched() {
		d.resync = true
		if connected {
			d.publish(ctx, cm, devicetopic.State, d.payloads.State())
		}
		return
	}
	ts, err := d.fetchTarget(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return
		}
		d.s.stats.targetErrors.Add(1)
		d.s.warn("target", "fetching the target state failed", "device", d.id.String(), "error", err)
	}
	switch {
	case ts == nil || ts.Release == nil:
		// Unchanged, or no release to run yet: the device runs what it runs.
	case d.update != nil && ts.Release.Id == d.update.release:
		// Already on its way there.
	case d.update != nil && ts.Release.Id == d.update.from.release:
		d.dropUpdate(ctx, cm)
		return
	case d.update != nil:
		d.startUpdate(ts, d.update)
		return // its first step reports the state
	case ts.Release.Id != d.payloads.running:
		d.startUpdate(ts, nil)
		return
	}
	if connected {
		d.publish(ctx, cm, devicetopic.State, d.payloads.State())
	}
}

// fetchTarget GETs the target state with the last ETag; nil without error
// means it did not change (304).
func (d *device) fetchTarget(ctx context.Context) (*client.TargetState, error) {
	for attempt := 0; ; attempt++ {
		tok, err := d.currentToken(ctx)
		if err != nil {
			return nil, err
		}
		var params client.DeviceStateGetParams
		if d.etag != "" {
			params.IfNoneMatch = &d.etag
		}
		resp, err := d.s.api.DeviceStateGetWithResponse(ctx, &params, func(_ context.Context, r *http.Request) error {
			r.Header.Set("Authorization", "Bearer "+tok)
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("GET /device/v1/state: %w", err)
		}
		switch code := resp.StatusCode(); {
		case code == http.StatusOK && resp.JSON200 != nil:
			d.etag = resp.HTTPResponse.Header.Get("ETag")
			d.s.stats.targetsFetched.Add(1)
			return resp.JSON200, nil
		case code == http.StatusNotModified:
			d.s.stats.targetsUnchanged.Add(1)
			return nil, nil
		case code == http.StatusUnauthorized && attempt == 0:
			d.dropToken() // expired early or keys changed: once more with a new token
		default:
			return nil, apiError("GET /device/v1/state", code, resp.ApplicationproblemJSONDefault, resp.Body)
		}
	}
}

// publish sends one message at QoS 1 and counts the outcome. A state or
// update event the broker refuses for the device's quota (0x97: an update's
// steps come faster than the broker's per-device rate when the step time is
// short) is sent again after a growing pause, as a real agent would, so an
// update's report arrives whole and in order; the rest is dropped.
func (d *device) publish(ctx context.Context, cm *autopaho.ConnectionManager, kind string, payload []byte) bool {
	retry := kind == devicetopic.State || kind == devicetopic.Events
	pause := quotaPause
	giveUp := time.Now().Add(publishTimeout)
	for {
		if l := d.s.limiter; l != nil {
			if err := l.Wait(ctx); err != nil {
				return false // the run is ending
			}
		}
		pctx, cancel := context.WithTimeout(ctx, publishTimeout)
		pr, err := cm.Publish(pctx, &paho.Publish{Topic: devicetopic.Topic(d.id, kind), QoS: 1, Payload: payload})
		cancel()
		switch {
		case err == nil:
			d.s.stats.published(kind).Add(1)
			return true
		case pr != nil && pr.ReasonCode >= 0x80:
			d.s.stats.publishRefused.Add(1)
			reason := ""
			if pr.Properties != nil {
				reason = pr.Properties.ReasonString
			}
			again := retry && pr.ReasonCode == quotaExceeded && time.Now().Add(pause).Before(giveUp)
			d.s.warn(fmt.Sprintf("puback:%d", pr.ReasonCode), "mqtt publish refused", "device", d.id.String(), "kind", kind,
				"reason_code", fmt.Sprintf("0x%02x", pr.ReasonCode), "reason", reasonText(pr.ReasonCode, reason), "retrying", again)
			if !again {
				return false
			}
			t := time.NewTimer(pause)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return false
			}
			pause = min(2*pause, time.Second)
			continue
		case ctx.Err() != nil:
			// The run is ending; not the broker's fault.
		default:
			d.s.stats.publishErrors.Add(1)
			d.s.warn("publish", "mqtt publish failed", "device", d.id.String(), "kind", kind, "error", err)
		}
		return false
	}
}

// quotaExceeded is the PUBACK reason code of a publish over the device's
// rate (MQTT 5.0 §3.4.2.1); quotaPause the first pause before sending again.
const (
	quotaExceeded = 0x97
	quotaPause    = 50 * time.Millisecond
)

// stop ends the connection cleanly with DISCONNECT 0x04 (Disconnect with
// Will Message): the broker publishes the will, which says offline with the
// connection's seq, so the device announces its end without a publish of
// its own that --rate would have to pace. It waits for autopaho's
// goroutines.
func (d *device) stop(cm *autopaho.ConnectionManager, stopMQTT context.CancelFunc) {
	stopMQTT()
	<-cm.Done()
	if d.online.Swap(false) {
		d.s.stats.online.Add(-1)
	}
}

// disconnectWithWill is DISCONNECT reason 0x04: end the connection and have
// the broker publish the will (MQTT 5.0 §3.14.2.1).
const disconnectWithWill = 0x04

// reauthenticate is the AUTH reason code that asks for re-authentication
// (MQTT 5.0 §3.15.2.1).
const reauthenticate = 0x19

// reasonNames are the MQTT v5 reason codes a device may be refused with.
var reasonNames = map[byte]string{
	0x80: "unspecified error", 0x81: "malformed packet", 0x82: "protocol error", 0x83: "implementation specific error",
	0x84: "unsupported protocol version", 0x85: "client identifier not valid", 0x86: "bad user name or password",
	0x87: "not authorized", 0x88: "server unavailable", 0x89: "server busy", 0x8a: "banned",
	0x8b: "server shutting down", 0x8c: "bad authentication method", 0x8d: "keep alive timeout",
	0x8e: "session taken over", 0x90: "topic name invalid", 0x93: "receive maximum exceeded", 0x95: "packet too large",
	0x97: "quota exceeded", 0x99: "payload format invalid", 0x9a: "retain not supported", 0x9b: "QoS not supported",
	0x9c: "use another server", 0x9d: "server moved", 0x9f: "connection rate exceeded",
}

// reasonText is the reason string the broker sent, or else the name of its
// reason code.
func reasonText(code byte, sent string) string {
	if sent != "" {
		return sent
	}
	if name, ok := reasonNames[code]; ok {
		return name
	}
	return "reason code " + fmt.Sprintf("0x%02x", code)
}

// apiError is one line saying what the API refused and why.
func apiError(op string, status int, p *client.Problem, body []byte) error {
	if p != nil && p.Code != "" {
		detail := p.Title
		if p.Detail != nil && *p.Detail != "" {
			detail = *p.Detail
		}
		return fmt.Errorf("%s: %d %s: %s", op, status, p.Code, detail)
	}
	text := strings.TrimSpace(string(body))
	if len(text) > 200 {
		text = text[:200] + "…"
	}
	return fmt.Errorf("%s: HTTP %d: %s", op, status, text)
}
