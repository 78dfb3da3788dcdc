package events

type ConnectivityRecord struct {
	DeviceId      string             `json:"device_id" binding:"required"`
	Event         *ConnectivityEvent `json:"event" binding:"required"`
	ConnectionSeq int                `json:"connection_seq" binding:"required"`
	At            string             `json:"at" binding:"required"`
}
