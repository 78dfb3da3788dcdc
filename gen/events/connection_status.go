package events

type ConnectionStatus struct {
	State         *ConnectionState `json:"state" binding:"required"`
	ConnectionSeq int              `json:"connection_seq" binding:"required"`
}
