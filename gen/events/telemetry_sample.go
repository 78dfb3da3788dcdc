package events

type TelemetrySample struct {
	Ts     string            `json:"ts" binding:"required"`
	Name   string            `json:"name" binding:"required"`
	Value  float64           `json:"value" binding:"required"`
	Unit   string            `json:"unit,omitempty"`
	Labels map[string]string `json:"labels,omitempty"`
}
