package events

import (
	"encoding/json"
)

type CommandResultStatus uint

const (
	CommandResultStatusReceived CommandResultStatus = iota
	CommandResultStatusSucceeded
	CommandResultStatusFailed
)

// Value returns the value of the enum.
func (op CommandResultStatus) Value() any {
	if op >= CommandResultStatus(len(CommandResultStatusValues)) {
		return nil
	}
	return CommandResultStatusValues[op]
}

var CommandResultStatusValues = []any{"received", "succeeded", "failed"}
var ValuesToCommandResultStatus = map[any]CommandResultStatus{
	CommandResultStatusValues[CommandResultStatusReceived]:  CommandResultStatusReceived,
	CommandResultStatusValues[CommandResultStatusSucceeded]: CommandResultStatusSucceeded,
	CommandResultStatusValues[CommandResultStatusFailed]:    CommandResultStatusFailed,
}

func (op *CommandResultStatus) UnmarshalJSON(raw []byte) error {
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return err
	}
	*op = ValuesToCommandResultStatus[v]
	return nil
}

func (op CommandResultStatus) MarshalJSON() ([]byte, error) {
	return json.Marshal(op.Value())
}
