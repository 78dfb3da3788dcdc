package app

// The device-messaging side: the embedded MQTT broker (unless an external
// one is configured), the ingester and the relay.

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net"
	"net/url"
	"os"
	"sync/atomic"

	"github.com/flock-io/flock-api/asyncapi"
	"github.com/flock-io/flock-api/internal/modules"
	"github.com/flock-io/flock-api/internal/mqtt/broker"
	"github.com/flock-io/flock-api/workers/ingester"
	"github.com/flock-io/flock-api/workers/relay"
)

// initMQTTBroker starts the embedded broker unless FLOCK_MQTT_URL names an
// external one. Either way it settles the URL and credentials the ingester
// connects with.
func (a *App) initMQTTBroker(context.Context) (*modules.Service, error) {
	a.mqttPassword = a.cfg.MQTTPassword
	if a.cfg.MQTTURL != "" {
		u, err := url.Parse(a.cfg.MQTTURL)
		if err != nil {
			return nil, fmt.Errorf("FLOCK_MQTT_URL: %w", err)
		}
		a.mqttURL = u
		a.mqttPublicURL.Store(a.cfg.MQTTPublicURL)
		a.log.Info("store engine", "concern", "device mqtt", "engine", "external broker", "mode", "external", "url", u.Redacted())
		return nil, nil
	}
	if a.mqttPassword == "" {
		// Only this process talks to its embedded broker as the service.
		var b [24]byte
		_, _ = rand.Read(b[:])
		a.mqttPassword = base64.RawURLEncoding.EncodeToString(b[:])
	}
	br, err := broker.New(broker.Config{
		Listen:            a.cfg.MQTTListen,
		ServiceUsername:   a.cfg.MQTTUsername,
		ServicePassword:   a.mqttPassword,
		MessagesPerSecond: a.cfg.MQTTDeviceRate,
		Devices:           a.pool,
		Burst:             int(2 * a.cfg.MQTTDeviceRate),
		Log:               a.log,
		Metrics:           a.metrics.Registry,
	}, a.tokens)
	if err != nil {
		return nil, fmt.Errorf("FLOCK_MQTT_LISTEN: %w", err)
	}
	a.broker = br
	a.ready.Add("mqtt-revocations", br.Ready)
	a.mqttURL = &url.URL{Scheme: "mqtt", Host: loopback(br.Addr())}
	public := a.cfg.MQTTPublicURL
	if public == "" {
		public = publicMQTTURL(a.cfg.PublicURL, br.Addr())
	}
	a.mqttPublicURL.Store(public)
	a.log.Info("store engine", "concern", "device mqtt", "engine", "mochi-mqtt", "mode", "embedded",
		"listen", br.Addr(), "devices_connect_to", public)
	return &modules.Service{Run: br.Run}, nil
}

// loopback turns a listener address into one this process can dial.
func loopback(addr string) string {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	return net.JoinHostPort("127.0.0.1", port)
}

// publicMQTTURL is the embedded broker as devices reach it: the public URL's
// host on the broker's port.
func publicMQTTURL(publicURL, listen string) string {
	_, port, err := net.SplitHostPort(listen)
	if err != nil {
		return ""
	}
	u, err := url.Parse(publicURL)
	if err != nil || u.Hostname() == "" {
		return ""
	}
	return "mqtt://" + net.JoinHostPort(u.Hostname(), port)
}

func (a *App) initIngester(context.Context) (*modules.Service, error) {
	v, err := asyncapi.NewValidator()
	if err != nil {
		return nil, err
	}
	ing, err := ingester.New(ingester.Config{
		Broker:      a.mqttURL,
		Username:    a.cfg.MQTTUsername,
		Password:    a.mqttPassword,
		BatchSize:   a.cfg.IngestBatchSize,
		FlushPeriod: a.cfg.IngestFlushPeriod,
		Log:         a.log,
		Metrics:     a.metrics.Registry,
	}, ingester.Deps{KV: a.kv, Telemetry: a.telemetry, Bus: a.bus, Pool: a.pool, Validator: v})
	if err != nil {
		return nil, err
	}
	a.ready.Add("ingester", ing.Ready)
	return &modules.Service{Run: ing.Run}, nil
}

// initRelay carries flock.device.commands.v1 to devices over MQTT.
func (a *App) initRelay(context.Context) (*modules.Service, error) {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "unknown"
	}
	r, err := relay.New(relay.Config{Broker: a.mqttURL, Username: a.cfg.MQTTUsername, Password: a.mqttPassword,
		ClientID: "flock-relay-" + host, Log: a.log, Metrics: a.metrics.Registry}, a.bus)
	if err != nil {
		return nil, err
	}
	return &modules.Service{Run: r.Run}, nil
}

// mqttPublic is the broker URL devices are told at registration. The API
// may be wired before the embedded broker has bound its port, so it reads
// the URL when a device registers.
type mqttPublic struct{ v atomic.Pointer[string] }

func (m *mqttPublic) Store(s string) { m.v.Store(&s) }

// Load returns the URL, or "" when none is known.
func (m *mqttPublic) Load() string {
	if p := m.v.Load(); p != nil {
		return *p
	}
	return ""
}
