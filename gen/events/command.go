package events

type Command struct {
	Id           string       `json:"id" binding:"required"`
	ReservedType *CommandType `json:"type" binding:"required"`
	Service      string       `json:"service,omitempty"`
}
