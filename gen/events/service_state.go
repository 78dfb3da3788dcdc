package events

import (
	"encoding/json"
)

type ServiceState uint

const (
	ServiceStateDownloading ServiceState = iota
	ServiceStateInstalling
	ServiceStateRunning
	ServiceStateStopped
	ServiceStateExited
	ServiceStateFailed
)

// Value returns the value of the enum.
func (op ServiceState) Value() any {
	if op >= ServiceState(len(ServiceStateValues)) {
		return nil
	}
	return ServiceStateValues[op]
}

var ServiceStateValues = []any{"downloading", "installing", "running", "stopped", "exited", "failed"}
var ValuesToServiceState = map[any]ServiceState{
	ServiceStateValues[ServiceStateDownloading]: ServiceStateDownloading,
	ServiceStateValues[ServiceStateInstalling]:  ServiceStateInstalling,
	ServiceStateValues[ServiceStateRunning]:     ServiceStateRunning,
	ServiceStateValues[ServiceStateStopped]:     ServiceStateStopped,
	ServiceStateValues[ServiceStateExited]:      ServiceStateExited,
	ServiceStateValues[ServiceStateFailed]:      ServiceStateFailed,
}

func (op *ServiceState) UnmarshalJSON(raw []byte) error {
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return err
	}
	*op = ValuesToServiceState[v]
	return nil
}

func (op ServiceState) MarshalJSON() ([]byte, error) {
	return json.Marshal(op.Value())
}
