package events

type EventEndpointDisabledData struct {
	EndpointId           string                 `json:"endpoint_id" binding:"required"`
	Name                 string                 `json:"name" binding:"required"`
	Reason               string                 `json:"reason" binding:"required"`
	FailingSince         string                 `json:"failing_since,omitempty"`
	AdditionalProperties map[string]interface{} `json:"-,omitempty"`
}
