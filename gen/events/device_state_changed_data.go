package events

type DeviceStateChangedData struct {
	DeviceId             string                 `json:"device_id" binding:"required"`
	FleetId              string                 `json:"fleet_id" binding:"required"`
	ReceivedAt           string                 `json:"received_at" binding:"required"`
	State                *ReportedState         `json:"state" binding:"required"`
	AdditionalProperties map[string]interface{} `json:"-,omitempty"`
}
