package events

type LogEntry struct {
	Service string     `json:"service" binding:"required"`
	Seq     int        `json:"seq" binding:"required"`
	Ts      string     `json:"ts" binding:"required"`
	Stream  *LogStream `json:"stream" binding:"required"`
	Line    string     `json:"line" binding:"required"`
}
