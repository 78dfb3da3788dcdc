package events

type AuditRecordedData struct {
	Id                   string                 `json:"id" binding:"required"`
	Operation            string                 `json:"operation" binding:"required"`
	ActorType            string                 `json:"actor_type" binding:"required"`
	ActorLabel           string                 `json:"actor_label" binding:"required"`
	TargetId             string                 `json:"target_id,omitempty"`
	Outcome              string                 `json:"outcome" binding:"required"`
	Status               int                    `json:"status" binding:"required"`
	RequestId            string                 `json:"request_id,omitempty"`
	Time                 string                 `json:"time" binding:"required"`
	AdditionalProperties map[string]interface{} `json:"-,omitempty"`
}
