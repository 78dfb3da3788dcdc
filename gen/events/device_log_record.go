package events

type DeviceLogRecord struct {
	DeviceId   string     `json:"device_id" binding:"required"`
	OrgId      string     `json:"org_id" binding:"required"`
	FleetId    string     `json:"fleet_id" binding:"required"`
	ReceivedAt string     `json:"received_at" binding:"required"`
	Entries    []LogEntry `json:"entries" binding:"required"`
}
