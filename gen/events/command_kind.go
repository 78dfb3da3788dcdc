package events

import (
	"encoding/json"
)

type CommandKind uint

const (
	CommandKindTarget CommandKind = iota
	CommandKindCommand
)

// Value returns the value of the enum.
func (op CommandKind) Value() any {
	if op >= CommandKind(len(CommandKindValues)) {
		return nil
	}
	return CommandKindValues[op]
}

var CommandKindValues = []any{"target", "command"}
var ValuesToCommandKind = map[any]CommandKind{
	CommandKindValues[CommandKindTarget]:  CommandKindTarget,
	CommandKindValues[CommandKindCommand]: CommandKindCommand,
}

func (op *CommandKind) UnmarshalJSON(raw []byte) error {
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return err
	}
	*op = ValuesToCommandKind[v]
	return nil
}

func (op CommandKind) MarshalJSON() ([]byte, error) {
	return json.Marshal(op.Value())
}
