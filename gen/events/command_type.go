package events

import (
	"encoding/json"
)

type CommandType uint

const (
	CommandTypeReboot CommandType = iota
	CommandTypeRestartService
	CommandTypeIdentify
)

// Value returns the value of the enum.
func (op CommandType) Value() any {
	if op >= CommandType(len(CommandTypeValues)) {
		return nil
	}
	return CommandTypeValues[op]
}

var CommandTypeValues = []any{"reboot", "restart_service", "identify"}
var ValuesToCommandType = map[any]CommandType{
	CommandTypeValues[CommandTypeReboot]:         CommandTypeReboot,
	CommandTypeValues[CommandTypeRestartService]: CommandTypeRestartService,
	CommandTypeValues[CommandTypeIdentify]:       CommandTypeIdentify,
}

func (op *CommandType) UnmarshalJSON(raw []byte) error {
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return err
	}
	*op = ValuesToCommandType[v]
	return nil
}

func (op CommandType) MarshalJSON() ([]byte, error) {
	return json.Marshal(op.Value())
}
