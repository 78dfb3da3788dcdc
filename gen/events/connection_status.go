package events

type ConnectionStatus struct {
	State *ConnectionState `json:"state" binding:"required"`
}
