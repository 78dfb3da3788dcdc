package events

type ReleaseChangedData struct {
	ReleaseId            string                 `json:"release_id" binding:"required"`
	FleetId              string                 `json:"fleet_id" binding:"required"`
	Version              string                 `json:"version" binding:"required"`
	Status               string                 `json:"status" binding:"required"`
	BuildId              string                 `json:"build_id,omitempty"`
	AdditionalProperties map[string]interface{} `json:"-,omitempty"`
}
