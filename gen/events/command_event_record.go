package events

type CommandEventRecord struct {
	Id           string         `json:"id" binding:"required"`
	CommandId    string         `json:"command_id" binding:"required"`
	DeviceId     string         `json:"device_id" binding:"required"`
	OrgId        string         `json:"org_id" binding:"required"`
	FleetId      string         `json:"fleet_id" binding:"required"`
	ReservedType *CommandType   `json:"type" binding:"required"`
	Service      string         `json:"service,omitempty"`
	Status       *CommandStatus `json:"status" binding:"required"`
	Error        string         `json:"error,omitempty"`
	At           string         `json:"at" binding:"required"`
}
