package events

import (
	"encoding/json"
)

type UpdateEventType uint

const (
	UpdateEventTypeDownloadStarted UpdateEventType = iota
	UpdateEventTypeDownloadProgress
	UpdateEventTypeDownloadFinished
	UpdateEventTypeInstallStarted
	UpdateEventTypeInstalled
	UpdateEventTypeFailed
	UpdateEventTypeRolledBack
)

// Value returns the value of the enum.
func (op UpdateEventType) Value() any {
	if op >= UpdateEventType(len(UpdateEventTypeValues)) {
		return nil
	}
	return UpdateEventTypeValues[op]
}

var UpdateEventTypeValues = []any{"download_started", "download_progress", "download_finished", "install_started", "installed", "failed", "rolled_back"}
var ValuesToUpdateEventType = map[any]UpdateEventType{
	UpdateEventTypeValues[UpdateEventTypeDownloadStarted]:  UpdateEventTypeDownloadStarted,
	UpdateEventTypeValues[UpdateEventTypeDownloadProgress]: UpdateEventTypeDownloadProgress,
	UpdateEventTypeValues[UpdateEventTypeDownloadFinished]: UpdateEventTypeDownloadFinished,
	UpdateEventTypeValues[UpdateEventTypeInstallStarted]:   UpdateEventTypeInstallStarted,
	UpdateEventTypeValues[UpdateEventTypeInstalled]:        UpdateEventTypeInstalled,
	UpdateEventTypeValues[UpdateEventTypeFailed]:           UpdateEventTypeFailed,
	UpdateEventTypeValues[UpdateEventTypeRolledBack]:       UpdateEventTypeRolledBack,
}

func (op *UpdateEventType) UnmarshalJSON(raw []byte) error {
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return err
	}
	*op = ValuesToUpdateEventType[v]
	return nil
}

func (op UpdateEventType) MarshalJSON() ([]byte, error) {
	return json.Marshal(op.Value())
}
