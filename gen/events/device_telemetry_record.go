package events

type DeviceTelemetryRecord struct {
	DeviceId   string            `json:"device_id" binding:"required"`
	OrgId      string            `json:"org_id" binding:"required"`
	FleetId    string            `json:"fleet_id" binding:"required"`
	ReceivedAt string            `json:"received_at" binding:"required"`
	Samples    []TelemetrySample `json:"samples" binding:"required"`
}
