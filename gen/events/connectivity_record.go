package events

type ConnectivityRecord struct {
	DeviceId      string             `json:"device_id" binding:"required"`
	OrgId         string             `json:"org_id" binding:"required"`
	FleetId       string             `json:"fleet_id" binding:"required"`
	Event         *ConnectivityEvent `json:"event" binding:"required"`
	ConnectionSeq int                `json:"connection_seq" binding:"required"`
	At            string             `json:"at" binding:"required"`
}
