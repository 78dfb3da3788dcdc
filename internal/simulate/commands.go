package simulate

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/eclipse/paho.golang/autopaho"

	"github.com/flock-io/flock-api/gen/events"
	"github.com/flock-io/flock-api/internal/devicetopic"
)

// AgentVersion is the agent version the simulated devices report: one that
// takes every command type (asyncapi/flock.yaml, CommandType).
const AgentVersion = "1.1.0"

// The answers of asyncapi/flock.yaml's CommandResult.
const (
	resultReceived  = "received"
	resultSucceeded = "succeeded"
	resultFailed    = "failed"
)

// command is a commands message as the device reads it: plain strings, so
// a type this agent does not know is seen as such (the generated enum
// would read it as its first value).
type command struct {
	ID      string `json:"id"`
	Type    string `json:"type"`
	Service string `json:"service"`
}

// mqttConn is the device's current MQTT connection; a reboot replaces it.
type mqttConn struct {
	cm   *autopaho.ConnectionManager
	stop context.CancelFunc
}

// commandArrived hands a commands message to the loop, on paho's goroutine.
// A message the device cannot read, or one beyond the queue, is dropped:
// Flock sends open commands again on the next connect.
func (d *device) commandArrived(payload []byte) {
	var c command
	if err := json.Unmarshal(payload, &c); err != nil || c.ID == "" {
		d.s.warn("bad-command", "ignoring a command without an id", "device", d.id.String(), "payload", string(payload))
		return
	}
	select {
	case d.commands <- c:
	default:
		d.s.warn("command-queue", "command queue full; dropping a command", "device", d.id.String(), "command", c.ID)
	}
}

// command carries out c, answering received first and then its outcome. A
// command seen before is not carried out again: its outcome is sent again
// (or nothing, while a reboot is under way), which Flock ignores, as it
// ignores answers that do not move a command forward.
func (d *device) command(ctx context.Context, conn *mqttConn, c command) {
	if res, ok := d.answered[c.ID]; ok {
		d.publish(ctx, conn.cm, devicetopic.CommandResults, res)
		return
	}
	if c.ID == d.rebooting {
		return
	}
	d.publish(ctx, conn.cm, devicetopic.CommandResults, d.payloads.CommandResult(c.ID, resultReceived, ""))
	switch c.Type {
	case "identify":
		d.log.Info("identify: blinking the LED")
		d.finish(ctx, conn, c.ID, "")
	case "restart_service":
		d.finish(ctx, conn, c.ID, d.restartService(ctx, conn, c.Service))
	case "reboot":
		// Answered once the device is back (see rebooted).
		d.rebooting = c.ID
		d.reboot(ctx, conn)
	default:
		d.finish(ctx, conn, c.ID, fmt.Sprintf("this agent does not know the command type %q", c.Type))
	}
}

// finish answers succeeded, or failed with reason when it is not empty, and
// remembers the answer for a repeat of the command.
func (d *device) finish(ctx context.Context, conn *mqttConn, id, reason string) {
	status := resultSucceeded
	if reason != "" {
		status = resultFailed
		d.s.stats.commandsFailed.Add(1)
	} else {
		d.s.stats.commandsSucceeded.Add(1)
	}
	res := d.payloads.CommandResult(id, status, reason)
	d.answered[id] = res
	d.publish(ctx, conn.cm, devicetopic.CommandResults, res)
}

// restartService stops the service and starts it again, reporting the state
// at each step, and comes back in the status it had (a failing service
// fails again). It returns why it could not, or "".
func (d *device) restartService(ctx context.Context, conn *mqttConn, name string) string {
	if d.update != nil {
		return "an update is in progress"
	}
	v := d.payloads.view()
	i := v.find(name)
	if i < 0 {
		return fmt.Sprintf("no service named %q runs on this device", name)
	}
	was := statusOf(v.services[i])
	v.set(i, events.ServiceStateStopped, 0)
	d.payloads.SetServices(v.release, v.services)
	d.publish(ctx, conn.cm, devicetopic.State, d.payloads.State())
	v.set(i, was, 0)
	d.payloads.SetServices(v.release, v.services)
	d.publish(ctx, conn.cm, devicetopic.State, d.payloads.State())
	d.log.Info("restarted a service", "service", name)
	return ""
}

// reboot ends the connection as a powered-off device would (the broker
// publishes its will) and connects again, with a new connection_seq, as the
// device would once booted.
func (d *device) reboot(ctx context.Context, conn *mqttConn) {
	d.log.Info("rebooting")
	d.stop(conn.cm, conn.stop)
	mqttCtx, stopMQTT := context.WithCancel(context.WithoutCancel(ctx))
	cm, err := autopaho.NewConnection(mqttCtx, d.mqttConfig(ctx, mqttCtx))
	if err != nil {
		// Only a bad configuration, which the first connection would have
		// met already.
		stopMQTT()
		d.s.fail(fmt.Errorf("simulate: MQTT connection of %s after reboot: %w", d.name, err))
		return
	}
	conn.cm, conn.stop = cm, stopMQTT
}

// rebooted answers the reboot under way, now that the device is back.
func (d *device) rebooted(ctx context.Context, conn *mqttConn) {
	if d.rebooting == "" {
		return
	}
	id := d.rebooting
	d.rebooting = ""
	d.finish(ctx, conn, id, "")
}

// CommandResult is the device's answer about command id.
func (p *Payloads) CommandResult(id, status, reason string) []byte {
	st := events.ValuesToCommandResultStatus[status]
	return mustJSON(events.CommandResult{Id: id, Status: &st, Error: reason, Ts: p.ts()})
}
