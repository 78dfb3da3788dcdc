package events

type EventEndpointTestData struct {
	EndpointId           string                 `json:"endpoint_id" binding:"required"`
	Message              string                 `json:"message" binding:"required"`
	AdditionalProperties map[string]interface{} `json:"-,omitempty"`
}
