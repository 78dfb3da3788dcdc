package events

type LogBatch struct {
	Entries []LogEntry `json:"entries" binding:"required"`
}
