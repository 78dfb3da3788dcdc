package events

import (
	"encoding/json"
)

type ConnectionState uint

const (
	ConnectionStateOnline ConnectionState = iota
	ConnectionStateOffline
)

// Value returns the value of the enum.
func (op ConnectionState) Value() any {
	if op >= ConnectionState(len(ConnectionStateValues)) {
		return nil
	}
	return ConnectionStateValues[op]
}

var ConnectionStateValues = []any{"online", "offline"}
var ValuesToConnectionState = map[any]ConnectionState{
	ConnectionStateValues[ConnectionStateOnline]:  ConnectionStateOnline,
	ConnectionStateValues[ConnectionStateOffline]: ConnectionStateOffline,
}

func (op *ConnectionState) UnmarshalJSON(raw []byte) error {
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return err
	}
	*op = ValuesToConnectionState[v]
	return nil
}

func (op ConnectionState) MarshalJSON() ([]byte, error) {
	return json.Marshal(op.Value())
}
