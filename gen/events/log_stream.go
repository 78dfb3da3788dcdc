package events

import (
	"encoding/json"
)

type LogStream uint

const (
	LogStreamStdout LogStream = iota
	LogStreamStderr
)

// Value returns the value of the enum.
func (op LogStream) Value() any {
	if op >= LogStream(len(LogStreamValues)) {
		return nil
	}
	return LogStreamValues[op]
}

var LogStreamValues = []any{"stdout", "stderr"}
var ValuesToLogStream = map[any]LogStream{
	LogStreamValues[LogStreamStdout]: LogStreamStdout,
	LogStreamValues[LogStreamStderr]: LogStreamStderr,
}

func (op *LogStream) UnmarshalJSON(raw []byte) error {
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return err
	}
	*op = ValuesToLogStream[v]
	return nil
}

func (op LogStream) MarshalJSON() ([]byte, error) {
	return json.Marshal(op.Value())
}
