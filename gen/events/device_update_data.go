package events

type DeviceUpdateData struct {
	DeviceId             string                 `json:"device_id" binding:"required"`
	FleetId              string                 `json:"fleet_id" binding:"required"`
	ReceivedAt           string                 `json:"received_at" binding:"required"`
	Event                *UpdateEvent           `json:"event" binding:"required"`
	AdditionalProperties map[string]interface{} `json:"-,omitempty"`
}
