package events

import (
	"encoding/json"
)

type AnonymousSchema_67 uint

const (
	AnonymousSchema_67Ready AnonymousSchema_67 = iota
	AnonymousSchema_67Running
	AnonymousSchema_67Paused
	AnonymousSchema_67WaitingForApproval
	AnonymousSchema_67Finished
	AnonymousSchema_67Aborted
	AnonymousSchema_67RolledBack
	AnonymousSchema_67Canceled
)

// Value returns the value of the enum.
func (op AnonymousSchema_67) Value() any {
	if op >= AnonymousSchema_67(len(AnonymousSchema_67Values)) {
		return nil
	}
	return AnonymousSchema_67Values[op]
}

var AnonymousSchema_67Values = []any{"ready", "running", "paused", "waiting_for_approval", "finished", "aborted", "rolled_back", "canceled"}
var ValuesToAnonymousSchema_67 = map[any]AnonymousSchema_67{
	AnonymousSchema_67Values[AnonymousSchema_67Ready]:              AnonymousSchema_67Ready,
	AnonymousSchema_67Values[AnonymousSchema_67Running]:            AnonymousSchema_67Running,
	AnonymousSchema_67Values[AnonymousSchema_67Paused]:             AnonymousSchema_67Paused,
	AnonymousSchema_67Values[AnonymousSchema_67WaitingForApproval]: AnonymousSchema_67WaitingForApproval,
	AnonymousSchema_67Values[AnonymousSchema_67Finished]:           AnonymousSchema_67Finished,
	AnonymousSchema_67Values[AnonymousSchema_67Aborted]:            AnonymousSchema_67Aborted,
	AnonymousSchema_67Values[AnonymousSchema_67RolledBack]:         AnonymousSchema_67RolledBack,
	AnonymousSchema_67Values[AnonymousSchema_67Canceled]:           AnonymousSchema_67Canceled,
}

func (op *AnonymousSchema_67) UnmarshalJSON(raw []byte) error {
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return err
	}
	*op = ValuesToAnonymousSchema_67[v]
	return nil
}

func (op AnonymousSchema_67) MarshalJSON() ([]byte, error) {
	return json.Marshal(op.Value())
}
