package events

import (
	"encoding/json"
)

type AnonymousSchema_71 uint

const (
	AnonymousSchema_71Ready AnonymousSchema_71 = iota
	AnonymousSchema_71Running
	AnonymousSchema_71Paused
	AnonymousSchema_71WaitingForApproval
	AnonymousSchema_71Finished
	AnonymousSchema_71Aborted
	AnonymousSchema_71RolledBack
	AnonymousSchema_71Canceled
)

// Value returns the value of the enum.
func (op AnonymousSchema_71) Value() any {
	if op >= AnonymousSchema_71(len(AnonymousSchema_71Values)) {
		return nil
	}
	return AnonymousSchema_71Values[op]
}

var AnonymousSchema_71Values = []any{"ready", "running", "paused", "waiting_for_approval", "finished", "aborted", "rolled_back", "canceled"}
var ValuesToAnonymousSchema_71 = map[any]AnonymousSchema_71{
	AnonymousSchema_71Values[AnonymousSchema_71Ready]:              AnonymousSchema_71Ready,
	AnonymousSchema_71Values[AnonymousSchema_71Running]:            AnonymousSchema_71Running,
	AnonymousSchema_71Values[AnonymousSchema_71Paused]:             AnonymousSchema_71Paused,
	AnonymousSchema_71Values[AnonymousSchema_71WaitingForApproval]: AnonymousSchema_71WaitingForApproval,
	AnonymousSchema_71Values[AnonymousSchema_71Finished]:           AnonymousSchema_71Finished,
	AnonymousSchema_71Values[AnonymousSchema_71Aborted]:            AnonymousSchema_71Aborted,
	AnonymousSchema_71Values[AnonymousSchema_71RolledBack]:         AnonymousSchema_71RolledBack,
	AnonymousSchema_71Values[AnonymousSchema_71Canceled]:           AnonymousSchema_71Canceled,
}

func (op *AnonymousSchema_71) UnmarshalJSON(raw []byte) error {
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return err
	}
	*op = ValuesToAnonymousSchema_71[v]
	return nil
}

func (op AnonymousSchema_71) MarshalJSON() ([]byte, error) {
	return json.Marshal(op.Value())
}
