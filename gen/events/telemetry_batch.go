package events

type TelemetryBatch struct {
	Samples []TelemetrySample `json:"samples" binding:"required"`
}
