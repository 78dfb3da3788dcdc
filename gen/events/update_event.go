package events

type UpdateEvent struct {
	Id           string           `json:"id" binding:"required"`
	Ts           string           `json:"ts" binding:"required"`
	ReservedType *UpdateEventType `json:"type" binding:"required"`
	ReleaseId    string           `json:"release_id,omitempty"`
	Service      string           `json:"service,omitempty"`
	Progress     int              `json:"progress,omitempty"`
	Error        string           `json:"error,omitempty"`
}
