package events

import (
	"encoding/json"
)

type RolloutEventType uint

const (
	RolloutEventTypeCreated RolloutEventType = iota
	RolloutEventTypeStarted
	RolloutEventTypePaused
	RolloutEventTypeResumed
	RolloutEventTypeCanceled
	RolloutEventTypeAborted
	RolloutEventTypeRolledBack
	RolloutEventTypeFinished
	RolloutEventTypeWaitingForApproval
	RolloutEventTypeGroupStarted
	RolloutEventTypeGroupSucceeded
	RolloutEventTypeGroupCompleted
	RolloutEventTypeThresholdTripped
)

// Value returns the value of the enum.
func (op RolloutEventType) Value() any {
	if op >= RolloutEventType(len(RolloutEventTypeValues)) {
		return nil
	}
	return RolloutEventTypeValues[op]
}

var RolloutEventTypeValues = []any{"created", "started", "paused", "resumed", "canceled", "aborted", "rolled_back", "finished", "waiting_for_approval", "group_started", "group_succeeded", "group_completed", "threshold_tripped"}
var ValuesToRolloutEventType = map[any]RolloutEventType{
	RolloutEventTypeValues[RolloutEventTypeCreated]:            RolloutEventTypeCreated,
	RolloutEventTypeValues[RolloutEventTypeStarted]:            RolloutEventTypeStarted,
	RolloutEventTypeValues[RolloutEventTypePaused]:             RolloutEventTypePaused,
	RolloutEventTypeValues[RolloutEventTypeResumed]:            RolloutEventTypeResumed,
	RolloutEventTypeValues[RolloutEventTypeCanceled]:           RolloutEventTypeCanceled,
	RolloutEventTypeValues[RolloutEventTypeAborted]:            RolloutEventTypeAborted,
	RolloutEventTypeValues[RolloutEventTypeRolledBack]:         RolloutEventTypeRolledBack,
	RolloutEventTypeValues[RolloutEventTypeFinished]:           RolloutEventTypeFinished,
	RolloutEventTypeValues[RolloutEventTypeWaitingForApproval]: RolloutEventTypeWaitingForApproval,
	RolloutEventTypeValues[RolloutEventTypeGroupStarted]:       RolloutEventTypeGroupStarted,
	RolloutEventTypeValues[RolloutEventTypeGroupSucceeded]:     RolloutEventTypeGroupSucceeded,
	RolloutEventTypeValues[RolloutEventTypeGroupCompleted]:     RolloutEventTypeGroupCompleted,
	RolloutEventTypeValues[RolloutEventTypeThresholdTripped]:   RolloutEventTypeThresholdTripped,
}

func (op *RolloutEventType) UnmarshalJSON(raw []byte) error {
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return err
	}
	*op = ValuesToRolloutEventType[v]
	return nil
}

func (op RolloutEventType) MarshalJSON() ([]byte, error) {
	return json.Marshal(op.Value())
}
