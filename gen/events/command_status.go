package events

import (
	"encoding/json"
)

type CommandStatus uint

const (
	CommandStatusPending CommandStatus = iota
	CommandStatusDelivered
	CommandStatusSucceeded
	CommandStatusFailed
	CommandStatusExpired
)

// Value returns the value of the enum.
func (op CommandStatus) Value() any {
	if op >= CommandStatus(len(CommandStatusValues)) {
		return nil
	}
	return CommandStatusValues[op]
}

var CommandStatusValues = []any{"pending", "delivered", "succeeded", "failed", "expired"}
var ValuesToCommandStatus = map[any]CommandStatus{
	CommandStatusValues[CommandStatusPending]:   CommandStatusPending,
	CommandStatusValues[CommandStatusDelivered]: CommandStatusDelivered,
	CommandStatusValues[CommandStatusSucceeded]: CommandStatusSucceeded,
	CommandStatusValues[CommandStatusFailed]:    CommandStatusFailed,
	CommandStatusValues[CommandStatusExpired]:   CommandStatusExpired,
}

func (op *CommandStatus) UnmarshalJSON(raw []byte) error {
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return err
	}
	*op = ValuesToCommandStatus[v]
	return nil
}

func (op CommandStatus) MarshalJSON() ([]byte, error) {
	return json.Marshal(op.Value())
}
