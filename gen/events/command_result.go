package events

type CommandResult struct {
	Id     string               `json:"id" binding:"required"`
	Status *CommandResultStatus `json:"status" binding:"required"`
	Error  string               `json:"error,omitempty"`
	Ts     string               `json:"ts" binding:"required"`
}
