package events

type DeviceConnectivityData struct {
	DeviceId             string                 `json:"device_id" binding:"required"`
	FleetId              string                 `json:"fleet_id" binding:"required"`
	ConnectionSeq        int                    `json:"connection_seq" binding:"required"`
	At                   string                 `json:"at" binding:"required"`
	AdditionalProperties map[string]interface{} `json:"-,omitempty"`
}
