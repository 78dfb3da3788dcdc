package events

type DeviceCommandRecord struct {
	DeviceId string       `json:"device_id" binding:"required"`
	Kind     *CommandKind `json:"kind" binding:"required"`
	Target   *TargetNudge `json:"target,omitempty"`
	Command  *Command     `json:"command,omitempty"`
}
