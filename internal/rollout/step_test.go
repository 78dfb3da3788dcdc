package rollout

import (
	"testing"
	"time"
)

// A disconnect from before the device started settling is about an
// earlier connection and changes nothing; one after it fails the device.
func TestDisconnectedAt(t *testing.T) {
	settling := Device{State: DeviceRunning, HealthySince: t0, Deadline: t0.Add(time.Hour)}
	if d, changed := DisconnectedAt(settling, t0.Add(-time.Second)); changed || d.State != DeviceRunning {
		t.Errorf("a disconnect before settling began: %s (changed %v), want running unchanged", d.State, changed)
	}
	if d, changed := DisconnectedAt(settling, t0.Add(time.Second)); !changed || d.State != DeviceFailed {
		t.Errorf("a disconnect while settling: %s (changed %v), want failed", d.State, changed)
	}
	if d, changed := DisconnectedAt(settling, time.Time{}); !changed || d.State != DeviceFailed {
		t.Errorf("a disconnect of unknown time: %s (changed %v), want failed", d.State, changed)
	}
	if _, changed := DisconnectedAt(Device{State: DeviceInstalling}, t0); changed {
		t.Errorf("a disconnect while installing changed the device")
	}
}

func TestDecide(t *testing.T) {
	now := t0
	soak := GroupSpec{SoakSeconds: 60}
	approval := GroupSpec{RequiresApproval: true}
	tripped := Verdict{Tripped: true, Action: ThresholdPause}
	succeeded := Verdict{Succeeded: true}
	done := Verdict{Succeeded: true, Complete: true}
	stuck := Verdict{Complete: true, Stuck: true}
	tests := []struct {
		name string
		p    Progress
		want Decision
	}{
		{"tripped while running", Progress{State: Running, GroupState: GroupRunning, Verdict: tripped}, Decision{Trip: true}},
		{"tripped while soaking", Progress{State: Running, GroupState: GroupSucceeded, Verdict: tripped}, Decision{Trip: true}},
		{"tripped while waiting for approval", Progress{State: WaitingForApproval, GroupState: GroupSucceeded, Verdict: tripped}, Decision{Trip: true}},
		{"tripped while paused: devices only finish", Progress{State: Paused, GroupState: GroupRunning, Verdict: tripped}, Decision{}},
		{"tripped again after a resume: acknowledged", Progress{State: Running, GroupState: GroupRunning, ThresholdAcknowledged: true, Verdict: tripped}, Decision{}},
		{"tripped again in a failed group", Progress{State: Running, GroupState: GroupFailed, Verdict: tripped}, Decision{}},
		{"nothing yet", Progress{State: Running, GroupState: GroupRunning}, Decision{}},
		{"stuck", Progress{State: Running, GroupState: GroupRunning, Verdict: stuck}, Decision{Stuck: true}},
		{"stuck, resumed: goes on", Progress{State: Running, GroupState: GroupComplete, Verdict: stuck},
			Decision{ReadyAt: now, Then: ThenNextGroup}},
		{"failed, acknowledged, complete: goes on", Progress{State: Running, GroupState: GroupRunning, ThresholdAcknowledged: true, Verdict: Verdict{Complete: true, Stuck: true}},
			Decision{ReadyAt: now, Then: ThenNextGroup}},
		{"failed, acknowledged, devices still updating: waits", Progress{State: Running, GroupState: GroupFailed, ThresholdAcknowledged: true}, Decision{}},
		{"succeeded: next group at once", Progress{State: Running, GroupState: GroupRunning, Verdict: succeeded},
			Decision{Succeeded: true, ReadyAt: now, Then: ThenNextGroup}},
		{"succeeded with a soak: waits", Progress{State: Running, GroupState: GroupRunning, Group: soak, Verdict: succeeded},
			Decision{Succeeded: true, ReadyAt: now.Add(time.Minute)}},
		{"soaking", Progress{State: Running, GroupState: GroupSucceeded, Group: soak, ReadyAt: now.Add(time.Second)}, Decision{}},
		{"soaked", Progress{State: Running, GroupState: GroupSucceeded, Group: soak, ReadyAt: now}, Decision{Then: ThenNextGroup}},
		{"succeeded, approval", Progress{State: Running, GroupState: GroupRunning, Group: approval, Verdict: succeeded},
			Decision{Succeeded: true, ReadyAt: now, Then: ThenApproval}},
		{"waiting for approval: nothing", Progress{State: WaitingForApproval, GroupState: GroupSucceeded, Group: approval, ReadyAt: now}, Decision{}},
		{"last group succeeded, devices still updating", Progress{State: Running, GroupState: GroupRunning, Last: true, Verdict: succeeded},
			Decision{Succeeded: true, ReadyAt: now}},
		{"last group done", Progress{State: Running, GroupState: GroupSucceeded, Last: true, Verdict: done, ReadyAt: now}, Decision{Then: ThenFinish}},
		{"ended rollout", Progress{State: Finished, GroupState: GroupSucceeded, Verdict: done}, Decision{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Decide(tt.p, now); got != tt.want {
				t.Errorf("Decide = %+v, want %+v", got, tt.want)
			}
		})
	}
}
