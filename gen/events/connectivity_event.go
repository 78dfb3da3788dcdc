package events

import (
	"encoding/json"
)

type ConnectivityEvent uint

const (
	ConnectivityEventConnected ConnectivityEvent = iota
	ConnectivityEventDisconnected
)

// Value returns the value of the enum.
func (op ConnectivityEvent) Value() any {
	if op >= ConnectivityEvent(len(ConnectivityEventValues)) {
		return nil
	}
	return ConnectivityEventValues[op]
}

var ConnectivityEventValues = []any{"connected", "disconnected"}
var ValuesToConnectivityEvent = map[any]ConnectivityEvent{
	ConnectivityEventValues[ConnectivityEventConnected]:    ConnectivityEventConnected,
	ConnectivityEventValues[ConnectivityEventDisconnected]: ConnectivityEventDisconnected,
}

func (op *ConnectivityEvent) UnmarshalJSON(raw []byte) error {
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return err
	}
	*op = ValuesToConnectivityEvent[v]
	return nil
}

func (op ConnectivityEvent) MarshalJSON() ([]byte, error) {
	return json.Marshal(op.Value())
}
